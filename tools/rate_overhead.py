"""How far the real bitstreams of a model sit above the rate its likelihoods promise, image by image.

    bash tools/run.sh python tools/rate_overhead.py artifacts/bmshj2018-hyperprior-q3.pth.tar \
        artifacts/in-training/bmshj2018-factorized-q3.pth.tar --data ../shared/data/kodak [--limit 8]

For each model (a baseline checkpoint or a deepcomp file) and each image: the bpp of ``-log2`` of the
likelihoods of its eval-mode ``forward()`` (the rate a training run reports) and the bpp of the strings
of ``compress()`` (what a file costs), both on the same padded image, and their ratio over all images.
A ratio near 1 says the entropy coder and its tables (``update()``) are not where a model loses rate;
a rate gap against a published curve then lies in the model itself.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from deepcomp import evaluation, training
from deepcomp.errors import DeepCompError
from deepcomp.images import read_rgb, to_tensor


@torch.no_grad()
def rates(model: torch.nn.Module, rgb) -> tuple[float, float, int]:
    """Likelihood bits, real bits and the pixel count of one HxWx3 uint8 image."""
    x = to_tensor(rgb)
    h, w = x.shape[-2:]
    x_padded, _ = evaluation.pad_image(x)
    out = model(x_padded)
    real_bits = 8 * evaluation.string_bytes(model.compress(x_padded)["strings"])
    return float(training.likelihood_bits(out)), real_bits, h * w


def measure(path: str, images, quiet: bool = False) -> dict:
    """One model's likelihood and real bpp over ``images`` (pixels weighted), and their ratio."""
    model, _ = evaluation.open_model(path)
    model.eval()
    lik = real = pixels = 0
    for p in tqdm(images, desc=Path(path).name, unit="img", leave=False, disable=quiet):
        a, b, n = rates(model, read_rgb(p))
        lik, real, pixels = lik + a, real + b, pixels + n
    return {"model": path, "images": len(images), "likelihood_bpp": lik / pixels, "real_bpp": real / pixels,
            "ratio": real / lik if lik > 0 else math.inf}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="../shared/data/kodak", help="evaluation images (default: Kodak)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.limit is not None and args.limit < 1:
            raise DeepCompError(f"--limit must be at least 1, not {args.limit}")
        images = evaluation.image_list(args.data, args.limit)
        torch.set_num_threads(args.threads)
        rows = [measure(m, images, args.quiet) for m in args.models]
    except DeepCompError as e:
        print(f"rate_overhead: {e}", file=sys.stderr)
        return 1
    print(f"{len(images)} images of {args.data}\n")
    print("| model | likelihood bpp | real bpp | real / likelihood |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['likelihood_bpp']:.4f} | {r['real_bpp']:.4f} | {r['ratio']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
