"""Structured (channel) pruning of a baseline, end to end: sensitivity, allocation, fine-tuning, sharing, Kodak.

    bash tools/run.sh python tools/structured_pruning.py artifacts/bmshj2018-factorized-q3.pth.tar -o artifacts/structured \\
        [--targets 0.25 0.5 0.75] [--cost macs] [--uniform] [--finetune-steps 2000] [--bits 8] [--threads 1]

1. the RD sensitivity of every channel group (validation crops of the
   training photos, ``--data``; never Kodak) -> ``sensitivity.json/.png``;
2. per target (fraction of the MACs per pixel, or of the parameters,
   removed): per-group ratios from the sensitivity (``alloc-*``; with
   ``--uniform`` also one ratio for every group at the same cost,
   ``uniform-*``), channel pruning, ``--finetune-steps`` of RD fine-tuning
   -> ``models/<name>.pth.tar``;
3. every model and the baseline through ``deepcomp compress`` (k-means
   sharing at ``--bits``, or ``--policy``; Huffman) -> ``models/<name>.dcmp``;
4. all of them on the evaluation images (``--eval-data``, Kodak) with real
   bitstreams, one after the other in this process with ``--threads``
   torch threads, so that the encode/decode times compare
   -> ``results/*.json``;
5. ``structured.md``, ``structured.csv``, ``structured.json`` and
   ``structured.png``: per model the parameters, MACs per pixel, file sizes
   (.pth.tar and .dcmp), bpp, PSNR, MS-SSIM, CPU encode/decode time and
   speed-up against the unpruned model in the same storage.

A rerun in the same folder reuses what is there: the sensitivity (same
grid), each pruned checkpoint whose recorded settings match, each .dcmp
newer than its checkpoint, each result newer than its model.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deepcomp.errors import DeepCompError  # noqa: E402

FIELDS = ("model", "family", "storage", "target", "removed_macs", "removed_params", "params", "kmacs_encode", "kmacs_decode",
          "pth_bytes", "dcmp_bytes", "file_bytes", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s", "encode_speedup", "decode_speedup",
          "val_loss_pruned", "val_loss_finetuned", "predicted_delta", "widths")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="the baseline checkpoint")
    p.add_argument("-o", "--out", type=Path, default=ROOT / "artifacts" / "structured")
    p.add_argument("--arch", default=None)
    p.add_argument("--quality", type=int, default=None)
    p.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="fractions of the cost to remove")
    p.add_argument("--cost", choices=("macs", "params"), default="macs")
    p.add_argument("--uniform", action="store_true", help="also one ratio for every group at each target")
    p.add_argument("--control", action="store_true",
                   help="also fine-tune the unpruned baseline the same way (the 'control' row: what the extra training alone gives)")
    p.add_argument("--groups", nargs="+", default=None, help="only these channel groups (default: all)")
    p.add_argument("--importance", choices=("activation", "l1", "l1-product"), default="activation")
    p.add_argument("--sens-ratios", type=float, nargs="+", default=[0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875])
    p.add_argument("--finetune-steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-patch", type=int, default=256)
    p.add_argument("--bits", type=int, default=8, help="k-means bit width of the conv weights in the .dcmp files")
    p.add_argument("--policy", type=Path, default=None, help="a policy file for the .dcmp files instead of --bits")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "train", help="training photos (never Kodak)")
    p.add_argument("--eval-data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    p.add_argument("--limit", type=int, default=None, help="only the first N evaluation images (quick checks)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for everything, the timed evaluation included")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _name(kind: str, cost: str, target: float) -> str:
    return f"{kind}-{cost}{target:.2f}"


def _settings(args, kind: str, target: float) -> dict:
    """What a pruned checkpoint depends on: a rerun with other settings rebuilds it."""
    return {"kind": kind, "target": target, "cost": args.cost, "groups": args.groups, "importance": args.importance,
            "sens_ratios": sorted(args.sens_ratios), "finetune_steps": args.finetune_steps, "lr": args.lr, "batch_size": args.batch_size,
            "patch_size": args.patch_size, "seed": args.seed, "source": str(args.checkpoint)}


def _recorded(path: Path) -> dict:
    from deepcomp.checkpoints import checkpoint_config

    return (checkpoint_config(path).get("channel_pruning") or {}) if path.is_file() else {}


def _newer(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.stat().st_mtime >= b.stat().st_mtime


def run(args: argparse.Namespace, log=print) -> dict:
    import torch

    from deepcomp import evaluation, structured, zoo
    from deepcomp.finetune import TrainData
    from deepcomp.model_file import compress_checkpoint
    from deepcomp.policy import Policy, read_policy

    torch.set_num_threads(args.threads)
    for t in args.targets:
        if not 0.0 < t < 1.0:
            raise DeepCompError(f"--targets must be fractions in (0, 1), got {t}")
    policy = read_policy(args.policy) if args.policy else Policy().with_weight_rule(bits=args.bits)
    images = evaluation.image_list(args.eval_data, args.limit)  # fails before any work if the images are missing
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    source = structured.load_source(args.checkpoint, args.arch, args.quality)
    progress = not args.quiet
    data = TrainData.from_folder(args.data, args.patch_size, args.val_fraction, args.val_patch, args.seed) if args.finetune_steps > 0 \
        else structured.validation_data(args.data, args.val_fraction, args.val_patch)
    groups = source.groups
    scores = structured.importance_scores(source.model, groups, args.importance, data.val_crops)

    # 1. sensitivity
    sens_path = out / "sensitivity.json"
    table = None
    if sens_path.is_file():
        table = structured.ChannelSensitivity.load(sens_path)
        if sorted(table.ratios) != sorted(round(r, 6) for r in args.sens_ratios) or table.importance != args.importance \
                or table.meta.get("source") != source.path:
            log(f"{sens_path} was measured with other settings: measuring again")
            table = None
    table = structured.analyze_channels(source, data.val_crops, args.sens_ratios, args.importance, scores, table=table,
                                        on_update=lambda t: t.save(sens_path), progress=progress, only=args.groups)
    structured.plot_channel_sensitivity(table, out / "sensitivity.png")

    # 2. allocation, pruning, fine-tuning
    weights = structured.cost_weights(source.arch, source.quality, args.cost)
    macs = zoo.mac_weights(source.arch, source.quality)
    shapes = source.shapes()
    pruned = []
    for target in args.targets:
        for kind in ("alloc", "uniform") if args.uniform else ("alloc",):
            name = _name(kind, args.cost, target)
            path = out / "models" / f"{name}.pth.tar"
            settings = _settings(args, kind, target)
            if _recorded(path).get("settings") == settings:
                log(f"{path.name}: done before")
            else:
                if kind == "alloc":
                    alloc = structured.allocate_channels(table, shapes, groups, weights, target_removed=target, kind=args.cost, only=args.groups)
                else:
                    alloc = structured.uniform_allocation(shapes, groups, weights, target, kind=args.cost, only=args.groups)
                log(f"{name}: {alloc.removed:.1%} of the {args.cost} removed; ratios "
                    + ", ".join(f"{g} {r:.3g}" for g, r in alloc.ratios.items() if r > 0))
                structured.make_pruned(source, alloc.ratios, path, scores, args.importance, data, args.finetune_steps, args.lr,
                                       args.batch_size, args.patch_size, args.val_every, args.seed,
                                       record={"settings": settings, "allocation": alloc.to_json()}, macs=macs, progress=progress, log=log)
            pruned.append((name, kind, target, path))

    if args.control and args.finetune_steps > 0:  # no channel removed, fine-tuned like the others
        path = out / "models" / "control.pth.tar"
        settings = _settings(args, "control", 0.0)
        if _recorded(path).get("settings") == settings:
            log(f"{path.name}: done before")
        else:
            log(f"control: the unpruned baseline, fine-tuned for {args.finetune_steps} steps like the pruned models")
            structured.make_pruned(source, {}, path, scores, args.importance, data, args.finetune_steps, args.lr, args.batch_size,
                                   args.patch_size, args.val_every, args.seed, record={"settings": settings}, macs=macs,
                                   progress=progress, log=log)
        pruned.insert(0, ("control", "control", None, path))

    # 3. sharing + Huffman
    models = [("baseline", "baseline", None, Path(args.checkpoint))] + pruned
    files = []  # (name, family, target, checkpoint, file evaluated, storage)
    for name, kind, target, ckpt in models:
        dcmp = out / "models" / f"{name}.dcmp"
        if not _newer(dcmp, ckpt):
            size = compress_checkpoint(ckpt, dcmp, policy, source.arch, source.quality)
            log(f"{dcmp.name}: {size:,} bytes ({ckpt.stat().st_size / size:.1f}x smaller than {ckpt.name})")
        files.append((name, kind, target, ckpt, ckpt, "pth"))
        files.append((name, kind, target, ckpt, dcmp, "dcmp"))

    # 4. evaluation (sequential, same threads: the times compare)
    results = {}
    for name, kind, target, ckpt, path, storage in files:
        jpath = out / "results" / f"{evaluation.output_stems([path])[0]}.json"
        if not _newer(jpath, path) or _images(jpath) != len(images):
            family = kind if storage == "pth" else f"{kind}+share"
            evaluate_timed(path, images, args.eval_data, jpath, source.arch, source.quality, family, args.threads, progress)
        results[(name, storage)] = evaluation.read_results(jpath)

    # 5. the table
    rows = table_rows(files, results, macs)
    write_outputs(rows, out, args, table)
    return {"rows": rows, "out": str(out)}


def evaluate_timed(path: Path, images, data: Path, jpath: Path, arch: str, quality: int, family: str, threads: int, progress: bool) -> None:
    """``deepcomp evaluate`` of one model, after one untimed warm-up image (first-call overheads stay out of the times)."""
    from deepcomp import evaluation

    with evaluation.torch_threads(threads):
        model, info = evaluation.open_model(path, arch, quality)
        evaluation.evaluate_model(model, images[:1], progress=False)
        per_image = evaluation.evaluate_model(model, images, progress=progress, desc=path.name)
    doc = evaluation.results_document(info, per_image, data, family, threads=threads, channels_last=True)
    doc["warm_up"] = str(images[0])
    evaluation.write_results(doc, jpath.parent, jpath.stem)


def _images(jpath: Path) -> int | None:
    """The number of images a saved result covers."""
    try:
        return json.loads(jpath.read_text())["mean"]["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def table_rows(files, results, macs) -> list[dict]:
    from deepcomp import channel_pruning as cp
    from deepcomp import zoo
    from deepcomp.checkpoints import checkpoint_config, read_state_dict

    rows = []
    for name, kind, target, ckpt, path, storage in files:
        doc = results[(name, storage)]
        m, info = doc["mean"], doc["model"]
        shapes = cp.shapes_of(zoo.strip_derived(read_state_dict(ckpt)))
        rec = checkpoint_config(ckpt).get("channel_pruning") or {}
        val = rec.get("val") or {}
        delta = (rec.get("allocation") or {}).get("delta")
        rows.append({
            "model": name, "family": kind, "storage": storage, "target": target, "params": info["params"],
            "kmacs_encode": cp.cost(shapes, macs["encode"]) / 1e3, "kmacs_decode": cp.cost(shapes, macs["decode"]) / 1e3,
            "pth_bytes": ckpt.stat().st_size, "file_bytes": info["file_bytes"],
            "bpp": m["bpp"], "psnr": m["psnr"], "ms_ssim": m["ms_ssim"], "encode_s": m["encode_s"], "decode_s": m["decode_s"],
            "val_loss_pruned": (val.get("pruned") or {}).get("loss"), "val_loss_finetuned": (val.get("finetuned") or {}).get("loss"),
            "predicted_delta": delta if isinstance(delta, (int, float)) and math.isfinite(delta) else None,
            "widths": json.dumps(rec.get("widths")) if rec.get("widths") else "",
        })
    base = {r["storage"]: r for r in rows if r["model"] == "baseline"}
    dcmp_bytes = {r["model"]: r["file_bytes"] for r in rows if r["storage"] == "dcmp"}
    for r in rows:
        b = base[r["storage"]]
        r["removed_macs"] = 1 - (r["kmacs_encode"] + r["kmacs_decode"]) / (b["kmacs_encode"] + b["kmacs_decode"])
        r["removed_params"] = 1 - r["params"] / b["params"]
        r["encode_speedup"] = b["encode_s"] / r["encode_s"] if r["encode_s"] else math.nan
        r["decode_speedup"] = b["decode_s"] / r["decode_s"] if r["decode_s"] else math.nan
        r["dcmp_bytes"] = dcmp_bytes.get(r["model"])
    return rows


def _f(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def markdown(rows, args, table) -> str:
    from deepcomp.report import human_bytes

    head = ["Model", "Storage", "MACs removed", "Params", "kMAC/px enc", "kMAC/px dec", ".pth.tar", ".dcmp", "bpp", "PSNR (dB)",
            "MS-SSIM", "Encode (s)", "Decode (s)", "Enc. speed-up", "Dec. speed-up", "Val loss pruned", "Val loss fine-tuned"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["model"], r["storage"], _f(r["removed_macs"], ".1%"), f"{r['params']:,}", _f(r["kmacs_encode"], ".1f"),
                 _f(r["kmacs_decode"], ".1f"), human_bytes(r["pth_bytes"]), human_bytes(r["dcmp_bytes"]) if r["dcmp_bytes"] else "–",
                 _f(r["bpp"], ".4f"), _f(r["psnr"], ".2f"), _f(r["ms_ssim"], ".4f"), _f(r["encode_s"], ".3f"), _f(r["decode_s"], ".3f"),
                 _f(r["encode_speedup"], ".2f"), _f(r["decode_speedup"], ".2f"), _f(r["val_loss_pruned"], ".4f"), _f(r["val_loss_finetuned"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    widths = [f"- `{r['model']}`: {r['widths']}" for r in rows if r["storage"] == "pth" and r["widths"]]
    cmd = "bash tools/run.sh python tools/structured_pruning.py " + " ".join(shlex.quote(str(a)) for a in args.argv)
    return "\n".join([
        "# Structured (channel) pruning",
        "",
        f"Baseline `{args.checkpoint}`; channel importance `{args.importance}`; cost `{args.cost}`; {args.finetune_steps} fine-tuning steps "
        f"(lr {args.lr:g}, batch {args.batch_size}x{args.patch_size}px); .dcmp: " + (f"policy `{args.policy}`" if args.policy else f"{args.bits}-bit k-means sharing") + ".",
        f"Evaluation: `{args.eval_data}`" + (f" (first {args.limit} images)" if args.limit else "") + f", real bitstreams, {args.threads} torch thread(s), "
        "models one after the other; speed-ups against the unpruned model in the same storage. "
        f"Validation RD loss on crops of the training photos (base {table.base['loss']:.4f}).",
        "",
        "\n".join(lines),
        "",
        "Channels per group:",
        "",
        "\n".join(widths),
        "",
        f"Command: `{cmd}`",
        "",
    ])


def plot(rows, path: Path) -> None:
    from deepcomp.report import _pyplot

    plt = _pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for storage, marker in (("pth", "o"), ("dcmp", "s")):
        for fam in sorted({r["family"] for r in rows}):
            rs = [r for r in rows if r["family"] == fam and r["storage"] == storage]
            if not rs:
                continue
            lab = f"{fam} ({storage})"
            a1.plot([r["bpp"] for r in rs], [r["psnr"] for r in rs], marker=marker, ls="", label=lab)
            a2.plot([r["kmacs_decode"] for r in rs], [r["decode_s"] for r in rs], marker=marker, ls="", label=lab)
            for r in rs:
                a1.annotate(r["model"], (r["bpp"], r["psnr"]), fontsize=6)
    a1.set_xlabel("bpp")
    a1.set_ylabel("PSNR (dB)")
    a1.set_title("rate-distortion")
    a2.set_xlabel("decoder kMAC / pixel")
    a2.set_ylabel("decode time per image (s)")
    a2.set_title("decoder cost against measured CPU time")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows, out: Path, args, table) -> None:
    from deepcomp import evaluation
    from deepcomp.checkpoints import atomic_write_bytes
    from deepcomp.report import csv_text

    atomic_write_bytes(out / "structured.md", markdown(rows, args, table).encode())
    atomic_write_bytes(out / "structured.csv", csv_text(rows, FIELDS).encode())
    clean = evaluation._clean(rows)
    atomic_write_bytes(out / "structured.json", (json.dumps({"rows": clean, "args": {k: str(v) if isinstance(v, Path) else v
                                                                                      for k, v in vars(args).items()}}, indent=1) + "\n").encode())
    plot(rows, out / "structured.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        res = run(args)
    except DeepCompError as exc:
        print(f"structured_pruning: error: {exc}", file=sys.stderr)
        return 2
    print((Path(res["out"]) / "structured.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
