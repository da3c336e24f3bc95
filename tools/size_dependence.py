"""How a model's rate and distortion depend on the size of the image it codes, on the validation photos.

    bash tools/run.sh python tools/size_dependence.py artifacts/in-training/bmshj2018-factorized-q3.pth.tar \
        artifacts/bmshj2018-hyperprior-q3.pth.tar [--data ../shared/data/train] [--sizes 128 256 512 full]

For each model (a baseline checkpoint or a deepcomp file) and each size: the likelihood bpp, PSNR and RD loss
(lambda * 255^2 * MSE + bpp, the model's own quality's lambda) of its eval-mode ``forward()`` on the validation
photos of ``deepcomp train``'s split, as fixed crops of that size (the four corners and the centre, as training
validates) or, for ``full``, each photo whole (trimmed to a multiple of 64). Kodak is not read.

A model whose rate grows with the size against another's, on the same photos, has learned something about its
training crops that whole images do not share: a hyperprior trained on 128x128 crops sees z at 2x2, every
position at a border, and its scales fit small crops better than whole photos.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from deepcomp import evaluation, training, zoo
from deepcomp.errors import DeepCompError
from deepcomp.images import read_rgb, to_tensor

FULL = "full"


def size_arg(text: str) -> str | int:
    if text == FULL:
        return FULL
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a crop size in pixels or '{FULL}', not {text!r}") from None
    if size < 64 or size % 64:
        raise argparse.ArgumentTypeError(f"a crop size must be a multiple of 64, not {size}")
    return size


def images_at(files: list[Path], size: str | int) -> torch.Tensor | list[torch.Tensor]:
    """The validation images at one size: the fixed crops training validates on (NxCxSxS), or whole photos
    trimmed to a multiple of 64 (1xCxHxW each)."""
    if size != FULL:
        return training.validation_crops(files, size)
    out = []
    for f in files:
        x = to_tensor(read_rgb(f))
        h, w = x.shape[-2:]
        out.append(x[..., : h // 64 * 64, : w // 64 * 64])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="../shared/data/train", help="the training photos; their validation split is read")
    ap.add_argument("--sizes", nargs="+", type=size_arg, default=[128, 256, 512, FULL],
                    help=f"crop sizes (multiples of 64) and/or '{FULL}' (default: 128 256 512 full)")
    ap.add_argument("--val-fraction", type=float, default=training.TrainConfig.val_fraction)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        _, val_files = training.split_photos(args.data, args.val_fraction)
        if not val_files:
            raise DeepCompError(f"--val-fraction {args.val_fraction} leaves no validation photos")
        sets = {s: images_at(val_files, s) for s in args.sizes}
        rows = []
        for path in args.models:
            model, info = evaluation.open_model(path)
            lmbda = zoo.mse_lambda(info["quality"])
            for s in tqdm(args.sizes, desc=Path(path).name, unit="size", leave=False, disable=args.quiet):
                rows.append({"model": path, "size": s, "images": len(sets[s]), **training.evaluate_rd(model, sets[s], lmbda)})
    except DeepCompError as e:
        print(f"size_dependence: {e}", file=sys.stderr)
        return 1
    print(f"validation photos of {args.data}: {', '.join(f.name for f in val_files)}\n")
    print("| model | size | images | likelihood bpp | PSNR (dB) | RD loss |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        size = r["size"] if r["size"] == FULL else f"{r['size']}x{r['size']}"
        print(f"| {r['model']} | {size} | {r['images']} | {r['bpp']:.4f} | {r['psnr']:.2f} | {r['loss']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
