"""The ``deepcomp`` command: argument parsing, progress and one-line errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DeepCompError

DEFAULT_TRAIN_DATA = Path("../shared/data/train")


def _number(text: str, cast: type, zero_ok: bool):
    """``text`` as an int or float that is positive (or, with ``zero_ok``, >= 0), else an argparse error."""
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if cast is int else 'a number'}: {text!r}") from None
    if zero_ok and not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    if not zero_ok and not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def _positive_int(text: str) -> int:
    return _number(text, int, zero_ok=False)


def _positive_float(text: str) -> float:
    return _number(text, float, zero_ok=False)


def _non_negative_int(text: str) -> int:
    return _number(text, int, zero_ok=True)


def _non_negative_float(text: str) -> float:
    return _number(text, float, zero_ok=True)


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch, quality=args.quality, lmbda=args.lmbda, steps=args.steps,
        batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr if args.lr is not None else TrainConfig.lr,
        val_every=args.val_every, seed=args.seed, threads=args.threads, scratch_lr=args.scratch_lr, precision=args.precision,
        compile=args.compile, lr_patience=args.lr_patience if args.lr_patience is not None else TrainConfig.lr_patience,
    )
    if args.scratch_lr is not None and not args.init_matching:
        raise DeepCompError("--scratch-lr needs --init-matching (it sets the learning rate of the modules that start from scratch)")
    if args.init is not None and args.resume is not None:
        raise DeepCompError("give --init or --resume, not both")
    if args.init_matching and args.init is None:
        raise DeepCompError("--init-matching needs --init")
    train(cfg, args.data, args.out, init=args.init, resume=args.resume, init_matching=args.init_matching, progress=not args.quiet,
          time_limit=args.minutes * 60 if args.minutes is not None else None, override_lr=args.lr is not None)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .training import export_baseline

    payload = export_baseline(args.checkpoint, args.out)
    print(f"wrote {args.out}: step {payload['train_state'].get('step')}, update(force=True) applied")
    return 0


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1): {text}")
    return v


def _bits(text: str) -> int:
    v = _positive_int(text)
    if v > 16:
        raise argparse.ArgumentTypeError(f"bit width must be 1..16: {text}")
    return v


def _tqdm_progress(desc: str, quiet: bool):
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit="tensor", disable=quiet, dynamic_ncols=True, leave=False)


def cmd_compress(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .model_file import compress_checkpoint
    from .policy import Policy, read_policy

    from .checkpoints import check_output_path

    check_output_path(args.out)
    policy = read_policy(args.policy) if args.policy else Policy()
    policy = policy.with_weight_rule(prune=args.prune, bits=args.bits, granularity=args.granularity)
    if args.global_prune:
        if args.prune is None:
            raise DeepCompError("--global-prune needs --prune")
        policy = replace(policy, global_prune=args.prune)
    if args.raw_storage:
        policy = policy.with_raw_storage(args.raw_storage)
    if args.quality is not None and args.arch is None:
        raise DeepCompError("--quality needs --arch")
    size = compress_checkpoint(args.checkpoint, args.out, policy, args.arch, args.quality, progress=_tqdm_progress("compress", args.quiet))
    src = args.checkpoint.stat().st_size
    print(f"wrote {args.out}: {size:,} bytes, {src / size:.2f}x smaller than {args.checkpoint} ({src:,} bytes)")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from .checkpoints import write_checkpoint
    from .model_file import file_info, load, load_model

    from .checkpoints import check_output_path

    check_output_path(args.out)
    header = file_info(args.file)
    payload = {}
    if header.get("arch"):
        state = load_model(args.file).state_dict()  # with the rebuilt entropy-coder buffers
        if header.get("widths"):  # a channel-pruned model: its widths are needed to rebuild it
            payload["config"] = {"arch": header["arch"], "quality": header.get("quality"), "widths": header["widths"]}
    else:
        state = load(args.file)
    write_checkpoint(args.out, {"state_dict": dict(state), **payload})
    print(f"wrote {args.out}: {len(state)} tensors")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from . import container
    from .inspection import describe, format_table

    info = describe(container.read(args.file), args.file.stat().st_size)
    print(json.dumps(info, indent=1) if args.json else format_table(info))
    return 0


DEFAULT_EVAL_DATA = Path("../shared/data/kodak")
DEFAULT_EVAL_OUT = Path("runs/eval")
DEFAULT_REPORT_OUT = Path("runs/report")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_paths

    done = evaluate_paths(
        args.models, args.data, args.out, arch=args.arch, quality=args.quality, family=args.family,
        jobs=args.jobs, threads=args.threads, limit=args.limit, channels_last=not args.no_channels_last,
        progress=not args.quiet,
    )
    for d in done:
        m, info = d["mean"], d["info"]
        print(
            f"{d['model']}: {info['file_bytes']:,} bytes, {info['params']:,} params, density {info['density']:.4f} | "
            f"{m['images']} images: bpp {m['bpp']:.4f}, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, MS-SSIM {m['ms_ssim']:.4f}, "
            f"encode {m['encode_s']:.3f} s, decode {m['decode_s']:.3f} s -> {d['json']}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import collect_results, write_report

    rep = write_report(collect_results(args.results), args.out, baseline=args.baseline, method=args.bd_method, plots=not args.no_plots)
    print(f"{len(rep['rows'])} models, {len(rep['bd'])} compared families -> {rep['paths']['markdown']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.model, args.data, args.out, progress=not args.quiet)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from .pipeline import PipelineConfig, run_pipeline
    from .policy import Policy, read_policy

    policy = read_policy(args.policy) if args.policy else Policy()
    if args.prune is not None or args.bits is not None or args.granularity is not None:
        policy = policy.with_weight_rule(prune=args.prune, bits=args.bits, granularity=args.granularity)
    if args.quality is not None and args.arch is None:
        raise DeepCompError("--quality needs --arch")
    cfg = PipelineConfig(
        arch=args.arch, quality=args.quality, lmbda=args.lmbda, policy=policy.to_json(),
        target_ratio=args.target_ratio, target_loss=args.target_loss,
        retrain_steps=args.retrain_steps, anneal_steps=args.anneal_steps, distill=args.distill, prune_rounds=args.prune_rounds,
        schedule=args.schedule, centroid_steps=args.centroid_steps, centroid_mode=args.centroid_mode, train_raw=not args.freeze_raw,
        batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr, centroid_lr=args.centroid_lr,
        val_every=args.val_every, val_fraction=args.val_fraction, val_patch=args.val_patch,
        sens_ratios=tuple(args.sens_ratios), sens_bits=tuple(args.sens_bits), sens_mode=args.sens_mode, seed=args.seed,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_pipeline(args.checkpoint, args.out, cfg, args.data, None if args.no_eval else args.eval_data, eval_limit=args.eval_limit,
                 stop_after=args.stop_after, progress=not args.quiet, checkpoint_every=args.checkpoint_every)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .file_finetune import FinetuneConfig, finetune_file

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = FinetuneConfig(mode=args.mode, steps=args.steps, lr=args.lr, lmbda=args.lmbda, batch_size=args.batch_size, patch_size=args.patch_size,
                         val_every=args.val_every, val_fraction=args.val_fraction, val_patch=args.val_patch, train_raw=not args.freeze_raw,
                         seed=args.seed)
    if args.summary is not None:
        from .checkpoints import check_output_path

        check_output_path(args.summary)
    summary = finetune_file(args.model, args.out, args.data, cfg, progress=not args.quiet)
    if args.summary is not None:
        import json

        from .checkpoints import atomic_write_bytes
        from .evaluation import _clean

        atomic_write_bytes(args.summary, (json.dumps(_clean(summary), indent=1) + "\n").encode())
    return 0


def cmd_channel_prune(args: argparse.Namespace) -> int:
    from .structured import channel_prune, parse_ratios

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    targets = [(k, v) for k, v in (("macs", args.target_macs), ("params", args.target_params)) if v is not None]
    if len(targets) > 1:
        raise DeepCompError("give --target-macs or --target-params, not both")
    if args.quality is not None and args.arch is None:
        raise DeepCompError("--quality needs --arch")
    channel_prune(
        args.checkpoint, args.out, arch=args.arch, quality=args.quality, lmbda=args.lmbda,
        ratio=args.ratio, ratios=parse_ratios(args.ratios) if args.ratios is not None else None,
        target=targets[0][1] if targets else None, cost=targets[0][0] if targets else "macs", target_loss=args.target_loss,
        groups=args.groups, importance=args.importance, sens_ratios=args.sens_ratios, sensitivity=args.sensitivity,
        finetune_steps=args.finetune_steps, data=args.data, batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr,
        val_every=args.val_every, val_fraction=args.val_fraction, val_patch=args.val_patch, seed=args.seed, progress=not args.quiet,
    )
    return 0


def _open_fraction(text: str) -> float:
    v = _fraction(text)
    if v == 0.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1): {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepcomp", description="Deep Compression for learned image compression models")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="prune, share and Huffman-code a checkpoint into a deepcomp file")
    c.add_argument("checkpoint", type=Path, help="a .pth.tar checkpoint (state_dict or {'state_dict': ...})")
    c.add_argument("-o", "--out", type=Path, required=True, help="the deepcomp file to write (.dcmp)")
    c.add_argument("--arch", default=None, help="CompressAI architecture (e.g. bmshj2018-factorized)")
    c.add_argument("--quality", type=_positive_int, default=None)
    c.add_argument("--prune", type=_fraction, default=None, help="fraction of conv/linear weights to prune by magnitude")
    c.add_argument("--global-prune", action="store_true", help="one magnitude threshold across all pruned tensors")
    c.add_argument("--granularity", choices=("element", "kernel"), default=None,
                   help="prune single weights (default) or whole kernels by their L2 norm (their positions cost one bit per kernel)")
    c.add_argument("--bits", type=_bits, default=None, help="bit width of the conv/linear weight codebooks (default 8)")
    c.add_argument("--policy", type=Path, default=None, help="a JSON policy file of per-name rules")
    c.add_argument("--raw-storage", choices=("fp32", "fp16"), default=None, help="storage of tensors left unshared")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="rebuild a checkpoint from a deepcomp file")
    d.add_argument("file", type=Path)
    d.add_argument("-o", "--out", type=Path, required=True, help="the .pth.tar checkpoint to write")
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("inspect", help="per-tensor sizes, densities and entropy bounds of a deepcomp file")
    i.add_argument("file", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("train", help="train (or resume) a CompressAI model on the rate-distortion loss")
    t.add_argument("--arch", default="bmshj2018-factorized")
    t.add_argument("--quality", type=_positive_int, default=3)
    t.add_argument("--lmbda", type=float, default=None, help="default: CompressAI's lambda for the quality")
    t.add_argument("--steps", type=_positive_int, default=1000, help="total steps (a resumed run continues to this)")
    t.add_argument("--batch-size", type=_positive_int, default=8)
    t.add_argument("--patch-size", type=_positive_int, default=256)
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default 1e-4; a resumed run keeps the one it had reached unless given)")
    t.add_argument("--lr-patience", type=_positive_int, default=None,
                   help="validations without improvement before the learning rate halves (default 4; "
                        "a long run at lr 1e-4 wants more, docs/TRAINING.md)")
    t.add_argument("--minutes", type=_positive_float, default=None,
                   help="stop after this much training time, with a checkpoint; a rerun continues")
    t.add_argument("--val-every", type=_positive_int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=_positive_int, default=None)
    t.add_argument("--data", type=Path, default=DEFAULT_TRAIN_DATA, help="training photos (never Kodak)")
    t.add_argument("--init", type=Path, default=None, help="start a new run from these weights")
    t.add_argument("--init-matching", action="store_true",
                   help="with --init: copy only the tensors whose names and shapes match (e.g. a factorized model's g_a/g_s into a hyperprior)")
    t.add_argument("--scratch-lr", type=_positive_float, default=None,
                   help="with --init-matching: learning rate of the modules that start from scratch (default: --lr); kept on resume")
    t.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: the transforms train under bf16 autocast (entropy models, weights and validation stay fp32); "
                        "about 2.2x faster a step on a CPU with AMX (2.75x with the channels-last layout every run uses), see docs/TRAINING.md")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the transforms (seconds at the first step; the speed-up: tools/bench_training.py, docs/TRAINING.md)")
    t.add_argument("--resume", type=Path, default=None, help="continue this run (e.g. a committed baseline) into --out")
    t.add_argument("-o", "--out", type=Path, required=True, help="resumable training checkpoint")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="a CompressAI-loadable baseline (resumable with train --resume) from a training checkpoint")
    x.add_argument("checkpoint", type=Path, help="a checkpoint written by deepcomp train")
    x.add_argument("-o", "--out", type=Path, required=True)
    x.set_defaults(func=cmd_export)

    # --- evaluate / report subcommands (evaluation.py, report.py) go below this line ---

    e = sub.add_parser("evaluate", help="code an image folder (Kodak) with real bitstreams; bpp, PSNR, SSIM, MS-SSIM, times")
    e.add_argument("models", type=Path, nargs="+", metavar="MODEL", help="deepcomp files and/or CompressAI checkpoints")
    e.add_argument("--data", type=Path, default=DEFAULT_EVAL_DATA, help="image folder, PNG/JPEG (default: %(default)s)")
    e.add_argument("--arch", default=None, help="architecture of checkpoints that do not record it")
    e.add_argument("--quality", type=_positive_int, default=None, help="quality of checkpoints that do not record it")
    e.add_argument("--family", default=None, help="family label for the report (default: baseline for checkpoints, deepcomp for deepcomp files)")
    e.add_argument("-o", "--out", type=Path, default=DEFAULT_EVAL_OUT, help="folder of the results JSON + CSV, one pair per model (default: %(default)s)")
    e.add_argument("--jobs", type=_positive_int, default=1, help="models evaluated in parallel worker processes")
    e.add_argument("--threads", type=_positive_int, default=None, help="torch threads per model (default: the idle cores shared among the jobs)")
    e.add_argument("--limit", type=_positive_int, default=None, help="only the first N images (quick checks)")
    e.add_argument("--no-channels-last", action="store_true",
                   help="PyTorch's default memory layout, as compressai's eval_model (identical bitstreams, ~20%% slower)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="table, BD-rates and plots from evaluation results")
    r.add_argument("results", type=Path, nargs="+", metavar="RESULTS", help="results JSON files of `deepcomp evaluate`, or folders of them")
    r.add_argument("-o", "--out", type=Path, default=DEFAULT_REPORT_OUT, help="report folder (default: %(default)s)")
    r.add_argument("--baseline", default="baseline", help="the anchor family of the BD-rates (default: %(default)s)")
    r.add_argument("--bd-method", choices=("pchip", "cubic"), default="pchip", help="Bjøntegaard interpolation (default: %(default)s)")
    r.add_argument("--no-plots", action="store_true")
    r.set_defaults(func=cmd_report)

    # --- end of evaluate / report subcommands ---

    from .demo import DEFAULT_MODEL

    m = sub.add_parser("demo", help="the shipped baseline, compressed at a few settings, evaluated on Kodak")
    m.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="baseline checkpoint (default: the shipped one)")
    m.add_argument("--data", type=Path, default=DEFAULT_EVAL_DATA, help="image folder (default: %(default)s)")
    m.add_argument("-o", "--out", type=Path, default=Path("runs/demo"))
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_demo)

    # the defaults below are those of deepcomp.pipeline.PipelineConfig / deepcomp.sensitivity (not imported here: torch loads slowly)
    pl = sub.add_parser("pipeline", help="the whole Deep Compression pipeline with retraining, stage by stage, and its per-stage table")
    pl.add_argument("checkpoint", type=Path, help="the baseline checkpoint (fp32)")
    pl.add_argument("-o", "--out", type=Path, required=True, help="output folder; a rerun resumes what is not finished")
    pl.add_argument("--arch", default=None, help="architecture, if the checkpoint does not record it")
    pl.add_argument("--quality", type=_positive_int, default=None)
    pl.add_argument("--lmbda", type=float, default=None, help="RD lambda (default: the checkpoint's, else CompressAI's for the quality)")
    pl.add_argument("--policy", type=Path, default=None, help="a JSON policy file (per-name pruning ratios and bit widths)")
    pl.add_argument("--prune", type=_fraction, default=None, help="fraction of conv/linear weights to prune (on the policy's weight rules)")
    pl.add_argument("--granularity", choices=("element", "kernel"), default=None,
                    help="prune single weights (default) or whole kernels by their L2 norm (also in the sensitivity analysis)")
    pl.add_argument("--bits", type=_bits, default=None, help="bit width of the conv/linear weights (on the policy's weight rules)")
    pl.add_argument("--target-ratio", type=float, default=None,
                    help="target compression ratio vs fp32: per-layer pruning ratios and bit widths from the sensitivity analysis")
    pl.add_argument("--target-loss", type=float, default=None, help="target RD loss increase (before retraining) for the allocator instead")
    pl.add_argument("--retrain-steps", type=int, default=2000, help="masked retraining steps in all (0: none)")
    pl.add_argument("--anneal-steps", type=int, default=0,
                    help="the retraining's last steps, after the last pruning round, at --centroid-lr (the weights settle before sharing)")
    pl.add_argument("--distill", type=_non_negative_float, default=0.0,
                    help="weight of a layer-wise distillation loss from the baseline in both fine-tunings (0: none; see deepcomp/distillation.py)")
    pl.add_argument("--prune-rounds", type=_positive_int, default=4, help="prune/retrain rounds up to the target sparsity")
    pl.add_argument("--schedule", choices=("agp", "linear"), default="agp", help="sparsity schedule of the rounds (agp: cubic)")
    pl.add_argument("--centroid-steps", type=int, default=1000, help="trained-quantization steps (0: none)")
    pl.add_argument("--centroid-mode", choices=("fixed", "nearest"), default="fixed",
                    help="fixed: Han's trained quantization, codebooks only; nearest: quantization-aware from the retrained weights, "
                         "a weight may change cluster")
    pl.add_argument("--freeze-raw", action="store_true", help="train only the centroids (and quantiles) in trained quantization")
    pl.add_argument("--lr", type=float, default=1e-5, help="learning rate of masked retraining")
    pl.add_argument("--centroid-lr", type=float, default=1e-5, help="learning rate of the centroids and raw parameters")
    pl.add_argument("--batch-size", type=_positive_int, default=8)
    pl.add_argument("--patch-size", type=_positive_int, default=256)
    pl.add_argument("--val-every", type=_positive_int, default=250, help="validation (and checkpoint) interval in steps")
    pl.add_argument("--checkpoint-every", type=_positive_int, default=None, help="checkpoint interval (default: --val-every)")
    pl.add_argument("--val-fraction", type=_fraction, default=0.1, help="share of the training photos held out for validation")
    pl.add_argument("--val-patch", type=_positive_int, default=256, help="size of the validation crops")
    pl.add_argument("--sens-ratios", type=_fraction, nargs="+", default=[0.0, 0.5, 0.7, 0.8, 0.9, 0.95], help="sensitivity grid: pruning ratios")
    pl.add_argument("--sens-bits", type=_bits, nargs="+", default=[3, 4, 5, 6, 8], help="sensitivity grid: bit widths")
    pl.add_argument("--sens-mode", choices=("joint", "separable"), default="joint", help="measure every (ratio, bits) pair, or the two curves")
    pl.add_argument("--data", type=Path, default=DEFAULT_TRAIN_DATA, help="training photos for retraining and validation (never Kodak)")
    pl.add_argument("--eval-data", type=Path, default=DEFAULT_EVAL_DATA, help="evaluation images, coded only by the evaluate stage (default: %(default)s)")
    pl.add_argument("--eval-limit", type=_positive_int, default=None, help="only the first N evaluation images (quick checks)")
    pl.add_argument("--no-eval", action="store_true", help="stop before the evaluate stage")
    pl.add_argument("--stop-after", choices=("sensitivity", "policy", "prune", "retrain", "share", "centroids", "huffman", "evaluate"), default=None)
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--threads", type=_positive_int, default=None)
    pl.add_argument("--quiet", action="store_true")
    pl.set_defaults(func=cmd_pipeline)

    # the defaults below are those of deepcomp.file_finetune.FinetuneConfig (not imported here: torch loads slowly)
    ft = sub.add_parser("finetune", help="fine-tune the shared weights of a deepcomp file (masks and bit widths kept) into a new file")
    ft.add_argument("model", type=Path, help="a deepcomp file of a CompressAI model")
    ft.add_argument("-o", "--out", type=Path, required=True, help="the fine-tuned deepcomp file (a rerun resumes from OUT.partial.pth.tar)")
    ft.add_argument("--mode", choices=("nearest", "fixed"), default="nearest",
                    help="nearest: quantization-aware, a weight may change cluster; fixed: Han's trained quantization, codebooks only")
    ft.add_argument("--steps", type=_positive_int, default=600)
    ft.add_argument("--lr", type=_positive_float, default=3e-5, help="learning rate (latent weights or centroids, and raw parameters)")
    ft.add_argument("--lmbda", type=_positive_float, default=None, help="RD lambda (default: CompressAI's for the file's quality)")
    ft.add_argument("--freeze-raw", action="store_true", help="train only the shared tensors (and the quantiles)")
    ft.add_argument("--batch-size", type=_positive_int, default=8)
    ft.add_argument("--patch-size", type=_positive_int, default=128)
    ft.add_argument("--val-every", type=_positive_int, default=150, help="validation (and checkpoint) interval in steps")
    ft.add_argument("--val-fraction", type=_fraction, default=0.1, help="share of the training photos held out for validation")
    ft.add_argument("--val-patch", type=_positive_int, default=256, help="size of the validation crops")
    ft.add_argument("--data", type=Path, default=DEFAULT_TRAIN_DATA, help="training photos (never Kodak)")
    ft.add_argument("--summary", type=Path, default=None, help="write the run's summary (val losses, history) as JSON")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--threads", type=_positive_int, default=None)
    ft.add_argument("--quiet", action="store_true")
    ft.set_defaults(func=cmd_finetune)

    # the defaults below are those of deepcomp.structured.channel_prune (not imported here: torch loads slowly)
    cpr = sub.add_parser("channel-prune", help="structured pruning: remove whole channels (physically thinner model), fine-tune")
    cpr.add_argument("checkpoint", type=Path, help="the baseline checkpoint (or an already channel-pruned one)")
    cpr.add_argument("-o", "--out", type=Path, required=True, help="the thinner model's checkpoint (.pth.tar; `deepcomp compress`/`evaluate` take it)")
    cpr.add_argument("--arch", default=None, help="architecture, if the checkpoint does not record it")
    cpr.add_argument("--quality", type=_positive_int, default=None)
    cpr.add_argument("--lmbda", type=float, default=None, help="RD lambda (default: the checkpoint's, else CompressAI's for the quality)")
    how = cpr.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=_fraction, default=None, help="fraction of the channels removed in every group (or those of --groups)")
    how.add_argument("--ratios", default=None, metavar="JSON", help='per-group fractions: inline JSON ({"g_a.0": 0.5}) or a JSON file')
    how.add_argument("--target-macs", type=_open_fraction, default=None, help="fraction of the MACs per pixel (encode + decode) to remove; ratios from the RD sensitivity")
    how.add_argument("--target-params", type=_open_fraction, default=None, help="fraction of the parameters to remove; ratios from the RD sensitivity")
    how.add_argument("--target-loss", type=float, default=None, help="predicted RD loss increase (before fine-tuning) to allow; ratios from the RD sensitivity")
    cpr.add_argument("--groups", nargs="+", default=None, help="only these channel groups (e.g. g_a.0 y g_s.4); default: all")
    cpr.add_argument("--importance", choices=("activation", "l1", "l1-product"), default="activation",
                     help="which channels go first: activation (measured on validation crops, needs --data), l1 of the filters (Li et al.), l1-product")
    cpr.add_argument("--sens-ratios", type=_open_fraction, nargs="+", default=[0.125, 0.25, 0.375, 0.5, 0.625, 0.75], help="sensitivity grid: channel fractions")
    cpr.add_argument("--sensitivity", type=Path, default=None, help="JSON file of the channel sensitivity: reused if it exists, else written")
    cpr.add_argument("--finetune-steps", type=_non_negative_int, default=0, help="RD fine-tuning steps of the thinner model (0: none)")
    cpr.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    cpr.add_argument("--batch-size", type=_positive_int, default=8)
    cpr.add_argument("--patch-size", type=_positive_int, default=256)
    cpr.add_argument("--val-every", type=_positive_int, default=250)
    cpr.add_argument("--val-fraction", type=_fraction, default=0.1, help="share of the training photos held out for validation")
    cpr.add_argument("--val-patch", type=_positive_int, default=256, help="size of the validation crops")
    cpr.add_argument("--data", type=Path, default=DEFAULT_TRAIN_DATA, help="training photos: validation crops and fine-tuning (never Kodak)")
    cpr.add_argument("--seed", type=int, default=0)
    cpr.add_argument("--threads", type=_positive_int, default=None)
    cpr.add_argument("--quiet", action="store_true")
    cpr.set_defaults(func=cmd_channel_prune)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DeepCompError as exc:
        print(f"deepcomp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepcomp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
