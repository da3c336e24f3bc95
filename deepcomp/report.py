"""The model-size / rate-distortion report: tables, BD-rates and plots.

Input: the results JSON files written by ``deepcomp evaluate`` (one per
model).  Models are grouped into *families* (the ``family`` recorded at
evaluation, per architecture), one model per quality.  Each family is
compared with the baseline family of the same architecture by Bjøntegaard
deltas:

* BD-rate (%) at equal PSNR and at equal MS-SSIM (in dB,
  ``-10 log10(1 - MS-SSIM)``): the average bitrate difference, negative is
  better;
* BD-PSNR (dB) at equal rate.

Interpolation: ``pchip`` (piecewise cubic Hermite, the method of the
``bjontegaard`` package and of current common test conditions, needs two
points) or ``cubic`` (the original VCEG-M33 cubic polynomial fit, needs four).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .checkpoints import atomic_write_bytes
from .errors import DeepCompError
from .evaluation import RESULTS_FORMAT, read_results

BD_METHODS = ("pchip", "cubic")

#: Columns of the model table (CSV names).
TABLE_FIELDS = (
    "model", "family", "arch", "quality", "file_bytes", "fp32_bytes", "ratio", "params", "density",
    "bpp", "psnr", "ssim", "ms_ssim", "ms_ssim_db", "encode_s", "decode_s", "images",
)

#: Columns of the BD table (CSV names).
BD_FIELDS = ("family", "arch", "anchor", "points", "bd_rate_psnr", "bd_rate_ms_ssim", "bd_psnr")


# ---------------------------------------------------------------- loading
def collect_results(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Results documents from files, or from every results JSON directly in given folders."""
    docs = []
    for p in map(Path, paths):
        if p.is_dir():
            found = []
            for f in sorted(p.glob("*.json")):
                try:
                    found.append(read_results(f))
                except DeepCompError:
                    continue  # other JSON files in the folder
            if not found:
                raise DeepCompError(f"no evaluation results ({RESULTS_FORMAT}) in {p}; run `deepcomp evaluate` first")
            docs.extend(found)
        else:
            docs.append(read_results(p))
    if not docs:
        raise DeepCompError("no results given")
    return docs


def ms_ssim_db(value: float | None) -> float:
    """MS-SSIM on a dB scale: ``-10 log10(1 - MS-SSIM)``."""
    if value is None or not math.isfinite(value):
        return math.nan
    return math.inf if value >= 1 else -10.0 * math.log10(1.0 - value)


def _num(v) -> float:
    return math.nan if v is None else float(v)


def model_rows(docs: Iterable[Mapping]) -> list[dict]:
    """One row (``TABLE_FIELDS``) per results document, sorted by family, arch, quality."""
    rows = []
    for d in docs:
        m, mean = d["model"], d["mean"]
        file_bytes, fp32 = m.get("file_bytes"), m.get("fp32_bytes")
        rows.append({
            "model": m.get("name") or Path(m.get("path", "?")).name,
            "family": m.get("family") or "baseline",
            "arch": m.get("arch"),
            "quality": m.get("quality"),
            "file_bytes": file_bytes,
            "fp32_bytes": fp32,
            "ratio": (fp32 / file_bytes) if file_bytes and fp32 else math.nan,
            "params": m.get("params"),
            "density": _num(m.get("density")),
            "bpp": _num(mean.get("bpp")),
            "psnr": _num(mean.get("psnr")),
            "ssim": _num(mean.get("ssim")),
            "ms_ssim": _num(mean.get("ms_ssim")),
            "ms_ssim_db": ms_ssim_db(mean.get("ms_ssim")),
            "encode_s": _num(mean.get("encode_s")),
            "decode_s": _num(mean.get("decode_s")),
            "images": mean.get("images"),
            "data": d.get("data"),
        })
    rows.sort(key=lambda r: (r["family"] != "baseline", r["family"], str(r["arch"]), r["quality"] if r["quality"] is not None else -1, r["model"]))
    return rows


# ---------------------------------------------------------------- Bjøntegaard
def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        return float(PchipInterpolator(x, y).integrate(lo, hi))
    if method == "cubic":
        if len(x) < 4:
            raise ValueError("cubic Bjøntegaard interpolation needs at least 4 points")
        p = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(p, hi) - np.polyval(p, lo))
    raise ValueError(f"unknown interpolation method {method!r}; choose one of {', '.join(BD_METHODS)}")


def bd_average(x_anchor, y_anchor, x_test, y_test, method: str = "pchip") -> float:
    """Mean of ``y_test - y_anchor`` over the overlap of the two ``x`` ranges.

    Each curve ``y(x)`` is interpolated through its points (sorted by ``x``,
    which must be distinct, at least two points).  NaN where the ranges do
    not overlap.
    """
    curves = []
    for x, y in ((x_anchor, y_anchor), (x_test, y_test)):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError("each curve needs as many x as y values")
        if len(x) < 2:
            raise ValueError("each curve needs at least 2 points")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("non-finite rate or distortion values")
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        if np.any(np.diff(x) <= 0):
            raise ValueError("two points of a curve have the same value on the integration axis")
        curves.append((x, y))
    (xa, ya), (xt, yt) = curves
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if not hi > lo:
        return math.nan
    return (_integral(xt, yt, lo, hi, method) - _integral(xa, ya, lo, hi, method)) / (hi - lo)


def bd_rate(rate_anchor, dist_anchor, rate_test, dist_test, method: str = "pchip") -> float:
    """Bjøntegaard-delta rate in percent (negative: the test needs fewer bits for the same quality)."""
    la = np.log10(np.asarray(rate_anchor, dtype=float))
    lt = np.log10(np.asarray(rate_test, dtype=float))
    avg = bd_average(dist_anchor, la, dist_test, lt, method)
    return (10.0**avg - 1.0) * 100.0 if math.isfinite(avg) else math.nan


def bd_psnr(rate_anchor, dist_anchor, rate_test, dist_test, method: str = "pchip") -> float:
    """Bjøntegaard-delta quality (e.g. dB of PSNR) at the same rate (positive: the test is better)."""
    la = np.log10(np.asarray(rate_anchor, dtype=float))
    lt = np.log10(np.asarray(rate_test, dtype=float))
    return bd_average(la, dist_anchor, lt, dist_test, method)


def families(rows: Sequence[Mapping]) -> dict[tuple[str, str], list[Mapping]]:
    """Rows grouped by (family, arch), each sorted by quality; one model per quality."""
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for r in rows:
        groups.setdefault((r["family"], str(r["arch"])), []).append(r)
    for (fam, arch), members in groups.items():
        members.sort(key=lambda r: (r["quality"] if r["quality"] is not None else -1))
        seen: dict = {}
        for r in members:
            if r["quality"] in seen:
                raise DeepCompError(
                    f"family {fam!r} ({arch}) has two models of quality {r['quality']}: {seen[r['quality']]} and {r['model']}; "
                    "evaluate one of them with another --family"
                )
            seen[r["quality"]] = r["model"]
    return groups


def _safe_bd(fn, anchor: Sequence[Mapping], test: Sequence[Mapping], key: str, method: str) -> float:
    pa = [(r["bpp"], r[key]) for r in anchor if math.isfinite(r["bpp"]) and math.isfinite(r[key])]
    pt = [(r["bpp"], r[key]) for r in test if math.isfinite(r["bpp"]) and math.isfinite(r[key])]
    try:
        return fn([p[0] for p in pa], [p[1] for p in pa], [p[0] for p in pt], [p[1] for p in pt], method)
    except ValueError:
        return math.nan


def bd_rows(rows: Sequence[Mapping], baseline: str = "baseline", method: str = "pchip") -> list[dict]:
    """BD-rate (PSNR, MS-SSIM dB) and BD-PSNR of every non-baseline family against the baseline of its arch.

    NaN where there is no baseline for the arch, where a family has too few
    qualities for the method, or where the curves do not overlap.
    """
    if method not in BD_METHODS:
        raise DeepCompError(f"unknown BD interpolation {method!r}; choose one of {', '.join(BD_METHODS)}")
    groups = families(rows)
    out = []
    for (fam, arch), members in groups.items():
        if fam == baseline:
            continue
        anchor = groups.get((baseline, arch))
        row = {"family": fam, "arch": arch, "anchor": baseline if anchor else "", "points": len(members)}
        if anchor:
            row["bd_rate_psnr"] = _safe_bd(bd_rate, anchor, members, "psnr", method)
            row["bd_rate_ms_ssim"] = _safe_bd(bd_rate, anchor, members, "ms_ssim_db", method)
            row["bd_psnr"] = _safe_bd(bd_psnr, anchor, members, "psnr", method)
        else:
            row.update(bd_rate_psnr=math.nan, bd_rate_ms_ssim=math.nan, bd_psnr=math.nan)
        out.append(row)
    return out


# ---------------------------------------------------------------- tables
def human_bytes(n) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _f(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, fmt)


def markdown_table(rows: Sequence[Mapping]) -> str:
    """The model table in GitHub markdown."""
    head = ["Model", "Family", "Arch", "Q", "File size", "Ratio vs fp32", "Params", "Density", "bpp", "PSNR (dB)",
            "SSIM", "MS-SSIM", "MS-SSIM (dB)", "Encode (s)", "Decode (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in rows:
        cells = [
            str(r["model"]), str(r["family"]), str(r["arch"]), str(r["quality"]), human_bytes(r["file_bytes"]),
            _f(r["ratio"], ".2f") + ("x" if math.isfinite(r["ratio"]) else ""), f"{r['params']:,}" if r["params"] is not None else "?",
            _f(r["density"], ".4f"), _f(r["bpp"], ".4f"), _f(r["psnr"], ".2f"), _f(r["ssim"], ".4f"), _f(r["ms_ssim"], ".4f"),
            _f(r["ms_ssim_db"], ".2f"), _f(r["encode_s"], ".3f"), _f(r["decode_s"], ".3f"),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_bd_table(bd: Sequence[Mapping], method: str) -> str:
    head = ["Family", "Arch", "Anchor", "Qualities", "BD-rate PSNR (%)", "BD-rate MS-SSIM (%)", "BD-PSNR (dB)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * 4]
    for r in bd:
        lines.append("| " + " | ".join([
            str(r["family"]), str(r["arch"]), r["anchor"] or "none", str(r["points"]),
            _f(r["bd_rate_psnr"], "+.2f"), _f(r["bd_rate_ms_ssim"], "+.2f"), _f(r["bd_psnr"], "+.3f"),
        ]) + " |")
    lines.append("")
    lines.append(f"Bjøntegaard deltas ({method} interpolation) against the anchor family of the same architecture; "
                 "negative BD-rate = fewer bits at equal quality. MS-SSIM in dB, -10 log10(1 - MS-SSIM). "
                 "n/a: no anchor, too few qualities, or no overlap.")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping], fields: Sequence[str]) -> str:
    """CSV of ``rows`` (dicts) in the column order ``fields``; None and NaN are empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in rows:
        w.writerow(["" if r.get(k) is None or (isinstance(r.get(k), float) and math.isnan(r[k])) else
                    (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in fields])
    return buf.getvalue()


def table_csv(rows: Sequence[Mapping]) -> str:
    """The model table as CSV (raw numbers)."""
    return csv_text(rows, TABLE_FIELDS)


def bd_csv(bd: Sequence[Mapping]) -> str:
    return csv_text(bd, BD_FIELDS)


# ---------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(fam: str, arch: str, archs: set) -> str:
    return fam if len(archs) < 2 else f"{fam} ({arch})"


def _family_colors(groups, baseline: str, plt) -> dict:
    """One colour per (family, arch), the same in every plot; the baseline in black."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    keys = sorted(groups, key=lambda k: (k[0] != baseline, k))
    others = [k for k in keys if k[0] != baseline]
    colors = {k: cycle[i % len(cycle)] for i, k in enumerate(others)}
    colors.update({k: "black" for k in keys if k[0] == baseline})
    return colors


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_rd(rows: Sequence[Mapping], path: str | os.PathLike, metric: str = "psnr", baseline: str = "baseline") -> Path:
    """Rate-distortion curves (``metric`` vs bpp), one line per family."""
    plt = _pyplot()
    ylabel = {"psnr": "PSNR (dB)", "ms_ssim_db": "MS-SSIM (dB)", "ms_ssim": "MS-SSIM", "ssim": "SSIM"}[metric]
    groups = families(rows)
    archs = {a for _, a in groups}
    colors = _family_colors(groups, baseline, plt)
    fig, ax = plt.subplots(figsize=(7, 5))
    for (fam, arch), members in sorted(groups.items(), key=lambda kv: (kv[0][0] != baseline, kv[0])):
        pts = sorted((r["bpp"], r[metric], r["quality"]) for r in members if math.isfinite(r["bpp"]) and math.isfinite(r[metric]))
        if not pts:
            continue
        style = dict(linestyle="--", marker="s") if fam == baseline else dict(marker="o")
        style["color"] = colors[(fam, arch)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=_label(fam, arch, archs), **style)
    ax.set_xlabel("bits per pixel (bpp)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Rate-distortion: {ylabel} vs bpp")
    ax.grid(True, alpha=0.4)
    ax.legend()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_size_vs_ssim(rows: Sequence[Mapping], path: str | os.PathLike, baseline: str = "baseline") -> Path:
    """Bubble chart: model file size (log axis) against SSIM, bubble area proportional to bpp."""
    plt = _pyplot()
    groups = families(rows)
    archs = {a for _, a in groups}
    valid = [r for r in rows if r["file_bytes"] and math.isfinite(r["ssim"]) and math.isfinite(r["bpp"])]
    max_bpp = max((r["bpp"] for r in valid), default=1.0) or 1.0
    scale = 900.0 / max_bpp  # area in points^2 per bpp
    colors = _family_colors(groups, baseline, plt)
    fig, ax = plt.subplots(figsize=(8, 5))
    for (fam, arch), members in sorted(groups.items(), key=lambda kv: (kv[0][0] != baseline, kv[0])):
        pts = [r for r in members if r in valid]
        if not pts:
            continue
        color = colors[(fam, arch)]
        ax.scatter([r["file_bytes"] / 2**20 for r in pts], [r["ssim"] for r in pts], s=[max(r["bpp"] * scale, 4.0) for r in pts],
                   alpha=0.45, color=color, edgecolors=color, label=_label(fam, arch, archs))
        for r in pts:
            ax.annotate(f"q{r['quality']}", (r["file_bytes"] / 2**20, r["ssim"]), fontsize=7, ha="center", va="center")
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("model file size (MiB, log scale)")
    ax.set_ylabel("SSIM")
    ax.set_title("Model size vs SSIM (bubble area: bpp)")
    ax.grid(True, which="both", alpha=0.3)
    leg = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="family", borderaxespad=0)
    for h in leg.legend_handles:
        h.set_sizes([40])
    if valid:  # bubble-size key, under the family legend
        ref = [max_bpp / 4, max_bpp / 2, max_bpp]
        handles = [ax.scatter([], [], s=b * scale, color="grey", alpha=0.3) for b in ref]
        ax.add_artist(leg)
        ax.legend(handles, [f"{b:.2f} bpp" for b in ref], loc="lower left", bbox_to_anchor=(1.02, 0.0), title="bubble area",
                  labelspacing=1.6, borderpad=1.0, borderaxespad=0)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_training(history: Sequence[Mapping], path: str | os.PathLike, title: str = "Training") -> Path | None:
    """Validation RD loss and PSNR against the step of a ``deepcomp train`` history, one colour per learning rate."""
    pts = [h for h in history if math.isfinite(h.get("val_loss", math.nan))]
    if not pts:
        return None
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rates = sorted({h["lr"] for h in pts}, reverse=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for ax, key, label in ((top, "val_loss", "val RD loss"), (bottom, "val_psnr", "val PSNR (dB)")):
        ax.plot([h["step"] for h in pts], [h[key] for h in pts], color="lightgrey", zorder=1)
        for i, lr in enumerate(rates):
            sel = [h for h in pts if h["lr"] == lr]
            ax.scatter([h["step"] for h in sel], [h[key] for h in sel], s=12, color=cycle[i % len(cycle)], label=f"lr {lr:g}", zorder=2)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.4)
    top.set_yscale("log")  # the first steps' losses are many times the later ones
    top.legend()
    top.set_title(f"{title}: validation split of the training photos")
    bottom.set_xlabel("step")
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- the whole report
def write_report(docs: Sequence[Mapping], out_dir: str | os.PathLike, baseline: str = "baseline", method: str = "pchip", plots: bool = True) -> dict:
    """Tables (markdown, CSV), BD-rates and plots into ``out_dir``; returns the paths written."""
    if method not in BD_METHODS:
        raise DeepCompError(f"unknown BD interpolation {method!r}; choose one of {', '.join(BD_METHODS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = model_rows(docs)
    bd = bd_rows(rows, baseline, method)
    paths: dict[str, Path] = {}
    atomic_write_bytes(out_dir / "report.csv", table_csv(rows).encode())
    paths["table_csv"] = out_dir / "report.csv"
    atomic_write_bytes(out_dir / "bd_rate.csv", bd_csv(bd).encode())
    paths["bd_csv"] = out_dir / "bd_rate.csv"
    if plots:
        paths["rd_psnr"] = plot_rd(rows, out_dir / "rd_psnr.png", "psnr", baseline)
        paths["rd_ms_ssim"] = plot_rd(rows, out_dir / "rd_ms_ssim.png", "ms_ssim_db", baseline)
        paths["size_ssim"] = plot_size_vs_ssim(rows, out_dir / "size_ssim.png", baseline)
    md = ["# Deep Compression report", ""]
    data = sorted({str(r["data"]) for r in rows})
    counts = sorted({r["images"] for r in rows if r["images"] is not None})
    md.append(f"Images: {', '.join(data)} ({'/'.join(map(str, counts))} images); real bitstreams (compress/decompress). "
              "Ratio: size of the fp32 state_dict checkpoint / model file size.")
    if len(data) > 1 or len(counts) > 1:
        md.append("")
        md.append("**Warning:** the results come from different image sets; they are not comparable.")
    md += ["", "## Models", "", markdown_table(rows), "## BD-rate against the baseline", "", markdown_bd_table(bd, method)]
    if plots:
        md += ["## Plots", "", "![PSNR vs bpp](rd_psnr.png)", "", "![MS-SSIM vs bpp](rd_ms_ssim.png)", "",
               "![model size vs SSIM](size_ssim.png)", ""]
    atomic_write_bytes(out_dir / "report.md", "\n".join(md).encode())
    paths["markdown"] = out_dir / "report.md"
    return {"rows": rows, "bd": bd, "paths": paths}
