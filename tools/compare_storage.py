"""Deepcomp against the other ways to store the model and the image: one command, tables and plots.

    bash tools/run.sh python tools/compare_storage.py artifacts/bmshj2018-factorized-q*.pth.tar \\
        --data ../shared/data/kodak -o artifacts/comparison

For each checkpoint (one quality each; several make BD-rates possible) it
writes the model in every format of ``deepcomp.weight_formats`` (the fp32
state_dict file, that file through gzip / xz / zstd, an fp16 cast, int8 per
output channel, NNC at several ``--nnc-qp``) and as deepcomp files
(``--deepcomp`` settings, no retraining; ``--model FAMILY=FILE`` adds files
made elsewhere, e.g. by ``deepcomp pipeline``), reads each file back, and
evaluates the model it gives on the images with real bitstreams
(``deepcomp.evaluation``).  Lossless formats that come back bit for bit share
the fp32 model's evaluation.  Families are compared by BD-rate against the
fp32 file (``deepcomp.report``), and deepcomp against every other family at
equal quality: the smallest deepcomp family whose BD-rate is no worse (within
``--tolerance`` percentage points) than the other family's.

It also compares, on the first checkpoint (``--latents``), three ways to store
the images: CompressAI's range coder, LZMA over the quantized latents
(``deepcomp.latent_storage``) and the image files through tar + xz.

Output folder (default ``artifacts/comparison``): ``report.md`` (everything),
``summary.md`` (the short version for the README; with ``--model`` files as
well, a second table compares only the ``--deepcomp`` settings, made without
retraining, in ``summary_without_retraining.csv``), ``weights.{md,csv}`` (one
row per model file), ``families.{md,csv}`` (one row per family, BD-rates),
``latents.{md,csv}``, ``rd_psnr.png``, ``size_quality.png``, and
``results/`` (one evaluation JSON per model: ``deepcomp report`` reads them).
The model files themselves go to ``--work`` (default: a temporary folder,
deleted).  ``--limit N`` codes only the first N images (quick checks).  A
rerun into the same output folder reuses the evaluation of every file whose
SHA-256 and image list match its earlier results JSON.
"""

from __future__ import annotations

import argparse
import io
import math
import re
import shlex
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from deepcomp import container, evaluation, latent_storage, report, weight_formats, zoo
from deepcomp.checkpoints import atomic_write_bytes, sha256_file
from deepcomp.report import csv_text
from deepcomp.errors import DeepCompError
from deepcomp.model_file import compress_state_dict, file_info
from deepcomp.policy import Policy

DEFAULT_OUT = Path("artifacts/comparison")
DEFAULT_DATA = Path("../shared/data/kodak")
ANCHOR = "fp32"

#: Deepcomp settings without retraining: ``share<bits>`` or ``prune<fraction>-share<bits>``.
DEFAULT_DEEPCOMP = ("share8", "share5", "prune0.5-share5")

#: Columns of weights.csv.
WEIGHT_FIELDS = ("family", "group", "arch", "quality", "format", "setting", "file", "file_bytes", "ratio_vs_fp32_file",
                 "plain_bytes", "encode_s", "load_s", "exact", "bpp", "psnr", "ssim", "ms_ssim", "delta_psnr", "delta_bpp_pct", "images")

#: Columns of families.csv.
FAMILY_FIELDS = ("family", "group", "arch", "qualities", "mean_file_bytes", "ratio_vs_fp32_file", "bd_rate_psnr", "bd_rate_ms_ssim",
                 "bd_psnr", "mean_delta_psnr", "mean_delta_bpp_pct")

#: Columns of the equal-quality comparison (summary.csv).
SUMMARY_FIELDS = ("family", "group", "file_bytes", "loss", "deepcomp_family", "deepcomp_bytes", "deepcomp_loss", "times_smaller", "criterion")


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- helpers
def parse_setting(spec: str) -> tuple[float | None, int]:
    """``share5`` -> (None, 5); ``prune0.7-share5`` -> (0.7, 5)."""
    m = re.fullmatch(r"(?:prune(?P<p>0?\.\d+|0)-)?share(?P<b>\d+)", spec)
    if not m:
        raise DeepCompError(f"bad deepcomp setting {spec!r}: use share<bits> or prune<fraction>-share<bits> (e.g. prune0.5-share5)")
    bits = int(m["b"])
    if not 1 <= bits <= 16:
        raise DeepCompError(f"bad deepcomp setting {spec!r}: bits must be 1..16")
    prune = float(m["p"]) if m["p"] is not None else None
    return (prune or None), bits


def parse_model(spec: str) -> tuple[str, Path]:
    if "=" not in spec:
        raise DeepCompError(f"--model takes FAMILY=FILE, got {spec!r}")
    fam, path = spec.split("=", 1)
    if not fam or not Path(path).is_file():
        raise DeepCompError(f"--model {spec!r}: {'empty family' if not fam else f'file not found: {path}'}")
    return fam, Path(path)


def arch_quality(path: Path, arch: str | None, quality: int | None) -> tuple[str, int]:
    """What a checkpoint or deepcomp file says it holds (``arch``/``quality`` given must agree)."""
    fmt = weight_formats.detect_format(path)
    meta = file_info(path) if fmt == "deepcomp" else evaluation._checkpoint_meta(path) if fmt == "torch" else {}
    a = evaluation._check_choice("architecture", meta.get("arch"), arch)
    q = evaluation._check_choice("quality", meta.get("quality"), quality)
    if a is None or q is None:
        raise DeepCompError(f"{path} does not say which model it holds: pass --arch and --quality")
    return a, int(q)


def group_of(family: str, fmt: str) -> str:
    if family == ANCHOR:
        return "reference"
    if fmt in ("gzip", "xz", "zstd"):
        return "generic"
    if fmt in ("fp16", "int8", "nnc"):
        return fmt
    return "deepcomp" if fmt == "deepcomp" else "other"


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _f(v, fmt: str, none: str = "n/a") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, float) and math.isinf(v):
        return "lossless" if v > 0 else "-inf"
    return format(v, fmt)


def _md(head, rows, align=None) -> str:
    align = align or ["---"] + ["---:"] * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the model files
def write_files(ckpt: Path, arch: str, quality: int, work: Path, formats, nnc_qps, deepcomp_settings) -> tuple[OrderedDict, list]:
    """Every format of ``ckpt`` into ``work``: {family: WeightFile-like dict}, and the reference state_dict."""
    ref = weight_formats.reference_state_dict(ckpt, arch, quality)
    stem = f"{arch}-q{quality}"
    files: OrderedDict = OrderedDict()
    fp32 = weight_formats.write(ref, "fp32", work / f"{stem}{weight_formats.SUFFIXES['fp32']}", arch, quality)
    files[ANCHOR] = fp32
    raw = fp32.path.read_bytes()
    for fmt in formats:
        if fmt == "fp32":
            continue
        if fmt == "nnc":
            for qp in nnc_qps:
                f = weight_formats.write(ref, "nnc", work / f"{stem}-qp{qp}.nnc", arch, quality, qp=qp)
                files[f.label] = f
        else:
            f = weight_formats.write(ref, fmt, work / f"{stem}{weight_formats.SUFFIXES[fmt]}", arch, quality, fp32_bytes=raw)
            files[f.label] = f
    for spec in deepcomp_settings:
        prune, bits = parse_setting(spec)
        path = work / f"{stem}-{spec}.dcmp"
        t0 = time.perf_counter()
        data = container.to_bytes(compress_state_dict(ref, Policy().with_weight_rule(prune=prune, bits=bits), arch, quality))
        dt = time.perf_counter() - t0
        atomic_write_bytes(path, data)
        files[f"deepcomp-{spec}"] = weight_formats.WeightFile("deepcomp", path, len(data), dt, spec)
    return files, ref


def earlier_evaluation(path: Path, sha256: str, images) -> list | None:
    """The per-image results of an earlier run at ``path`` if they are of the same file (SHA-256) on the same images."""
    if not path.is_file():
        return None
    try:
        doc = evaluation.read_results(path)
    except DeepCompError:
        return None
    per_image = doc.get("per_image") or []
    if doc.get("model", {}).get("sha256") != sha256 or [r.get("image") for r in per_image] != [Path(i).name for i in images]:
        return None
    return per_image


def evaluate_file(family: str, wf, arch: str, quality: int, images, data: Path, ref, fp32_doc, progress: bool,
                  earlier: Path | None = None) -> dict:
    """Read the file back, evaluate its model (or share the fp32 evaluation when the weights are identical).

    ``earlier``: the results JSON of an earlier run; when it holds the same
    file (by SHA-256) on the same images, its per-image results are reused
    instead of coding the images again (``info["evaluation"]`` says so).
    """
    model, state, load_s = weight_formats.load_model(wf.path, arch, quality)
    exact = weight_formats.same_tensors(OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items()), ref) \
        if ref is not None else False
    if wf.lossless and not exact:
        raise DeepCompError(f"{wf.path.name}: the {wf.format} file did not give back the fp32 tensors bit for bit")
    info = {
        "path": str(wf.path), "name": wf.path.name, "kind": wf.format, "arch": arch, "quality": quality,
        "file_bytes": wf.path.stat().st_size, "fp32_bytes": evaluation.fp32_checkpoint_bytes(model),
        **evaluation.parameter_stats(model),
        "format": wf.format, "setting": wf.setting, "encode_s": wf.encode_s, "load_s": load_s, "exact": exact,
        "sha256": sha256_file(wf.path),
    }
    if wf.extra.get("plain_bytes"):
        info["plain_bytes"] = wf.extra["plain_bytes"]
    if exact and fp32_doc is not None:
        per_image = fp32_doc["per_image"]
        info["evaluation"] = "shared with fp32 (identical weights)"
    elif earlier is not None and (per_image := earlier_evaluation(earlier, info["sha256"], images)) is not None:
        info["evaluation"] = f"reused from an earlier run of the same file ({earlier.name})"
    else:
        per_image = evaluation.evaluate_model(model, images, progress=progress, desc=f"{family} q{quality}")
    return evaluation.results_document(info, per_image, data, family)


# ---------------------------------------------------------------- tables
def weight_rows(docs) -> list[dict]:
    rows = report.model_rows(docs)
    by_name = {(d["model"]["family"], d["model"]["arch"], d["model"]["quality"]): d["model"] for d in docs}
    anchor = {(r["arch"], r["quality"]): r for r in rows if r["family"] == ANCHOR}
    out = []
    for r in rows:
        m = by_name[(r["family"], r["arch"], r["quality"])]
        a = anchor.get((r["arch"], r["quality"]))
        out.append({
            "family": r["family"], "group": group_of(r["family"], m.get("format", "")), "arch": r["arch"], "quality": r["quality"],
            "format": m.get("format"), "setting": m.get("setting", ""), "file": r["model"], "file_bytes": r["file_bytes"],
            "ratio_vs_fp32_file": (a["file_bytes"] / r["file_bytes"]) if a else math.nan, "plain_bytes": m.get("plain_bytes"),
            "encode_s": _num(m.get("encode_s")), "load_s": _num(m.get("load_s")), "exact": m.get("exact"),
            "bpp": r["bpp"], "psnr": r["psnr"], "ssim": r["ssim"], "ms_ssim": r["ms_ssim"],
            "delta_psnr": (r["psnr"] - a["psnr"]) if a else math.nan,
            "delta_bpp_pct": (100.0 * (r["bpp"] / a["bpp"] - 1.0)) if a and a["bpp"] else math.nan,
            "images": r["images"],
        })
    order = {"reference": 0, "generic": 1, "fp16": 2, "int8": 3, "nnc": 4, "other": 5, "deepcomp": 6}
    out.sort(key=lambda r: (order.get(r["group"], 9), r["family"], str(r["arch"]), r["quality"]))
    return out


def family_rows(wrows, bd) -> list[dict]:
    bd_by = {(b["family"], b["arch"]): b for b in bd}
    fams: OrderedDict = OrderedDict()
    for r in wrows:
        fams.setdefault((r["family"], r["arch"]), []).append(r)
    out = []
    for (fam, arch), members in fams.items():
        b = bd_by.get((fam, arch), {})
        mean = lambda k: sum(m[k] for m in members) / len(members)  # noqa: E731
        anchor_bytes = [m["file_bytes"] * m["ratio_vs_fp32_file"] for m in members if math.isfinite(m["ratio_vs_fp32_file"])]
        out.append({
            "family": fam, "group": members[0]["group"], "arch": arch, "qualities": " ".join(str(m["quality"]) for m in members),
            "mean_file_bytes": mean("file_bytes"),
            "ratio_vs_fp32_file": (sum(anchor_bytes) / sum(m["file_bytes"] for m in members)) if len(anchor_bytes) == len(members) else math.nan,
            "bd_rate_psnr": 0.0 if fam == ANCHOR else _num(b.get("bd_rate_psnr")),
            "bd_rate_ms_ssim": 0.0 if fam == ANCHOR else _num(b.get("bd_rate_ms_ssim")),
            "bd_psnr": 0.0 if fam == ANCHOR else _num(b.get("bd_psnr")),
            "mean_delta_psnr": mean("delta_psnr"), "mean_delta_bpp_pct": mean("delta_bpp_pct"),
            "_by_quality": {m["quality"]: m for m in members},
        })
    return out


def equal_quality(frows, tolerance: float, tolerance_db: float, only: set | None = None) -> list[dict]:
    """For every family that is not deepcomp: the smallest deepcomp family of the same arch at no worse quality.

    ``only``: consider just these deepcomp families (e.g. those made without retraining).

    With two or more qualities per family the quality loss is the BD-rate
    (PSNR) against fp32, and "no worse" means at most ``tolerance`` points
    higher.  With one quality (no BD-rate) it is the loss at that quality:
    PSNR no more than ``tolerance_db`` lower and bpp no more than
    ``tolerance`` percent higher than the other family's.  Sizes: summed over
    the qualities both families have.
    """
    out = []
    dc = [f for f in frows if f["group"] == "deepcomp" and (only is None or f["family"] in only)]
    for f in frows:
        if f["group"] == "deepcomp":
            continue
        cands = []
        for d in dc:
            if d["arch"] != f["arch"]:
                continue
            common = sorted(set(f["_by_quality"]) & set(d["_by_quality"]))
            if not common:
                continue
            if math.isfinite(f["bd_rate_psnr"]) and math.isfinite(d["bd_rate_psnr"]):
                ok = d["bd_rate_psnr"] <= f["bd_rate_psnr"] + tolerance
                crit = f"BD-rate (PSNR) vs fp32 no more than {tolerance:g} points above"
                loss_f, loss_d = f"{f['bd_rate_psnr']:+.2f} %", f"{d['bd_rate_psnr']:+.2f} %"
            else:
                ok = all(d["_by_quality"][q]["delta_psnr"] >= f["_by_quality"][q]["delta_psnr"] - tolerance_db and
                         d["_by_quality"][q]["delta_bpp_pct"] <= f["_by_quality"][q]["delta_bpp_pct"] + tolerance for q in common)
                crit = f"per quality: PSNR no more than {tolerance_db:g} dB lower, bpp no more than {tolerance:g} % higher"
                fmt = lambda fam: "; ".join(f"q{q}: {fam['_by_quality'][q]['delta_psnr']:+.3f} dB, {fam['_by_quality'][q]['delta_bpp_pct']:+.2f} % bpp" for q in common)  # noqa: E731
                loss_f, loss_d = fmt(f), fmt(d)
            fb = sum(f["_by_quality"][q]["file_bytes"] for q in common)
            db = sum(d["_by_quality"][q]["file_bytes"] for q in common)
            cands.append((ok, db, d, fb, loss_f, loss_d, crit))
        good = sorted((c for c in cands if c[0]), key=lambda c: c[1])
        row = {"family": f["family"], "group": f["group"], "arch": f["arch"]}
        if good:
            _, db, d, fb, loss_f, loss_d, crit = good[0]
            row.update(file_bytes=fb, loss=loss_f, deepcomp_family=d["family"], deepcomp_bytes=db, deepcomp_loss=loss_d,
                       times_smaller=fb / db, criterion=crit)
        elif cands:
            _, _, _, fb, loss_f, _, crit = cands[0]
            row.update(file_bytes=fb, loss=loss_f, deepcomp_family="", deepcomp_bytes=None, deepcomp_loss="", times_smaller=math.nan,
                       criterion=crit + ": no deepcomp family reaches this quality")
        else:
            row.update(file_bytes=sum(m["file_bytes"] for m in f["_by_quality"].values()), loss="", deepcomp_family="", deepcomp_bytes=None,
                       deepcomp_loss="", times_smaller=math.nan, criterion="no deepcomp family of this architecture")
        out.append(row)
    return out


def weights_md(wrows) -> str:
    head = ["Family", "Q", "Setting", "File size", "× smaller than fp32 file", "Plain int8 size", "Write (s)", "Read (s)", "Exact",
            "bpp", "PSNR (dB)", "MS-SSIM", "ΔPSNR (dB)", "Δbpp (%)"]
    rows = [[r["family"], r["quality"], r["setting"] or "", report.human_bytes(r["file_bytes"]), _f(r["ratio_vs_fp32_file"], ".2f"),
             report.human_bytes(r["plain_bytes"]) if r["plain_bytes"] else "", _f(r["encode_s"], ".2f"), _f(r["load_s"], ".2f"),
             "yes" if r["exact"] else "no", _f(r["bpp"], ".4f"), _f(r["psnr"], ".2f"), _f(r["ms_ssim"], ".4f"),
             _f(r["delta_psnr"], "+.3f"), _f(r["delta_bpp_pct"], "+.2f")] for r in wrows]
    return _md(head, rows, ["---", "---:", "---"] + ["---:"] * 5 + ["---"] + ["---:"] * 5)


def families_md(frows) -> str:
    head = ["Family", "Kind", "Qualities", "Mean file size", "× smaller than fp32 file", "BD-rate PSNR (%)", "BD-rate MS-SSIM (%)",
            "BD-PSNR (dB)", "Mean ΔPSNR (dB)", "Mean Δbpp (%)"]
    rows = [[f["family"], f["group"], f["qualities"], report.human_bytes(f["mean_file_bytes"]), _f(f["ratio_vs_fp32_file"], ".2f"),
             _f(f["bd_rate_psnr"], "+.2f"), _f(f["bd_rate_ms_ssim"], "+.2f"), _f(f["bd_psnr"], "+.3f"),
             _f(f["mean_delta_psnr"], "+.3f"), _f(f["mean_delta_bpp_pct"], "+.2f")] for f in frows]
    return _md(head, rows, ["---", "---", "---"] + ["---:"] * 7)


def _ratio_words(r: float) -> str:
    if not math.isfinite(r):
        return "n/a"
    return f"{r:.2f}× smaller" if r >= 1 else f"{1 / r:.2f}× larger"


def _verdict(eq, who: str) -> str:
    smaller = [r for r in eq if math.isfinite(r["times_smaller"])]
    if eq and len(smaller) == len(eq) and all(r["times_smaller"] > 1 for r in smaller):
        return f"{who} is the smallest at equal quality against every other format"
    return f"{who} is NOT the smallest at equal quality against every other format (see the table)"


def summary_md(eq) -> str:
    head = ["Other format", "Its size", "Its quality loss", "Smallest deepcomp at no worse quality", "Its size", "Its loss", "Deepcomp file"]
    rows = []
    for r in eq:
        rows.append([r["family"], report.human_bytes(r["file_bytes"]), r["loss"] or "n/a", r["deepcomp_family"] or "none",
                     report.human_bytes(r["deepcomp_bytes"]) if r["deepcomp_bytes"] else "", r["deepcomp_loss"] or "",
                     _ratio_words(r["times_smaller"])])
    return _md(head, rows, ["---", "---:", "---:", "---", "---:", "---:", "---:"])


def latents_md(lat: dict) -> str:
    rc = lat["rows"][0]
    head = ["Method", "Images", "Bytes", "bpp", "× range coder bpp", "PSNR (dB)", "MS-SSIM", "Compress (s)", "Decompress (s)", "Total (s)"]
    rows = [[r["method"], r["images"], f"{r['bytes']:,}", _f(r["bpp"], ".4f"), _f(r["bpp"] / rc["bpp"], ".3f"), _f(r["psnr"], ".2f"),
             _f(r["ms_ssim"], ".4f"), _f(r["compress_s"], ".3f"), _f(r["decompress_s"], ".3f"), _f(r["total_s"], ".3f")] for r in lat["rows"]]
    return _md(head, rows, ["---"] + ["---:"] * 9)


# ---------------------------------------------------------------- plots
def plot_size_quality(frows, path: Path) -> Path:
    """Mean model file size (log) against the quality loss: BD-rate when there is one, else mean ΔPSNR."""
    from deepcomp.report import _pyplot

    plt = _pyplot()

    use_bd = all(math.isfinite(f["bd_rate_psnr"]) for f in frows)
    key, label = ("bd_rate_psnr", "BD-rate (PSNR) vs fp32 (%), lower is better") if use_bd else \
        ("mean_delta_psnr", "ΔPSNR vs fp32 at the same quality (dB), higher is better")
    colors = {"reference": "black", "generic": "tab:gray", "fp16": "tab:blue", "int8": "tab:green", "nnc": "tab:orange",
              "deepcomp": "tab:red", "other": "tab:purple"}
    fig, ax = plt.subplots(figsize=(8, 5))
    seen = set()
    for i, f in enumerate(sorted(frows, key=lambda f: f["mean_file_bytes"])):
        if not math.isfinite(f[key]):
            continue
        g = f["group"]
        ax.scatter(f["mean_file_bytes"] / 2**20, f[key], color=colors.get(g, "tab:purple"), s=40, label=None if g in seen else g, zorder=3)
        seen.add(g)
        ax.annotate(f["family"], (f["mean_file_bytes"] / 2**20, f[key]), fontsize=7, xytext=(4, 4 if i % 2 else -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("model file size (MiB, log scale; mean over the qualities)")
    ax.set_ylabel(label)
    ax.set_title("Model file size against quality loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="kind")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------- main
def run(args) -> dict:
    out = Path(args.out)
    images = [str(p) for p in evaluation.image_list(args.data, args.limit)]
    ckpts = []
    for c in args.checkpoints:
        if not Path(c).is_file():
            raise DeepCompError(f"checkpoint not found: {c}")
        ckpts.append((Path(c), *arch_quality(Path(c), args.arch, args.quality)))
    models = [(fam, p, *arch_quality(p, None, None)) for fam, p in map(parse_model, args.model)]
    for s in args.deepcomp:
        parse_setting(s)
    formats, notes = weight_formats.available_formats()
    formats = [f for f in formats if f in args.formats]
    if "nnc" in args.formats and "nnc" not in formats:
        log(next(n for n in notes if n.startswith("NNC")))
    if "zstd" in args.formats and "zstd" not in formats:
        log(next(n for n in notes if n.startswith("zstd")))
    notes = [n for n in notes if n.split()[0].lower().rstrip(":") in args.formats]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="compare-storage-") if args.work is None else None
    work = Path(args.work) if args.work is not None else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    docs = []
    try:
        for ckpt, arch, quality in ckpts:
            log(f"{ckpt}: {arch} q{quality}")
            files, ref = write_files(ckpt, arch, quality, work, formats, args.nnc_qp, args.deepcomp)
            fp32_doc = None
            for fam, wf in files.items():
                stem = f"{arch}-q{quality}-{fam}"
                doc = evaluate_file(fam, wf, arch, quality, images, args.data, ref, fp32_doc, not args.quiet,
                                    earlier=out / "results" / f"{stem}.json")
                if fam == ANCHOR:
                    fp32_doc = doc
                evaluation.write_results(doc, out / "results", stem)
                m = doc["mean"]
                log(f"  {fam:<24} {wf.file_bytes:>11,} bytes  write {wf.encode_s:6.2f} s  read {doc['model']['load_s']:5.2f} s  "
                    f"bpp {m['bpp']:.4f}  PSNR {m['psnr']:.2f} dB  MS-SSIM {m['ms_ssim']:.4f}"
                    + (f"  ({'= fp32 bit for bit' if doc['model']['exact'] else 'earlier run'})" if doc["model"].get("evaluation") else ""))
                docs.append(doc)
        for fam, path, arch, quality in models:
            wf = weight_formats.WeightFile(weight_formats.detect_format(path), path, path.stat().st_size, math.nan, "given")
            stem = f"{arch}-q{quality}-{fam}"
            doc = evaluate_file(fam, wf, arch, quality, images, args.data, None, None, not args.quiet,
                                earlier=out / "results" / f"{stem}.json")
            evaluation.write_results(doc, out / "results", stem)
            log(f"  {fam:<24} {wf.file_bytes:>11,} bytes  (given)  bpp {doc['mean']['bpp']:.4f}  PSNR {doc['mean']['psnr']:.2f} dB")
            docs.append(doc)
        lat = None
        if not args.no_latents:
            src = Path(args.latents) if args.latents else ckpts[0][0]
            arch, quality = arch_quality(src, args.arch if not args.latents else None, args.quality if not args.latents else None)
            model = zoo.model_from_state_dict(arch, quality, weight_formats.reference_state_dict(src, arch, quality), source=str(src))
            log(f"latents: {src.name} ({arch} q{quality}) on {len(images)} images")
            lat = latent_storage.compare_latent_storage(model, images, progress=not args.quiet)
            lat["model"] = {"file": src.name, "arch": arch, "quality": quality}
    finally:
        if tmp is not None:
            tmp.cleanup()
    return write_outputs(docs, lat, notes, args, out)


def write_outputs(docs, lat, notes, args, out: Path) -> dict:
    rows = report.model_rows(docs)
    bd = report.bd_rows(rows, baseline=ANCHOR)
    wrows = weight_rows(docs)
    frows = family_rows(wrows, bd)
    eq = equal_quality(frows, args.tolerance, args.tolerance_db)
    n_images = sorted({r["images"] for r in wrows})
    command = "bash tools/run.sh python tools/compare_storage.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    atomic_write_bytes(out / "weights.csv", csv_text(wrows, WEIGHT_FIELDS).encode())
    atomic_write_bytes(out / "weights.md", weights_md(wrows).encode())
    atomic_write_bytes(out / "families.csv", csv_text(frows, FAMILY_FIELDS).encode())
    atomic_write_bytes(out / "families.md", families_md(frows).encode())
    atomic_write_bytes(out / "summary.csv", csv_text(eq, SUMMARY_FIELDS).encode())
    paths = {"rd_psnr": report.plot_rd(rows, out / "rd_psnr.png", "psnr", baseline=ANCHOR),
             "size_quality": plot_size_quality(frows, out / "size_quality.png")}
    if lat is not None:
        atomic_write_bytes(out / "latents.csv", csv_text(lat["rows"], latent_storage.FIELDS).encode())
        atomic_write_bytes(out / "latents.md", latents_md(lat).encode())

    data = f"{args.data} ({'/'.join(map(str, n_images))} images{', first ' + str(args.limit) if args.limit else ''})"
    verdict = _verdict(eq, "deepcomp")
    # deepcomp without retraining (the --deepcomp settings) on its own, when files made elsewhere (--model) are in too
    plain = {f"deepcomp-{spec}" for spec in args.deepcomp}
    given = {parse_model(m)[0] for m in args.model}
    eq_plain = equal_quality(frows, args.tolerance, args.tolerance_db, only=plain) \
        if plain and any(f["group"] == "deepcomp" and f["family"] in given for f in frows) else None
    s = ["## Deepcomp against other ways to store the model", "",
         f"Images: {data}; real bitstreams. Quality loss against the fp32 file: "
         + ("BD-rate (PSNR) over the qualities" if all(math.isfinite(f["bd_rate_psnr"]) for f in frows) else
            "ΔPSNR and Δbpp at the same quality (one quality: no BD-rate)")
         + f"; \"no worse\": {eq[0]['criterion'] if eq else 'n/a'}.", "",
         summary_md(eq), f"**{verdict}.**", ""]
    if eq_plain is not None:
        s += [f"Deepcomp without retraining alone (`--deepcomp` settings: {', '.join(sorted(plain))}; the files above also "
              f"count the given files: {', '.join(sorted(given))}):", "",
              summary_md(eq_plain), f"**{_verdict(eq_plain, 'deepcomp without retraining')}.**", ""]
        atomic_write_bytes(out / "summary_without_retraining.csv", csv_text(eq_plain, SUMMARY_FIELDS).encode())
    else:
        (out / "summary_without_retraining.csv").unlink(missing_ok=True)
    if notes:
        s += ["Not run here: " + " ".join(notes), ""]
    if lat is not None:
        s += [f"### Storing the images ({lat['model']['file']}, {lat['rows'][0]['images']} images)", "", latents_md(lat),
              f"The PNG files themselves: {lat['png_files_bpp']:.3f} bpp.", ""]
    s += ["Reproduce:", "", f"```sh\n{command}\n```", ""]
    summary = "\n".join(s)
    atomic_write_bytes(out / "summary.md", summary.encode())

    md = ["# Storage comparison", "", summary, "## Families", "", families_md(frows),
          f"BD-rates ({'pchip'}) against the fp32 file of the same architecture; n/a with fewer than two qualities. "
          "Sizes are the files' bytes; \"× smaller\" compares with the fp32 state_dict file (derived buffers not stored).", "",
          "## Model files", "", weights_md(wrows),
          "Write: serialising + compressing (int8 and NNC include their quantization); read: decoding the file to a state_dict. "
          "Exact: the file gives back the fp32 tensors bit for bit (its evaluation is then the fp32 model's). "
          "Plain int8 size: 1 byte per conv weight + an fp32 scale per output channel + 4 bytes per other value.", "",
          "## Plots", "", "![PSNR vs bpp](rd_psnr.png)", "", "![size vs quality](size_quality.png)", ""]
    atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    log("")
    log(summary)
    log(f"-> {out / 'report.md'}")
    return {"weights": wrows, "families": frows, "equal_quality": eq, "equal_quality_without_retraining": eq_plain,
            "latents": lat, "paths": paths}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare_storage.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT", help="fp32 checkpoints, one quality each")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image folder (default: %(default)s)")
    p.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (quick checks)")
    p.add_argument("--arch", default=None, help="architecture of checkpoints that do not record it")
    p.add_argument("--quality", type=int, default=None, help="quality of a checkpoint that does not record it")
    p.add_argument("--formats", nargs="+", default=list(weight_formats.FORMATS), choices=weight_formats.FORMATS,
                   help="weight formats (default: all; zstd and nnc where installed)")
    p.add_argument("--nnc-qp", type=int, nargs="+", default=list(weight_formats.NNC_QPS),
                   help="NNC quantization parameters, step ~ 2**(qp/4) (default: %(default)s)")
    p.add_argument("--deepcomp", nargs="*", default=list(DEFAULT_DEEPCOMP),
                   help="deepcomp settings without retraining: share<bits>, prune<fraction>-share<bits> (default: %(default)s)")
    p.add_argument("--model", action="append", default=[], metavar="FAMILY=FILE",
                   help="another model file (deepcomp file or checkpoint, e.g. from `deepcomp pipeline`) in family FAMILY; repeatable")
    p.add_argument("--latents", type=Path, default=None, help="checkpoint of the image-storage comparison (default: the first)")
    p.add_argument("--no-latents", action="store_true", help="skip the image-storage comparison")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="equal quality: BD-rate (or, with one quality, bpp) at most this many points worse (default: %(default)s)")
    p.add_argument("--tolerance-db", type=float, default=0.05, help="with one quality: PSNR at most this many dB worse (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores)")
    p.add_argument("--work", type=Path, default=None, help="keep the model files here (default: a temporary folder, deleted)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print("compare_storage.py: error: --limit must be positive", file=sys.stderr)
        return 2
    try:
        with evaluation.torch_threads(args.threads or evaluation.default_threads()):
            run(args)
    except DeepCompError as exc:
        print(f"compare_storage.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
