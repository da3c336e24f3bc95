"""Per-part pruning: the encoder, the decoder and the probability model pruned alone and together, with and without retraining.

    bash tools/run.sh python tools/part_pruning.py artifacts/bmshj2018-factorized-q3.pth.tar -o artifacts/parts \\
        [--parts encoder decoder probability all] [--ratios 0.3 0.5 0.7] [--retrain-steps 300] \\
        [--batch-size 8 --patch-size 128] [--data ../shared/data/train] [--eval-data ../shared/data/kodak] \\
        [--limit N] [--threads 1] [--work runs/parts] [--re-evaluate]

1. per part set (``encoder``, ``decoder``, ``probability``, ``all``, or a
   combination such as ``encoder+decoder``) and ratio: magnitude pruning of
   every prunable tensor of the parts to that ratio (``deepcomp.part_pruning``:
   conv weights, and the entropy bottleneck's density matrices and factors;
   never biases, GDN parameters or ``quantiles``) -> ``WORK/models/<set>-<ratio>-pruned.pth.tar``;
2. with ``--retrain-steps N > 0``: N steps of masked retraining of the whole
   network from each pruned model on the baseline's RD loss (training photos
   ``--data``, never the evaluation images; pruned weights held at exactly
   zero) -> ``<set>-<ratio>-retrained.pth.tar``, and the same retraining of
   the unpruned baseline as a control (``control-retrained.pth.tar``; no
   ``--no-control``), which separates the effect of more training from the
   recovery of the pruned weights;
3. the baseline and every model on the evaluation images (Kodak) with real
   bitstreams (``compress()``/``decompress()``), one after the other in this
   process with ``--threads`` torch threads and one untimed warm-up image
   each, and the baseline once more at the end to show how far the speed
   of the machine drifted -> ``OUT/results/<model>.json`` (per image);
4. ``OUT/parts.md`` (the table and the command that made it), ``parts.csv``,
   ``parts.json`` and ``parts.png``.

The models are fp32 CompressAI checkpoints (``{"state_dict", "config"}``,
``update(force=True)`` applied) that record their settings and masks.  A
rerun reuses every model whose recorded settings match and every result of
the same model file on the same images with the same threads; an
interrupted retraining resumes from its last checkpoint (every
``--val-every`` steps).  ``WORK/record.json`` holds the baseline's hash and
the training settings: a rerun with another baseline or other training
settings in the same ``--work`` folder is refused.  ``--re-evaluate`` times
every model again in this run (the models are kept).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deepcomp.errors import DeepCompError  # noqa: E402

FORMAT = "deepcomp-part-pruning/1"
FAMILY = "parts"

#: Columns of parts.csv (and keys of the rows in parts.json).
FIELDS = ("model", "parts", "ratio", "retrained", "retrain_steps", "part_density", "model_density", "images", "encode_s", "decode_s",
          "time_s", "time_vs_base", "bytes_per_image", "bytes_vs_base", "bpp", "psnr", "ssim", "ms_ssim", "d_psnr", "d_ssim",
          "d_ms_ssim", "val_loss", "session", "file")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="the baseline checkpoint")
    p.add_argument("-o", "--out", type=Path, default=ROOT / "artifacts" / "parts", help="tables, plot and per-image results")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "parts", help="the pruned and retrained models (large)")
    p.add_argument("--arch", default=None, help="when the checkpoint does not record it")
    p.add_argument("--quality", type=int, default=None, help="when the checkpoint does not record it")
    p.add_argument("--parts", nargs="+", default=["encoder", "decoder", "probability", "all"],
                   help="part sets: encoder, decoder, probability, all, or combinations like encoder+decoder")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="fraction of each prunable tensor zeroed")
    p.add_argument("--retrain-steps", type=int, default=300, help="masked retraining steps per model (0: pruning only)")
    p.add_argument("--no-control", action="store_true", help="do not retrain the unpruned baseline as a control")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--aux-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--val-every", type=int, default=100, help="validation and resume checkpoint every N steps")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-patch", type=int, default=256)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "train", help="training photos (never Kodak)")
    p.add_argument("--eval-data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    p.add_argument("--limit", type=int, default=None, help="only the first N evaluation images (quick checks)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for everything, the timed evaluation included")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--re-evaluate", action="store_true", help="evaluate (and time) every model again in this run")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


# ---------------------------------------------------------------- settings
def check_args(args) -> None:
    from deepcomp import part_pruning

    if args.retrain_steps < 0:
        raise DeepCompError("--retrain-steps must be >= 0")
    for name in ("batch_size", "patch_size", "val_every", "val_patch", "threads"):
        if getattr(args, name) < 1:
            raise DeepCompError(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise DeepCompError("--limit must be at least 1")
    if not args.lr > 0 or not args.aux_lr > 0:
        raise DeepCompError("learning rates must be positive")
    if not 0.0 < args.val_fraction < 1.0:
        raise DeepCompError("--val-fraction must be in (0, 1)")
    args.ratios = list(dict.fromkeys(part_pruning.check_ratio(r) for r in args.ratios))  # in order, once each
    args.part_sets = list(dict.fromkeys(part_pruning.parse_part_set(spec) for spec in args.parts))


def train_settings(args, base: dict) -> dict:
    """What the retrained models depend on (recorded in WORK/record.json and in every model)."""
    return {"source_sha256": base["sha256"], "arch": base["arch"], "quality": base["quality"], "lmbda": base["lmbda"],
            "retrain_steps": args.retrain_steps, "lr": args.lr, "aux_lr": args.aux_lr, "batch_size": args.batch_size,
            "patch_size": args.patch_size, "val_every": args.val_every, "val_fraction": args.val_fraction, "val_patch": args.val_patch,
            "seed": args.seed, "data": str(Path(args.data).resolve())}


def open_record(work: Path, base: dict, train: dict, log) -> None:
    """Refuse a ``--work`` folder that holds a run of another baseline or with other training settings; else record this one."""
    from deepcomp.checkpoints import atomic_write_bytes, read_json

    path = work / "record.json"
    if path.exists():
        rec = read_json(path, "part pruning record")
        if not isinstance(rec, dict) or rec.get("format") != FORMAT:
            raise DeepCompError(f"{path} is not a part pruning record")
        old = rec.get("train") or {}
        if old.get("source_sha256") != train["source_sha256"]:
            raise DeepCompError(f"{work} holds models of another baseline ({rec.get('checkpoint')}); use a new --work folder")
        diff = [k for k in train if json.dumps(old.get(k)) != json.dumps(train[k])]
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {train[k]!r}" for k in diff)
            raise DeepCompError(f"{work} holds models made with other settings ({changes}); use a new --work folder or the same settings")
        log(f"reusing {work}")
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps({"format": FORMAT, "checkpoint": base["path"], "train": train}, indent=1) + "\n").encode())


# ---------------------------------------------------------------- the models
class Spec:
    """One model of the study: a part set (empty: none), a ratio, retrained or not."""

    def __init__(self, parts: tuple, ratio: float, retrained: bool):
        from deepcomp.part_pruning import part_set_name

        self.parts, self.ratio, self.retrained = tuple(parts), float(ratio), bool(retrained)
        if self.parts:
            self.label = part_set_name(self.parts)
            self.name = f"{self.label}-{self.ratio:g}-{'retrained' if retrained else 'pruned'}"
        else:
            self.label = "none (control)" if retrained else "none (baseline)"
            self.name = "control-retrained" if retrained else "baseline"

    def settings(self, train: dict) -> dict:
        s = {"parts": list(self.parts), "ratio": self.ratio, "source_sha256": train["source_sha256"]}
        if self.retrained:
            s["train"] = train
        return s


def specs(args) -> list[Spec]:
    out = [Spec((), 0.0, False)]
    if args.retrain_steps > 0 and not args.no_control:
        out.append(Spec((), 0.0, True))
    for parts in args.part_sets:
        for r in args.ratios:
            out.append(Spec(parts, r, False))
            if args.retrain_steps > 0:
                out.append(Spec(parts, r, True))
    return out


def _recorded(path: Path) -> dict:
    from deepcomp.checkpoints import checkpoint_config

    return (checkpoint_config(path).get("part_pruning") or {}) if path.is_file() else {}


def _save(path: Path, state, base: dict, settings: dict, done: bool, masks=None, train_state=None) -> None:
    """A CompressAI-loadable checkpoint (``state``: a full state_dict) that records its settings and masks."""
    import torch

    from deepcomp.checkpoints import write_checkpoint

    cfg = {"arch": base["arch"], "quality": base["quality"], "lmbda": base["lmbda"], "part_pruning": {"settings": settings, "done": done}}
    payload = {"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "config": cfg}
    if masks is not None:
        payload["masks"] = {n: torch.as_tensor(m).detach().cpu().to(torch.bool) for n, m in masks.items()}
    if train_state is not None:
        payload["train_state"] = train_state
    write_checkpoint(path, payload)


def _model(base: dict, state):
    from deepcomp import zoo

    model = zoo.build(base["arch"], base["quality"], init_weights=False)
    zoo.assign_weights(model, state, base["path"])
    return model


def make_pruned(spec: Spec, path: Path, base: dict, train: dict, log) -> None:
    from deepcomp import part_pruning

    model = _model(base, base["state"])
    masks = part_pruning.prune_parts(model, spec.parts, spec.ratio)
    model.update(force=True)
    kept = sum(int(m.sum()) for m in masks.values())
    size = sum(m.numel() for m in masks.values())
    log(f"{spec.name}: {len(masks)} tensors, {size - kept:,} of {size:,} weights zeroed")
    _save(path, model.state_dict(), base, spec.settings(train), True, masks=masks)


def make_retrained(spec: Spec, path: Path, source: Path | None, base: dict, train: dict, data, args, progress: bool, log) -> None:
    """Masked retraining of ``source`` (a pruned model; None: the baseline, unmasked), resumable from ``path``."""
    import numpy as np
    import torch

    from deepcomp.checkpoints import load_checkpoint
    from deepcomp.finetune import masked_retrain
    from deepcomp.training import TrainConfig

    settings = spec.settings(train)
    rec = _recorded(path)
    state = None
    if rec.get("settings") == settings and rec.get("done") is False:
        ck = load_checkpoint(path)
        model, masks, state = _model(base, ck["state_dict"]), ck.get("masks") or {}, dict(ck.get("train_state") or {})
        log(f"{spec.name}: resuming at step {state.get('step', 0)} of {args.retrain_steps}")
    elif source is not None:
        ck = load_checkpoint(source)
        model, masks = _model(base, ck["state_dict"]), ck["masks"]
        log(f"{spec.name}: {args.retrain_steps} steps of masked retraining from {source.name}")
    else:
        model, masks = _model(base, base["state"]), {}
        log(f"{spec.name}: {args.retrain_steps} steps of retraining of the unpruned baseline (control)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    cfg = TrainConfig(arch=base["arch"], quality=base["quality"], lmbda=base["lmbda"], steps=args.retrain_steps, batch_size=args.batch_size,
                      patch_size=args.patch_size, lr=args.lr, aux_lr=args.aux_lr, val_every=args.val_every, val_fraction=args.val_fraction,
                      seed=args.seed)
    # every retrained model sees the same batches
    data.sampler.rng = np.random.default_rng([args.seed, (state or {}).get("step", 0)])

    def save(payload: dict) -> None:
        _save(path, payload["state_dict"], base, settings, False, masks=payload["masks"], train_state=payload["train_state"])

    st = masked_retrain(model, masks, cfg, data, state=state, on_checkpoint=save, checkpoint_every=args.val_every,
                              progress=progress, log=log)
    model.cpu()
    model.update(force=True)
    final = {k: v for k, v in st.items() if k not in ("optimizer", "aux_optimizer")}
    _save(path, model.state_dict(), base, settings, True, masks=masks, train_state=final)


# ---------------------------------------------------------------- evaluation
def eval_settings(args, images) -> dict:
    return {"data": str(args.eval_data), "images": [Path(p).name for p in images], "threads": args.threads, "channels_last": True,
            "warm_up": 1}


def evaluate(name: str, path: Path, images, settings: dict, results: Path, base: dict, threads: int, session: str, force: bool,
             progress: bool) -> dict:
    """The results of one model on the images (reused when the same file was evaluated with the same settings)."""
    from deepcomp import evaluation
    from deepcomp.checkpoints import sha256_file

    sha = sha256_file(path)
    key = {"model_sha256": sha, "eval": settings}
    jpath = results / f"{name}.json"
    if jpath.exists() and not force:
        try:
            doc = evaluation.read_results(jpath)
        except DeepCompError:
            doc = None
        if doc is not None and doc.get("part_pruning") == key:
            return doc
    with evaluation.torch_threads(threads):
        model, info = evaluation.open_model(path, base["arch"], base["quality"])
        load0 = _load()
        evaluation.evaluate_model(model, images[:1], progress=False)  # untimed warm-up
        per_image = evaluation.evaluate_model(model, images, progress=progress, desc=name)
        load1 = _load()
    doc = evaluation.results_document(info, per_image, settings["data"], FAMILY, threads=threads, channels_last=True)
    doc["part_pruning"] = key
    doc["evaluated"] = {"session": session, "at": _now(), "load_1min": [load0, load1]}
    evaluation.write_results(doc, results, name)
    return evaluation.read_results(jpath)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------- the run
def read_baseline(args) -> dict:
    from deepcomp import zoo
    from deepcomp.checkpoints import checkpoint_config, read_state_dict, sha256_file

    path = Path(args.checkpoint)
    state = read_state_dict(path)
    cfg = checkpoint_config(path)
    arch, quality = cfg.get("arch"), cfg.get("quality")
    for what, given, recorded in (("architecture", args.arch, arch), ("quality", args.quality, quality)):
        if given is not None and recorded is not None and given != recorded:
            raise DeepCompError(f"{what}: {path} says {recorded!r} but {given!r} was given")
    arch, quality = arch or args.arch, quality or args.quality
    if arch is None or quality is None:
        raise DeepCompError(f"{path} does not say which model it holds: pass --arch and --quality")
    if cfg.get("widths"):
        raise DeepCompError(f"{path} is channel-pruned; per-part pruning starts from a full baseline")
    lmbda = zoo.config_lambda(cfg, quality)
    model = zoo.model_from_state_dict(arch, quality, state, str(path))  # fails clearly if it does not fit
    return {"path": str(path), "sha256": sha256_file(path), "arch": arch, "quality": int(quality), "lmbda": lmbda, "state": state,
            "params": {n: p.numel() for n, p in model.named_parameters()}}


def run(args: argparse.Namespace, log=print) -> dict:
    import torch

    from deepcomp import evaluation, part_pruning
    from deepcomp.finetune import TrainData

    check_args(args)
    torch.set_num_threads(args.threads)
    progress = not args.quiet
    images = evaluation.image_list(args.eval_data, args.limit)  # fails before any work if the images are missing
    base = read_baseline(args)
    for parts in args.part_sets:  # every part set has something to prune in this architecture
        if not part_pruning.part_tensors(base["state"], parts):
            raise DeepCompError(f"{base['arch']} has no prunable tensors in {part_pruning.part_set_name(parts)}")
    data = TrainData.from_folder(args.data, args.patch_size, args.val_fraction, args.val_patch, args.seed) if args.retrain_steps > 0 else None
    train = train_settings(args, base)
    work, out = Path(args.work), Path(args.out)
    open_record(work, base, train, log)
    (work / "models").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    # 1-2. the models
    todo = specs(args)
    paths: dict[str, Path] = {"baseline": Path(args.checkpoint)}
    made = [s for s in todo if s.name != "baseline"]
    for i, spec in enumerate(made, 1):
        path = work / "models" / f"{spec.name}.pth.tar"
        paths[spec.name] = path
        rec = _recorded(path)
        if rec.get("settings") == spec.settings(train) and rec.get("done"):
            continue
        log(f"[{i}/{len(made)}] {spec.name}")
        if not spec.retrained:
            make_pruned(spec, path, base, train, log)
        else:
            source = paths[Spec(spec.parts, spec.ratio, False).name] if spec.parts else None
            make_retrained(spec, path, source, base, train, data, args, progress, log)

    # 3. evaluation, one model after the other
    from tqdm import tqdm

    settings = eval_settings(args, images)
    session = _now()
    docs = {}
    bar = tqdm(todo, desc="evaluate", unit="model", disable=not progress, dynamic_ncols=True)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        docs[spec.name] = evaluate(spec.name, paths[spec.name], images, settings, out / "results", base, args.threads, session,
                                   args.re_evaluate, progress)
    bar.close()
    # the baseline once more, last: how far the machine's speed drifted while the models were timed
    fresh = any((d.get("evaluated") or {}).get("session") == session for d in docs.values())
    end = evaluate("baseline-end", paths["baseline"], images, settings, out / "results", base, args.threads, session, fresh, progress)

    # 4. the table
    rows = table_rows(todo, docs, paths, base)
    check = {"time_s": sum(r["encode_s"] + r["decode_s"] for r in end["per_image"]), "session": (end.get("evaluated") or {}).get("session")}
    write_outputs(rows, out, args, base, settings, check)
    return {"rows": rows, "out": str(out)}


# ---------------------------------------------------------------- the table
def table_rows(todo, docs, paths, base) -> list[dict]:
    from deepcomp import part_pruning
    from deepcomp.checkpoints import read_state_dict
    from deepcomp.training import read_training_checkpoint

    rows = []
    for spec in todo:
        doc = docs[spec.name]
        per = doc["per_image"]
        n = len(per)
        state = base["state"] if spec.name == "baseline" else read_state_dict(paths[spec.name])
        names = part_pruning.part_tensors(state, spec.parts or part_pruning.PARTS)
        val = None
        if spec.retrained:
            hist = (read_training_checkpoint(paths[spec.name]).get("train_state") or {}).get("history") or []
            val = hist[-1].get("val_loss") if hist else None
        m = doc["mean"]
        enc, dec = sum(r["encode_s"] for r in per), sum(r["decode_s"] for r in per)
        rows.append({
            "model": spec.name, "parts": spec.label, "ratio": spec.ratio, "retrained": spec.retrained,
            "retrain_steps": _steps(paths[spec.name]) if spec.retrained else 0,
            "part_density": part_pruning.density(state, names), "model_density": doc["model"].get("density"), "images": n,
            "encode_s": enc, "decode_s": dec, "time_s": enc + dec, "bytes_per_image": sum(r["bytes"] for r in per) / n,
            "bpp": m.get("bpp"), "psnr": m.get("psnr"), "ssim": m.get("ssim"), "ms_ssim": m.get("ms_ssim"), "val_loss": val,
            "session": (doc.get("evaluated") or {}).get("session"), "load_1min": (doc.get("evaluated") or {}).get("load_1min"),
            "file": str(paths[spec.name]),
        })
    b = rows[0]
    for r in rows:
        r["time_vs_base"] = r["time_s"] / b["time_s"] if b["time_s"] else math.nan
        r["bytes_vs_base"] = r["bytes_per_image"] / b["bytes_per_image"] - 1 if b["bytes_per_image"] else math.nan
        for k in ("psnr", "ssim", "ms_ssim"):
            r[f"d_{k}"] = _sub(r[k], b[k])
    return rows


def _steps(path: Path) -> int | None:
    return ((_recorded(path).get("settings") or {}).get("train") or {}).get("retrain_steps")


def _sub(a, b):
    return a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _f(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def describe_parts(base: dict) -> list[str]:
    """One line per part: its modules and prunable tensors in this architecture."""
    from deepcomp import part_pruning, zoo

    state = base["state"]
    lines = []
    for part in part_pruning.PARTS:
        names = part_pruning.part_tensors(state, (part,))
        modules = [m for m in zoo.MODEL_PARTS[part] if any(k.split(".", 1)[0] == m for k in state)]
        weights = sum(state[n].numel() for n in names)
        total = sum(n for k, n in base["params"].items() if zoo.part_of(k) == part)
        lines.append(f"- **{part}**: `{'`, `'.join(modules)}`; {len(names)} prunable tensors, {weights:,} of the part's {total:,} parameters")
    return lines


def reproduce_command(args) -> str:
    return "bash tools/run.sh python tools/part_pruning.py " + " ".join(shlex.quote(str(a)) for a in args.argv)


def markdown(rows, args, base, settings, check: dict) -> str:
    head = ["Part", "Ratio", "Retrained", "Part density", "Encode (s)", "Decode (s)", "Time vs base", "Bytes/image", "Δ bytes", "bpp",
            "PSNR (dB)", "Δ PSNR", "SSIM", "Δ SSIM", "MS-SSIM", "Δ MS-SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" + "---|" + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [r["parts"], _f(r["ratio"], ".2f") if r["ratio"] else "–", "yes" if r["retrained"] else "no", _f(r["part_density"], ".4f"),
                 _f(r["encode_s"], ".2f"), _f(r["decode_s"], ".2f"), _f(r["time_vs_base"], ".3f") + "×", f"{r['bytes_per_image']:,.0f}",
                 _f(100 * r["bytes_vs_base"], "+.1f") + " %", _f(r["bpp"], ".4f"), _f(r["psnr"], ".2f"), _f(r["d_psnr"], "+.2f"),
                 _f(r["ssim"], ".4f"), _f(r["d_ssim"], "+.4f"), _f(r["ms_ssim"], ".4f"), _f(r["d_ms_ssim"], "+.4f")]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(settings["images"])
    sessions = sorted({r["session"] for r in rows if r["session"]})
    loads = [x for r in rows for x in (r.get("load_1min") or []) if x is not None]
    retrain = (f"*Retrained*: {args.retrain_steps} steps of masked retraining of the whole network from the pruned model (Adam lr {args.lr:g}, "
               f"batch {args.batch_size} of {args.patch_size}×{args.patch_size} crops of `{args.data}`, RD loss with λ = {base['lmbda']:g}, "
               "auxiliary loss on the quantiles; the pruned weights held at exactly zero). "
               + ("*none (control)*: the unpruned baseline retrained the same way, for the effect of the extra training alone."
                  if any(r["model"] == "control-retrained" for r in rows) else "")) if args.retrain_steps > 0 else "No retraining (`--retrain-steps 0`)."
    cmd = reproduce_command(args)
    note = ("**Times.** Unstructured pruning zeroes weights but leaves every tensor dense: PyTorch's convolutions multiply the zeros "
            "like any other weight, so no speed-up is expected, and none is claimed. The times are measured all the same: the sums over "
            f"the {n} images of the `compress()` (encode) and `decompress()` (decode) calls, entropy coding included, with "
            f"{settings['threads']} torch thread(s), the models one after the other, each after one untimed warm-up image. "
            "*Time vs base* is (encode + decode) against the unpruned baseline; differences of a few per cent are run-to-run noise.")
    t0 = rows[0]["time_s"]
    if check.get("time_s") and t0:
        note += (f" The baseline, timed again after all the models: {check['time_s']:.2f} s against {t0:.2f} s first "
                 f"({check['time_s'] / t0 - 1:+.1%}), a measure of the drift.")
    if loads:
        note += f" 1-minute load average of the machine during the evaluations: {min(loads):.2f}–{max(loads):.2f}."
    if len(sessions) > 1:
        note += (f" **The evaluations come from {len(sessions)} runs ({', '.join(sessions)}); times compare only within a run: "
                 "rerun with `--re-evaluate` to time every model in one run.**")
    return "\n".join([
        "# Per-part pruning",
        "",
        f"Baseline `{base['path']}` ({base['arch']}, quality {base['quality']}, λ = {base['lmbda']:g}). "
        "*Ratio*: the fraction of every prunable tensor of the part set zeroed by magnitude (per tensor): conv weights, and in the "
        "entropy bottleneck the stored density matrices and factors; never biases, GDN parameters or the quantiles. "
        "*Part density*: non-zero fraction of those tensors (for the baseline and the control: of all parts). " + retrain,
        "",
        f"Evaluation: `{settings['data']}`" + (f" (first {n} images)" if args.limit else f" ({n} images)") + ", real bitstreams. "
        "*Bytes/image*: mean over the images of the bytes of all the strings `compress()` returns; bpp likewise per pixel. "
        "PSNR on 8-bit RGB, SSIM and MS-SSIM (pytorch-msssim, data range 1) as `deepcomp evaluate`; Δ: against the baseline.",
        "",
        "\n".join(lines),
        "",
        note,
        "",
        "The parts:",
        "",
        "\n".join(describe_parts(base)),
        "",
        "![quality and size against the pruning ratio, per part](parts.png)",
        "",
        f"Command: `{cmd}`",
        "",
    ])


def plot(rows, path: Path) -> None:
    from deepcomp.report import _pyplot

    plt = _pyplot()

    from deepcomp.checkpoints import atomic_write_bytes

    panels = (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"), ("bytes_per_image", "bytes per image"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.6))
    sets = [s for s in dict.fromkeys(r["parts"] for r in rows if r["ratio"])]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    refs = {r["model"]: r for r in rows if not r["ratio"]}
    def ok(v):
        return v is not None and math.isfinite(v)

    for ax, (key, label) in zip(axes, panels):
        for ref, style in (("baseline", dict(color="black", label="baseline")),
                           ("control-retrained", dict(color="grey", ls=":", label="baseline retrained (control)"))):
            v = refs.get(ref, {}).get(key)
            if ok(v):
                ax.axhline(v, lw=1, **style)
        for i, s in enumerate(sets):
            for retrained, ls, marker in ((False, "--", "o"), (True, "-", "s")):
                pts = sorted((r["ratio"], r[key]) for r in rows if r["parts"] == s and r["retrained"] == retrained and r["ratio"] and ok(r[key]))
                start = refs.get("control-retrained" if retrained and "control-retrained" in refs else "baseline", {}).get(key)
                if pts and ok(start):  # each curve starts at its unpruned reference
                    pts = [(0.0, start)] + pts
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker=marker, markevery=list(range(1 if ok(start) else 0, len(pts))),
                            color=colors[i % len(colors)], label=f"{s} ({'retrained' if retrained else 'pruned only'})")
        ax.set_xlabel("pruning ratio of the part")
        ax.set_ylabel(label)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle("Per-part magnitude pruning (dashed: pruned only, solid: retrained; ratio 0: the unpruned reference)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_outputs(rows, out: Path, args, base, settings, check: dict) -> None:
    from deepcomp import evaluation
    from deepcomp.checkpoints import atomic_write_bytes
    from deepcomp.report import csv_text

    plot(rows, out / "parts.png")
    atomic_write_bytes(out / "parts.csv", csv_text(rows, FIELDS).encode())
    clean = evaluation._clean(rows)
    doc = {"format": FORMAT, "command": reproduce_command(args),
           "checkpoint": {"path": base["path"], "sha256": base["sha256"]}, "arch": base["arch"], "quality": base["quality"],
           "lmbda": base["lmbda"], "train": train_settings(args, base), "eval": settings, "baseline_timed_last": check, "rows": clean}
    atomic_write_bytes(out / "parts.json", (json.dumps(doc, indent=1) + "\n").encode())
    atomic_write_bytes(out / "parts.md", markdown(rows, args, base, settings, check).encode())


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        res = run(args)
    except DeepCompError as exc:
        print(f"part_pruning: error: {exc}", file=sys.stderr)
        return 2
    print((Path(res["out"]) / "parts.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
