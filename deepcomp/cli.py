"""The ``deepcomp`` command: argument parsing, progress and one-line errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DeepCompError

DEFAULT_TRAIN_DATA = Path("../shared/data/train")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch, quality=args.quality, lmbda=args.lmbda, steps=args.steps,
        batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr,
        val_every=args.val_every, seed=args.seed, threads=args.threads,
    )
    train(cfg, args.data, args.out, init=args.init, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepcomp", description="Deep Compression for learned image compression models")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a CompressAI model on the rate-distortion loss")
    t.add_argument("--arch", default="bmshj2018-factorized")
    t.add_argument("--quality", type=_positive_int, default=3)
    t.add_argument("--lmbda", type=float, default=None, help="default: CompressAI's lambda for the quality")
    t.add_argument("--steps", type=_positive_int, default=1000, help="total steps (a resumed run continues to this)")
    t.add_argument("--batch-size", type=_positive_int, default=8)
    t.add_argument("--patch-size", type=_positive_int, default=256)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--val-every", type=_positive_int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=_positive_int, default=None)
    t.add_argument("--data", type=Path, default=DEFAULT_TRAIN_DATA, help="training photos (never Kodak)")
    t.add_argument("--init", type=Path, default=None, help="start a new run from these weights")
    t.add_argument("-o", "--out", type=Path, required=True, help="resumable training checkpoint")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    # --- evaluate / report subcommands (evaluation.py, report.py) go below this line ---

    # --- end of evaluate / report subcommands ---
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
