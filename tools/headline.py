"""The headline: Deep Compression with retraining over a family of baselines, as BD-rates.

    bash tools/run.sh python tools/headline.py artifacts/bmshj2018-factorized-q{1,2,3,4,5}.pth.tar \\
        --setting prune0.85-bits4 --setting prune0.9-bits4 -o artifacts/headline

For every ``--setting`` (``prune<fraction>-bits<b>``: the conv/linear weight
rule of the default policy; ``alloc<ratio>-bits<b>``: b-bit sharing and
per-layer pruning ratios that the allocator picks from each baseline's own
sensitivity on the training photos' validation split, for a file <ratio>
times smaller than fp32) and every baseline checkpoint (one quality each)
it runs ``deepcomp pipeline`` (prune -> masked retraining -> k-means sharing ->
centroid fine-tuning -> Huffman; ``deepcomp.pipeline``) in ``--work``
(resumable: a rerun skips what is finished), then puts the family together:
per stage, the file-size ratio against the fp32 state_dict (smallest over the
qualities, and all of them together) and the BD-rate (PSNR and MS-SSIM) of
the family against the uncompressed baselines on the evaluation images (Kodak,
real bitstreams).  The headline is the largest-ratio setting whose final
files are all at least ``--target-ratio`` x smaller with a BD-rate (PSNR) of
at most ``--max-bd`` %, and the largest ratio reached at ``--relaxed-bd`` % or
less.  Training only ever sees ``--data`` (the training photos).

``--control`` also trains each baseline on, unpruned, for as many steps as
the pipeline's retraining and centroid fine-tuning together (same λ, lr,
crops and batches): the baselines are not trained to convergence, and the
control shows how much of the retrained result is that extra training alone.
The tables then add each final file against its control, and the family's
BD-rate against the controls when every quality has one; then the headline
(and the largest ratio at ``--relaxed-bd``) is judged against the controls,
not against the baselines as they are.  ``--control-schedule matched`` (the
default) ends each control as the pipeline ends (its last ``--centroid-steps`` at
``--centroid-lr``): a few hundred steps at a low learning rate are worth
several tenths of a dB on their own.

Output folder: ``headline.md`` (summary, per-setting stage tables, per-quality
rows), ``headline.csv`` / ``headline.json``, ``rd_psnr.png``, ``stages/``
(each pipeline's own table) and ``models/`` (the final deepcomp files of the
headline setting, or, when none met the target, of the setting that reaches
``--target-ratio`` with the smallest validation RD loss increase on the
training photos (never chosen on Kodak), and of the largest ratio at
``--relaxed-bd``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import sys
from pathlib import Path

from deepcomp import evaluation, report
from deepcomp.checkpoints import atomic_write_bytes, checkpoint_config
from deepcomp.errors import DeepCompError
from deepcomp.report import csv_text, human_bytes

STAGE_KEYS = ("prune", "retrain", "share", "centroids", "huffman")
SETTING = re.compile(r"^(prune|alloc)(\d*\.?\d+)-bits(\d+)(-kernel)?$")
#: The pruning ratios an ``alloc`` setting's sensitivity analysis measures for every layer (``--sens-ratios``).
ALLOC_RATIOS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
FIELDS = ("setting", "stage", "label", "qualities", "min_ratio", "family_ratio", "min_ratio_vs_checkpoint_file",
          "bd_rate_psnr", "bd_rate_ms_ssim", "bd_psnr_db", "mean_delta_psnr", "bd_rate_psnr_vs_control", "bd_psnr_vs_control_db")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_setting(spec: str) -> tuple[str, float, int]:
    """``prune<fraction>-bits<b>``: one pruning ratio for every conv weight; ``alloc<ratio>-bits<b>``: per-layer
    pruning ratios allocated from each baseline's sensitivity for a file ``ratio`` x smaller than fp32.  A ``-kernel``
    suffix prunes whole kernels instead of single weights (:func:`granularity_of`)."""
    m = SETTING.match(spec)
    if not m:
        raise DeepCompError(f"bad setting {spec!r}: expected prune<fraction>-bits<b> or alloc<ratio>-bits<b>, optionally "
                            "ending in -kernel, e.g. prune0.85-bits4, alloc21-bits5, alloc21-bits5-kernel")
    kind, value, bits = m.group(1), float(m.group(2)), int(m.group(3))
    if not 1 <= bits <= 16:
        raise DeepCompError(f"bad setting {spec!r}: the bits must be in 1..16")
    if kind == "prune" and not 0 <= value < 1:
        raise DeepCompError(f"bad setting {spec!r}: the pruning fraction must be in [0, 1)")
    if kind == "alloc" and not value > 1:
        raise DeepCompError(f"bad setting {spec!r}: the target ratio must be above 1")
    return kind, value, bits


def granularity_of(spec: str) -> str:
    """``kernel`` for a setting ending in ``-kernel``, else ``element``."""
    return "kernel" if spec.endswith("-kernel") else "element"


def setting_config(spec: str, sens_ratios=ALLOC_RATIOS, raw_storage: str = "fp32") -> dict:
    """The :class:`~deepcomp.pipeline.PipelineConfig` fields a setting decides; ``raw_storage``: how the tensors
    left unshared (biases, GDN betas, the entropy bottleneck) are stored (``fp32``, the default policy's, or ``fp16``)."""
    from deepcomp.policy import Policy

    kind, value, bits = parse_setting(spec)
    base = Policy().with_raw_storage(raw_storage)
    kernel = granularity_of(spec) == "kernel"
    if kernel:  # the allocator's sensitivity then prunes whole kernels too
        base = base.with_weight_rule(granularity="kernel")
    if kind == "prune":
        return {"policy": base.with_weight_rule(prune=value, bits=bits).to_json()}
    alloc = {"target_ratio": value, "sens_bits": (bits,), "sens_ratios": tuple(float(r) for r in sens_ratios)}
    return alloc if raw_storage == "fp32" and not kernel else {"policy": base.to_json(), **alloc}


def quality_of(path: Path) -> int:
    q = checkpoint_config(path).get("quality")
    if not isinstance(q, int):
        raise DeepCompError(f"{path} does not record its quality (config.quality); it must be a deepcomp baseline")
    return q


def qualities_of(checkpoints) -> dict[int, Path]:
    """{quality: checkpoint}; two checkpoints of one quality are refused."""
    qualities: dict[int, Path] = {}
    for c in checkpoints:
        q = quality_of(c)
        if q in qualities:
            raise DeepCompError(f"two checkpoints of quality {q}: {qualities[q]} and {c}")
        qualities[q] = c
    return qualities


def final_name(quality: int, setting: str) -> str:
    """The name of a setting's final file in ``OUT/models/``."""
    return f"bmshj2018-factorized-q{quality}-{setting}.dcmp"


def _bd(anchor: list[dict], test: list[dict], metric: str) -> float:
    """BD-rate of ``test`` against ``anchor`` (rows with bpp and the metric), NaN when undefined."""
    if len(anchor) < 2 or len(test) < 2:
        return math.nan
    conv = report.ms_ssim_db if metric == "ms_ssim" else float
    try:
        return report.bd_rate([r["bpp"] for r in anchor], [conv(r[metric]) for r in anchor],
                              [r["bpp"] for r in test], [conv(r[metric]) for r in test])
    except Exception:  # non-monotonic or non-overlapping curves
        return math.nan


def _bd_psnr(anchor: list[dict], test: list[dict]) -> float:
    """BD-PSNR (dB at the same bpp) of ``test`` against ``anchor``: defined where the bpp ranges
    overlap, also when the PSNR ranges do not (then the BD-rate is not)."""
    if len(anchor) < 2 or len(test) < 2:
        return math.nan
    try:
        return report.bd_psnr([r["bpp"] for r in anchor], [r["psnr"] for r in anchor], [r["bpp"] for r in test], [r["psnr"] for r in test])
    except Exception:
        return math.nan


def train_controls(args, qualities: dict[int, Path], images: list[str]) -> dict[int, dict]:
    """The controls of ``--control`` (the qualities given, or all), each trained for the retraining's plus the centroid steps."""
    steps = args.retrain_steps + args.centroid_steps
    wanted = args.control or sorted(qualities)
    for q in wanted:
        if q not in qualities:
            raise DeepCompError(f"--control {q}: no baseline of quality {q} given")
    cdir = control_dir(args.work, steps, args.lr, control_phases(args))
    return {q: train_control(qualities[q], cdir / f"q{q}", steps, args, images) for q in wanted}


def family_rows(setting: str, per_quality: dict[int, dict], ckpt_bytes: dict[int, int], controls: dict[int, dict] | None = None) -> list[dict]:
    """One row per stage of one setting: ratios and BD-rates over the family.

    With a control for every quality (:func:`train_control`), also the
    BD-rate and BD-PSNR against the controls.
    """
    qs = sorted(per_quality)
    base = [next(r for r in per_quality[q]["rows"] if r["stage"] == "baseline") for q in qs]
    ctrl = [controls[q] for q in qs] if controls and all(q in controls for q in qs) else None
    rows = []
    for key in STAGE_KEYS:
        stage = [next(r for r in per_quality[q]["rows"] if r["stage"] == key) for q in qs]
        fp32 = sum(per_quality[q]["fp32_bytes"] for q in qs)
        rows.append({
            "setting": setting, "stage": key, "label": stage[0]["label"], "qualities": " ".join(map(str, qs)),
            "min_ratio": min(r["ratio"] for r in stage),
            "family_ratio": fp32 / sum(r["bytes"] for r in stage),
            "min_ratio_vs_checkpoint_file": min(ckpt_bytes[q] / r["bytes"] for q, r in zip(qs, stage)),
            "bd_rate_psnr": _bd(base, stage, "psnr"),
            "bd_rate_ms_ssim": _bd(base, stage, "ms_ssim"),
            "bd_psnr_db": _bd_psnr(base, stage),
            "mean_delta_psnr": sum(s["psnr"] - b["psnr"] for s, b in zip(stage, base)) / len(qs),
            "val_loss_increase_pct": _val_increase(base, stage),
            "bd_rate_psnr_vs_control": _bd(ctrl, stage, "psnr") if ctrl else math.nan,
            "bd_psnr_vs_control_db": _bd_psnr(ctrl, stage) if ctrl else math.nan,
        })
    return rows


def _val_increase(base: list[dict], stage: list[dict]) -> float:
    """Mean over the qualities of the validation RD loss increase (%) against the baseline: the training photos'
    judgement of a setting, comparable across qualities whose lambdas differ."""
    pairs = [(b.get("val_loss"), s.get("val_loss")) for b, s in zip(base, stage)]
    if not pairs or any(b is None or b <= 0 or v is None or not math.isfinite(v) for b, v in pairs):
        return math.nan
    return 100 * sum(v / b - 1 for b, v in pairs) / len(pairs)


def _f(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _u(v, fmt: str, unit: str) -> str:
    text = _f(v, fmt)
    return text if text == "n/a" else text + unit


def reference_key(rows: list[dict]) -> str:
    """The BD-rate the headline is judged by: against the controls when every setting has a family BD-rate
    against them (the honest reference: as much training, unpruned), else against the baselines."""
    final = [r for r in rows if r["stage"] == "huffman"]
    if final and all(math.isfinite(r.get("bd_rate_psnr_vs_control", math.nan)) for r in final):
        return "bd_rate_psnr_vs_control"
    return "bd_rate_psnr"


def pick(rows: list[dict], target_ratio: float, max_bd: float, relaxed_bd: float, key: str = "bd_rate_psnr") -> dict:
    """The headline (largest ratio >= target at BD-rate <= max_bd), the largest ratio at <= relaxed_bd and the
    smallest BD-rate, the BD-rate being ``key`` of the final (Huffman) rows."""
    final = [r for r in rows if r["stage"] == "huffman" and math.isfinite(r[key])]
    ok = [r for r in final if r["min_ratio"] >= target_ratio and r[key] <= max_bd]
    relaxed = [r for r in final if r[key] <= relaxed_bd]
    return {
        "reference": "controls" if key == "bd_rate_psnr_vs_control" else "baselines", "key": key,
        "headline": max(ok, key=lambda r: r["min_ratio"]) if ok else None,
        "largest_at_relaxed": max(relaxed, key=lambda r: r["min_ratio"]) if relaxed else None,
        "best_bd": min(final, key=lambda r: r[key]) if final else None,
    }


def _control_delta(table: dict, control: dict) -> str:
    f = next(r for r in table["rows"] if r["stage"] == "huffman")
    return f"{100 * (f['bpp'] / control['bpp'] - 1):+.1f} % bpp, {f['psnr'] - control['psnr']:+.2f} dB"


def control_md(per_setting, controls: dict[int, dict], rows, steps: int, lr_text: str) -> list[str]:
    """The control section: what the same extra training gives the unpruned baselines."""
    lines = ["## Control: the baselines trained on unpruned", "",
             f"Masked retraining also trains the baselines further, which helps as far as they are short of convergence. The control trains each "
             f"baseline for the same {steps} steps (the retraining's plus the centroid fine-tuning's) {lr_text}, with the same λ, "
             "crops and batches, and no mask. *Δ vs control*: the final file against the control of the same quality "
             "(bpp in %, PSNR in dB). *Val RD loss*: on the validation split of the training photos.", "",
             "| Setting | Quality | Baseline bpp / PSNR / val loss | Control bpp / PSNR / val loss | Final bpp / PSNR / val loss | Δ vs control |",
             "|---|---:|---:|---:|---:|---:|"]
    for setting, per_q in per_setting.items():
        for q in sorted(per_q):
            if q not in controls:
                continue
            b = next(r for r in per_q[q]["rows"] if r["stage"] == "baseline")
            f = next(r for r in per_q[q]["rows"] if r["stage"] == "huffman")
            c = controls[q]
            lines.append(f"| `{setting}` | {q} | {b['bpp']:.4f} / {b['psnr']:.2f} dB / {_f(b['val_loss'], '.4f')} | "
                         f"{c['bpp']:.4f} / {c['psnr']:.2f} dB / {_f(c['val_loss'], '.4f')} | "
                         f"{f['bpp']:.4f} / {f['psnr']:.2f} dB / {_f(f['val_loss'], '.4f')} | "
                         f"{_control_delta(per_q[q], c).replace(' bpp,', ' /')} |")
    fam = [r for r in rows if r["stage"] == "huffman" and math.isfinite(r["bd_psnr_vs_control_db"])]
    if fam:
        lines += [""] + [f"Family against the controls (`{r['setting']}`): BD-rate (PSNR) {_u(r['bd_rate_psnr_vs_control'], '+.2f', ' %')}, "
                         f"BD-PSNR {_u(r['bd_psnr_vs_control_db'], '+.2f', ' dB')}." for r in fam]
    elif controls:
        lines += ["", "Controls exist for only some qualities, so no family BD-rate against them."]
    return lines + [""]


def shipped_settings(rows: list[dict], choice: dict, target_ratio: float) -> list[str]:
    """The settings whose final files go to ``models/``: the headline; else, among the settings that reach
    ``target_ratio`` (else among all), the one whose final files raise the validation RD loss of the training
    photos least (a choice never made on Kodak); and the largest ratio at the relaxed BD-rate, when it is another
    setting (a result the issue asks to name, not a choice)."""
    kept = []
    if choice["headline"] is not None:
        kept.append(choice["headline"]["setting"])
    else:
        finals = [r for r in rows if r["stage"] == "huffman" and math.isfinite(r.get("val_loss_increase_pct", math.nan))]
        finals = [r for r in finals if r["min_ratio"] >= target_ratio] or finals
        if finals:
            kept.append(min(finals, key=lambda r: r["val_loss_increase_pct"])["setting"])
    rel = choice.get("largest_at_relaxed")
    if rel is not None and rel["setting"] not in kept:
        kept.append(rel["setting"])
    return kept


def allocation_md(work: Path, per_setting) -> list[str]:
    """Per layer, the pruning ratio (and bits) the allocator chose for every quality of the ``alloc`` settings."""
    lines = []
    for setting, per_q in per_setting.items():
        if parse_setting(setting)[0] != "alloc":
            continue
        chosen = {}
        for q in sorted(per_q):
            doc = json.loads((work / setting / f"q{q}" / "policy.json").read_text())
            chosen[q] = doc["allocation"]["choices"]
        layers = sorted({n for c in chosen.values() for n in c})
        if not lines:
            lines += ["## Allocated pruning ratios", "",
                      "Per layer and quality, the fraction of weights the allocator prunes (and its bit width). GDN gammas are "
                      "shared but never pruned; the rest of the model (biases, GDN betas, the entropy bottleneck) is stored raw "
                      "as in every setting.", ""]
        lines += [f"`{setting}`:", "", "| Layer | Weights | " + " | ".join(f"q{q}" for q in chosen) + " |",
                  "|---|---:|" + "---:|" * len(chosen)]
        sizes = json.loads((work / setting / f"q{min(chosen)}" / "sensitivity.json").read_text())["layers"]
        for n in layers:
            cells = [f"{chosen[q][n]['ratio']:.2f} / {chosen[q][n]['bits']} b" if n in chosen[q] else "" for q in chosen]
            lines.append(f"| `{n}` | {sizes[n]['size']:,} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def reproduce_command(argv) -> str:
    return "bash tools/run.sh python tools/headline.py " + " ".join(shlex.quote(a) for a in argv)


def headline_summary(rows, choice, args, against: str) -> list[str]:
    """The family's verdict on the target: the headline setting, or the best there is."""
    h, key = choice["headline"], choice.get("key", "bd_rate_psnr")
    if h:
        also = (f"; against the baselines as they are: {h['bd_rate_psnr']:+.2f} %" if key == "bd_rate_psnr_vs_control" else
                f" (MS-SSIM {_f(h['bd_rate_ms_ssim'], '+.2f')} %)")
        return [f"**Headline: `{h['setting']}`: every model file is at least {h['min_ratio']:.1f}x smaller than its fp32 "
                f"state_dict ({h['family_ratio']:.1f}x for the family together) at a BD-rate (PSNR) of {h[key]:+.2f} % "
                f"{against}{also}.**"]
    lines = [f"**No setting reached {args.target_ratio:g}x at a BD-rate (PSNR) of at most {args.max_bd:g} % {against}.**"]
    if choice["best_bd"]:
        b = choice["best_bd"]
        lines.append(f"The smallest BD-rate was {b[key]:+.2f} % (`{b['setting']}`, {b['min_ratio']:.1f}x).")
    finals = [r for r in rows if r["stage"] == "huffman"]
    if finals and not choice["best_bd"]:
        lines.append("The BD-rate (PSNR) is undefined for every setting: the compressed family's PSNR range does not overlap "
                     "the baselines'. At the same bpp (BD-PSNR): " + "; ".join(
                         f"`{r['setting']}` {_u(r['bd_psnr_db'], '+.2f', ' dB')} at {r['min_ratio']:.1f}x" for r in finals) + ".")
    return lines


def relaxed_summary(choice, args, against: str) -> list[str]:
    rel, key = choice["largest_at_relaxed"], choice.get("key", "bd_rate_psnr")
    if rel:
        return [f"Largest ratio at a BD-rate (PSNR) of at most {args.relaxed_bd:g} % {against}: **{rel['min_ratio']:.1f}x** "
                f"(`{rel['setting']}`, {rel[key]:+.2f} %)."]
    return [f"No setting stayed within {args.relaxed_bd:g} % BD-rate (PSNR) {against}."]


def markdown(rows, per_setting, choice, args, command, kept: list[str], controls=None) -> str:
    vs_ctrl = choice.get("key") == "bd_rate_psnr_vs_control"
    against = ("against the controls (the baselines trained on, unpruned, for as many steps, ending as the pipeline does)"
               if vs_ctrl else "against the uncompressed baselines")
    lines = ["# Deep Compression with retraining on the bmshj2018-factorized family", ""]
    n_q = len({q for per_q in per_setting.values() for q in per_q})
    if n_q < 2:
        lines.append("**One quality only: no BD-rate, which needs a family of qualities.** Per quality: the tables below"
                     + (" and the comparison with the control at the end." if controls else "."))
    else:
        lines += headline_summary(rows, choice, args, against) + [""] + relaxed_summary(choice, args, against)
    if controls:
        lines += ["", "**Against the controls** (the baselines trained on unpruned for as many steps; see the end): " + "; ".join(
            f"`{setting}` q{q}: {_control_delta(per_q[q], controls[q])}" for setting, per_q in per_setting.items() for q in sorted(per_q)
            if q in controls) + "."]
    lines += ["", f"Evaluation: `{args.eval_data}`, real bitstreams; training photos `{args.data}` only for retraining. "
              "Ratio: fp32 state_dict bytes / size (the smallest over the qualities; *family*: all files together; "
              "*vs file*: the baseline's `.pth.tar` / size). BD-rate against the uncompressed baselines (pchip; negative is better)"
              + ("; *vs control*: against the controls" if vs_ctrl else "") + ". *Val loss Δ*: the RD loss on the validation "
              "split of the training photos against the baseline's, mean over the qualities (it, not Kodak, picks the "
              "files shipped when no setting meets the target). "
              "Sizes of the stages before *+ Huffman* are computed as in `docs/PIPELINE.md`. Settings: `prune<f>-bits<b>` prunes "
              "every conv weight by the fraction f, then shares it at b bits; `alloc<R>-bits<b>` prunes each layer by the ratio "
              "that the allocator picks from that quality's own sensitivity (validation split of the training photos) for a "
              "file R times smaller than fp32 (see *Allocated pruning ratios*). The tensors a setting leaves unshared (biases, "
              f"GDN betas, the entropy bottleneck) are stored in {args.raw_storage}."
              + (f" Both fine-tunings add a layer-wise distillation loss from the baseline, weight {args.distill:g} "
                 "(`deepcomp/distillation.py`); the controls train without it." if args.distill else ""), ""]
    head = ["Setting", "Stage", "Ratio (min)", "Ratio (family)", "Ratio vs file (min)", "BD-rate PSNR", "BD-rate MS-SSIM", "BD-PSNR",
            "mean ΔPSNR", "Val loss Δ"] + (["BD-rate PSNR vs control", "BD-PSNR vs control"] if vs_ctrl else [])
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        lines.append("| " + " | ".join([
            f"`{r['setting']}`", r["label"], _f(r["min_ratio"], ".1f") + "x", _f(r["family_ratio"], ".1f") + "x",
            _f(r["min_ratio_vs_checkpoint_file"], ".1f") + "x", _u(r["bd_rate_psnr"], "+.2f", " %"),
            _u(r["bd_rate_ms_ssim"], "+.2f", " %"), _u(r["bd_psnr_db"], "+.2f", " dB"), _u(r["mean_delta_psnr"], "+.2f", " dB"),
            _u(r.get("val_loss_increase_pct", math.nan), "+.2f", " %")]
            + ([_u(r["bd_rate_psnr_vs_control"], "+.2f", " %"), _u(r["bd_psnr_vs_control_db"], "+.2f", " dB")] if vs_ctrl else [])) + " |")
    lines += ["", "## Per quality (final files)", "",
              "| Setting | Quality | Baseline bpp / PSNR | Final size | Ratio | bpp | PSNR | MS-SSIM |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for setting, per_q in per_setting.items():
        for q in sorted(per_q):
            b = next(r for r in per_q[q]["rows"] if r["stage"] == "baseline")
            f = next(r for r in per_q[q]["rows"] if r["stage"] == "huffman")
            lines.append(f"| `{setting}` | {q} | {b['bpp']:.4f} / {b['psnr']:.2f} dB | {human_bytes(f['bytes'])} | {f['ratio']:.1f}x | "
                         f"{f['bpp']:.4f} | {f['psnr']:.2f} dB | {f['ms_ssim']:.4f} |")
    lines.append("")
    lines += allocation_md(args.work, per_setting)
    if controls:
        lines += control_md(per_setting, controls, rows, args.retrain_steps + args.centroid_steps, "at " + control_lr_text(args))
    if kept:
        lines += ["The final files of " + " and ".join(f"`{k}`" for k in kept) + " are in `models/`.", ""]
    lines += ["Per-stage tables of each run: `stages/`.", "", "Reproduce:", "", f"```sh\n{command}\n```", ""]
    return "\n".join(lines)


def plot(per_setting, path: Path, controls: dict[int, dict] | None = None) -> None:
    plt = report._pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    first = next(iter(per_setting.values()))
    qs = sorted(first)
    base = [next(r for r in first[q]["rows"] if r["stage"] == "baseline") for q in qs]
    ax.plot([r["bpp"] for r in base], [r["psnr"] for r in base], "k-o", label="baseline (fp32)")
    if controls:
        cq = sorted(controls)
        ax.plot([controls[q]["bpp"] for q in cq], [controls[q]["psnr"] for q in cq], ":o", color="grey",
                label="control: baseline trained on unpruned")
    for setting, per_q in per_setting.items():
        qs = sorted(per_q)
        fin = [next(r for r in per_q[q]["rows"] if r["stage"] == "huffman") for q in qs]
        ratio = min(r["ratio"] for r in fin)
        ax.plot([r["bpp"] for r in fin], [r["psnr"] for r in fin], "-s", label=f"{setting} (≥{ratio:.1f}x)")
    ax.set_xlabel("bpp (Kodak, real bitstreams)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("bmshj2018-factorized: baselines vs Deep Compression with retraining")
    report._save(fig, path)


# ---------------------------------------------------------------- the control
def control_phases(args) -> list[tuple[int, float]]:
    """The control's learning rate by phase, as ``(last step, lr)``: all steps at ``--lr`` (flat), or, matched,
    the retraining's steps at ``--lr`` and the centroid fine-tuning's at ``--centroid-lr``, as the pipeline ends."""
    steps = args.retrain_steps + args.centroid_steps
    low = args.anneal_steps + args.centroid_steps  # the pipeline's steps at --centroid-lr: its anneal and centroid phases
    if args.control_schedule == "matched" and low > 0 and args.centroid_lr != args.lr:
        return [(steps - low, args.lr), (steps, args.centroid_lr)]
    return [(steps, args.lr)]


def control_lr_text(args) -> str:
    phases = control_phases(args)
    if len(phases) == 1:
        return f"lr {args.lr:g}"
    ends = "centroid fine-tuning" if not args.anneal_steps else "anneal and centroid fine-tuning"
    return f"lr {args.lr:g}, the last {args.anneal_steps + args.centroid_steps} at {args.centroid_lr:g} as the pipeline's {ends}"


def control_dir(work: Path, steps: int, lr: float, phases: list[tuple[int, float]] | None = None) -> Path:
    tail = "".join(f"-then{plr:g}from{start}" for (start, _), (_, plr) in zip(phases or [], (phases or [])[1:]))
    return work / f"control-{steps}steps-lr{lr:g}{tail}"


def train_control(ckpt: Path, out: Path, steps: int, args, images: list[str]) -> dict:
    """The baseline trained on *unpruned* for ``steps`` steps with the retraining's settings.

    The baselines are not trained to convergence, so part of what masked
    retraining wins back is plain extra training.  The control measures that
    part: same λ, learning rate, batch, crops and batches (seed) as the
    pipeline's retraining, no mask.  Returns its Kodak summary and its
    validation RD loss (``out/record.json``; the per-image results in
    ``out/control.json``); resumable.
    """
    import numpy as np
    import torch

    from deepcomp import zoo
    from deepcomp.checkpoints import read_state_dict, sha256_file, write_checkpoint
    from deepcomp.finetune import TrainData, cpu_state_dict, masked_retrain
    from deepcomp.training import TrainConfig, evaluate_rd, read_training_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    rec_path, path = out / "record.json", out / "control.pth.tar"
    ck = checkpoint_config(ckpt)
    arch, quality = ck.get("arch"), ck.get("quality")
    if arch is None or quality is None:
        raise DeepCompError(f"{ckpt} does not record its architecture and quality")
    lmbda = zoo.config_lambda(ck, quality)
    settings = {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt), "steps": steps, "lr": args.lr, "lmbda": lmbda,
                "batch_size": args.batch_size, "patch_size": args.patch_size, "val_fraction": args.val_fraction,
                "val_patch": args.val_patch, "data": str(args.data), "eval_data": str(args.eval_data), "images": len(images)}
    phases = control_phases(args)
    if len(phases) > 1:
        settings["phases"] = [list(ph) for ph in phases]
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
    if rec.get("settings") == settings and rec.get("done"):
        return rec
    data = TrainData.from_folder(args.data, args.patch_size, args.val_fraction, args.val_patch, 0)
    model = zoo.build(arch, quality, init_weights=False)
    state = None
    if rec.get("settings") == settings and path.exists():
        tck = read_training_checkpoint(path)
        zoo.assign_weights(model, tck["state_dict"], "control")
        state = dict(tck.get("train_state") or {})
        log(f"[control] q{quality}: resuming at step {state.get('step', 0)} of {steps}")
    else:
        zoo.assign_weights(model, read_state_dict(ckpt), "control")
        atomic_write_bytes(rec_path, (json.dumps({"settings": settings, "done": False}, indent=1) + "\n").encode())
        log(f"[control] q{quality}: {steps} steps of unpruned training, {control_lr_text(args)}, lambda {lmbda:g}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    data.sampler.rng = np.random.default_rng([0, 1, (state or {}).get("step", 0)])  # the pipeline's retraining batches
    config = {"arch": arch, "quality": quality, "lmbda": lmbda}

    def save(payload: dict) -> None:
        write_checkpoint(path, {"state_dict": zoo.strip_derived(payload["state_dict"]), "config": config, "train_state": payload["train_state"]})

    for end, lr in phases:
        if (state or {}).get("step", 0) >= end:
            continue
        cfg = TrainConfig(arch=arch, quality=quality, lmbda=lmbda, steps=end, batch_size=args.batch_size, patch_size=args.patch_size,
                          lr=lr, val_every=args.val_every, val_fraction=args.val_fraction, seed=0)
        state = masked_retrain(model, {}, cfg, data, state=state, on_checkpoint=save, checkpoint_every=args.val_every,
                               progress=not args.quiet, log=log, set_lr=lr)  # a later (or resumed) phase trains at its own rate
    val = evaluate_rd(model, data.val_crops.to(device), lmbda)
    model.cpu()
    model.update(force=True)
    write_checkpoint(path, {"state_dict": cpu_state_dict(model), "config": config})
    log(f"[control] q{quality}: {path} on {len(images)} images")
    evaluation.run_one(str(path), "control", images, str(args.eval_data), str(out), arch, quality, "control", True, not args.quiet)
    doc = evaluation.read_results(out / "control.json")
    rec = {"settings": settings, "done": True, "quality": quality, "val_loss": val["loss"], "val_bpp": val["bpp"], "val_psnr": val["psnr"],
           **{k: doc["mean"].get(k) for k in ("bpp", "psnr", "ssim", "ms_ssim", "images")}}
    atomic_write_bytes(rec_path, (json.dumps(evaluation._clean(rec), indent=1) + "\n").encode())
    return rec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT", help="baselines, one quality each")
    p.add_argument("--setting", action="append", default=[],
                   help="prune<fraction>-bits<b>, or alloc<ratio>-bits<b> for per-layer pruning ratios allocated from the "
                        "sensitivity for that ratio (repeatable; default prune0.85-bits4)")
    p.add_argument("--sens-ratios", type=float, nargs="+", default=list(ALLOC_RATIOS),
                   help="pruning ratios the sensitivity of an alloc setting measures")
    p.add_argument("--raw-storage", choices=("fp32", "fp16"), default="fp32",
                   help="storage of the tensors every setting leaves unshared (biases, GDN betas, the entropy bottleneck)")
    p.add_argument("-o", "--out", type=Path, default=Path("artifacts/headline"))
    p.add_argument("--work", type=Path, default=Path("runs/headline"), help="pipeline folders (resumable)")
    p.add_argument("--retrain-steps", type=int, default=600)
    p.add_argument("--anneal-steps", type=int, default=0,
                   help="the retraining's last steps, after the last pruning round, at --centroid-lr (a matched control anneals as long)")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of the layer-wise distillation from the baseline in the pipeline's fine-tunings (0: none; controls train without)")
    p.add_argument("--prune-rounds", type=int, default=3)
    p.add_argument("--centroid-steps", type=int, default=300)
    p.add_argument("--centroid-mode", choices=("fixed", "nearest"), default="fixed",
                   help="fixed: Han's trained quantization (codebooks only); nearest: quantization-aware, a weight may change cluster")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--centroid-lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the training photos held out for validation")
    p.add_argument("--val-patch", type=int, default=256, help="size of the validation crops")
    p.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    p.add_argument("--eval-data", type=Path, default=Path("../shared/data/kodak"))
    p.add_argument("--eval-limit", type=int, default=None, help="only the first N evaluation images (quick checks)")
    p.add_argument("--control", type=int, nargs="*", action="extend", default=None, metavar="Q",
                   help="also train the baselines (all, or only qualities Q) on unpruned for the same steps, as a control")
    p.add_argument("--control-schedule", choices=("flat", "matched"), default="matched",
                   help="the controls' learning rate: --centroid-lr for the last --centroid-steps, as the pipeline ends "
                        "(matched, the default), or --lr throughout (flat: flatters the pipeline, which ends at the lower rate)")
    p.add_argument("--controls-only", action="store_true",
                   help="no pipelines: train the controls (--control, default all qualities) and compare the final files already "
                        "in OUT/models/ with them (OUT/controls.md, controls.json)")
    p.add_argument("--target-ratio", type=float, default=20.0)
    p.add_argument("--max-bd", type=float, default=2.0)
    p.add_argument("--relaxed-bd", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def run(args, argv) -> dict:
    from deepcomp.pipeline import PipelineConfig, run_pipeline

    settings = args.setting or ["prune0.85-bits4"]
    parsed = {s: setting_config(s, args.sens_ratios, args.raw_storage) for s in settings}
    qualities = qualities_of(args.checkpoints)
    images = [str(p) for p in evaluation.image_list(args.eval_data, args.eval_limit)]
    # the baselines are evaluated once and shared by every setting's pipeline
    base_dir = args.work / "baselines"
    for q, c in sorted(qualities.items()):
        jpath = base_dir / f"q{q}" / "baseline.json"
        if evaluation.reusable_results(jpath, c, args.eval_data, len(images)) is None:
            log(f"[baseline] q{q}: {c} on {len(images)} images")
            evaluation.run_one(str(c), "baseline", images, str(args.eval_data), str(jpath.parent), None, None, "pipeline", True, not args.quiet)
    per_setting: dict[str, dict[int, dict]] = {}
    for setting, fields in parsed.items():
        per_setting[setting] = {}
        for q, c in sorted(qualities.items()):
            out = args.work / setting / f"q{q}"
            (out / "results").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base_dir / f"q{q}" / "baseline.json", out / "results" / "baseline.json")
            cfg = PipelineConfig(**fields, retrain_steps=args.retrain_steps, anneal_steps=args.anneal_steps, distill=args.distill,
                                 prune_rounds=args.prune_rounds, centroid_steps=args.centroid_steps, centroid_mode=args.centroid_mode,
                                 lr=args.lr, centroid_lr=args.centroid_lr,
                                 batch_size=args.batch_size, patch_size=args.patch_size, val_every=args.val_every,
                                 val_fraction=args.val_fraction, val_patch=args.val_patch)
            log(f"[{setting}] quality {q}: pipeline in {out}")
            run_pipeline(c, out, cfg, args.data, args.eval_data, eval_limit=args.eval_limit, progress=not args.quiet, log=log)
            per_setting[setting][q] = json.loads((out / "stages.json").read_text())
    controls = train_controls(args, qualities, images) if args.control is not None else {}
    ckpt_bytes = {q: c.stat().st_size for q, c in qualities.items()}
    rows = [r for s, per_q in per_setting.items() for r in family_rows(s, per_q, ckpt_bytes, controls)]
    choice = pick(rows, args.target_ratio, args.max_bd, args.relaxed_bd, reference_key(rows))
    command = reproduce_command(argv)
    out = args.out
    (out / "stages").mkdir(parents=True, exist_ok=True)
    for old in (out / "stages").glob("*.md"):  # tables of settings not in this run would be stale
        old.unlink()
    for s, per_q in per_setting.items():
        for q in per_q:
            shutil.copyfile(args.work / s / f"q{q}" / "stages.md", out / "stages" / f"{s}-q{q}.md")
    kept = shipped_settings(rows, choice, args.target_ratio)
    if kept:  # the headline's files, or the best there is at the target ratio (for the storage comparison)
        (out / "models").mkdir(exist_ok=True)
        for old in (out / "models").glob("*.dcmp"):
            old.unlink()
        for k in kept:
            for q in per_setting[k]:
                shutil.copyfile(args.work / k / f"q{q}" / "final.dcmp", out / "models" / final_name(q, k))
    atomic_write_bytes(out / "headline.csv", csv_text(rows, FIELDS).encode())
    doc = {"rows": rows, "choice": choice, "controls": controls, "command": command, "images": len(images), "eval_data": str(args.eval_data),
           "target_ratio": args.target_ratio, "max_bd": args.max_bd, "relaxed_bd": args.relaxed_bd}
    atomic_write_bytes(out / "headline.json", (json.dumps(evaluation._clean(doc), indent=1) + "\n").encode())
    atomic_write_bytes(out / "headline.md", markdown(rows, per_setting, choice, args, command, kept, controls).encode())
    plot(per_setting, out / "rd_psnr.png", controls)
    log(f"wrote {out / 'headline.md'}")
    return doc


def made_from(final: Path, baseline) -> bool:
    """Whether the deepcomp file ``final`` exists and records ``baseline`` (by SHA-256) as the checkpoint it was made
    from; a file of an earlier headline on other baselines (or one that predates the record) is not."""
    from deepcomp.checkpoints import sha256_file
    from deepcomp.model_file import file_info

    if not final.is_file():
        return False
    try:
        ref = file_info(final).get("reference") or {}
    except DeepCompError:
        return False
    return ref.get("checkpoint_sha256") == sha256_file(baseline)


def run_controls_only(args, argv) -> dict:
    """The controls of a finished headline: each baseline trained on unpruned for as many steps as the retraining
    and centroid fine-tuning, against the final files in ``OUT/models/`` (evaluated here), as a family BD-rate.

    Run with the headline's own options (so the controls are those a full run with ``--control`` trains, in the
    same ``--work`` folder) when the pipelines' work folders are gone but the final files are kept, or beside a
    headline that is still running: the controls train first, and only the comparison needs the final files.
    """
    settings = args.setting or ["prune0.85-bits4"]
    if len(settings) != 1:
        raise DeepCompError("--controls-only compares the final files of one --setting")
    setting = settings[0]
    parse_setting(setting)
    qualities = qualities_of(args.checkpoints)
    images = [str(p) for p in evaluation.image_list(args.eval_data, args.eval_limit)]
    finals = {q: args.out / "models" / final_name(q, setting) for q in qualities}
    steps = args.retrain_steps + args.centroid_steps
    controls = train_controls(args, qualities, images)  # they need no final file: they can train beside the pipelines
    missing = [str(f) for q, f in sorted(finals.items()) if not made_from(f, qualities[q])]
    if missing:
        raise DeepCompError(f"the controls are trained (in {args.work}), but there is no final file {missing[0]} made from "
                            "these baselines to compare them with: run the headline (without --controls-only), then this again")
    rows, means = [], {}
    for q in sorted(qualities):
        out = args.work / "finals" / setting / f"q{q}"
        jpath = out / "final.json"
        doc = evaluation.reusable_results(jpath, finals[q], args.eval_data, len(images))
        if doc is None:
            log(f"[final] q{q}: {finals[q]} on {len(images)} images")
            evaluation.run_one(str(finals[q]), "final", images, str(args.eval_data), str(out), None, None, setting, True, not args.quiet)
            doc = evaluation.read_results(jpath)
        means[q] = doc["mean"]
        rows.append({"quality": q, "file_bytes": finals[q].stat().st_size,
                     **{f"final_{k}": doc["mean"][k] for k in ("bpp", "psnr", "ms_ssim")},
                     **({f"control_{k}": controls[q][k] for k in ("bpp", "psnr", "ms_ssim", "val_loss")} if q in controls else {})})
    both = sorted(controls)
    ctrl, fin = [controls[q] for q in both], [means[q] for q in both]
    summary = {"setting": setting, "steps": steps, "lr": args.lr, "qualities": both,
               "bd_rate_psnr_vs_control": _bd(ctrl, fin, "psnr"), "bd_rate_ms_ssim_vs_control": _bd(ctrl, fin, "ms_ssim"),
               "bd_psnr_vs_control_db": _bd_psnr(ctrl, fin)}
    phases = control_phases(args)
    if len(phases) > 1:
        summary["control_phases"] = [list(ph) for ph in phases]
    command = reproduce_command(argv)
    lines = [f"# The headline's final files against the controls (`{setting}`)", "",
             f"Control: each baseline trained on, unpruned, for the {steps} steps of the pipeline's masked retraining and centroid "
             f"fine-tuning ({control_lr_text(args)}, the baseline's λ, the same crops and batches; training photos only). The final files "
             f"(`models/`) and the controls are coded on `{args.eval_data}` ({len(images)} images, real bitstreams).", "",
             f"**Family ({' '.join(map(str, summary['qualities']))}) against the controls: BD-rate (PSNR) "
             f"{_u(summary['bd_rate_psnr_vs_control'], '+.2f', ' %')}, BD-rate (MS-SSIM) {_u(summary['bd_rate_ms_ssim_vs_control'], '+.2f', ' %')}, "
             f"BD-PSNR {_u(summary['bd_psnr_vs_control_db'], '+.3f', ' dB')}.**", "",
             "| Quality | Final file | Final bpp / PSNR / MS-SSIM | Control bpp / PSNR / MS-SSIM / val loss | Δ vs control |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        ctl = (f"{r['control_bpp']:.4f} / {r['control_psnr']:.2f} dB / {r['control_ms_ssim']:.4f} / {r['control_val_loss']:.4f}"
               if "control_bpp" in r else "n/a")
        delta = (f"{100 * (r['final_bpp'] / r['control_bpp'] - 1):+.1f} % bpp / {r['final_psnr'] - r['control_psnr']:+.2f} dB"
                 if "control_bpp" in r else "n/a")
        lines.append(f"| {r['quality']} | {human_bytes(r['file_bytes'])} | {r['final_bpp']:.4f} / {r['final_psnr']:.2f} dB / "
                     f"{r['final_ms_ssim']:.4f} | {ctl} | {delta} |")
    lines += ["", "Reproduce:", "", f"```sh\n{command}\n```", ""]
    doc = {"summary": summary, "rows": rows, "controls": controls, "command": command}
    atomic_write_bytes(args.out / "controls.json", (json.dumps(evaluation._clean(doc), indent=1) + "\n").encode())
    atomic_write_bytes(args.out / "controls.md", "\n".join(lines).encode())
    log(f"wrote {args.out / 'controls.md'}")
    return doc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run_controls_only(args, argv) if args.controls_only else run(args, argv)
    except DeepCompError as exc:
        print(f"headline: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
