"""Time a full Kodak evaluation (real bitstreams) of a quality-3 bmshj2018-factorized model.

    bash tools/run.sh python tools/bench_kodak_eval.py [MODEL] [--data DIR] [--threads N]

MODEL is a deepcomp file or a CompressAI checkpoint (a q3 factorized one is
assumed where the file does not say); without it a seeded random-initialised
model is used.  Prints the seconds (model loading excluded) and images/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from deepcomp import zoo  # noqa: E402
from deepcomp.errors import DeepCompError  # noqa: E402
from deepcomp.evaluation import default_threads, evaluate_model, image_list, open_model, summarize  # noqa: E402

ARCH, QUALITY = "bmshj2018-factorized", 3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", type=Path, help="model file (default: seeded random q3 factorized)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-channels-last", action="store_true", help="PyTorch's default layout, as compressai eval_model (slower)")
    args = p.parse_args(argv)
    try:
        threads = args.threads or default_threads(1)
        torch.set_num_threads(threads)
        images = image_list(args.data, args.limit)
        if args.model is not None:
            model, _ = open_model(args.model, ARCH if _needs_arch(args.model) else None, QUALITY if _needs_arch(args.model) else None)
            label = str(args.model)
        else:
            torch.manual_seed(args.seed)
            model = zoo.build(ARCH, QUALITY)
            model.update(force=True)
            model.eval()
            label = f"random-init {ARCH} q{QUALITY} (seed {args.seed})"
        t0 = time.perf_counter()
        per_image = evaluate_model(model, images, progress=True, desc="kodak", channels_last=not args.no_channels_last)
        seconds = time.perf_counter() - t0
    except DeepCompError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    mean = summarize(per_image)
    print(f"model: {label}; threads: {threads}; channels_last: {not args.no_channels_last}")
    print(f"{len(images)} images in {seconds:.1f} s = {len(images) / seconds:.3f} images/s "
          f"(encode {mean['encode_s']:.2f} s + decode {mean['decode_s']:.2f} s per image; "
          f"bpp {mean['bpp']:.4f}, PSNR {mean['psnr']:.2f} dB)")
    return 0


def _needs_arch(path: Path) -> bool:
    """True for a plain checkpoint that does not record arch/quality itself."""
    from deepcomp.evaluation import _checkpoint_meta, _is_deepcomp_file

    if _is_deepcomp_file(path):
        return False
    meta = _checkpoint_meta(path)
    return "arch" not in meta or "quality" not in meta


if __name__ == "__main__":
    sys.exit(main())
