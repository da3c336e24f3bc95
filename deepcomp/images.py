"""Image folders: listing, reading into tensors, clear errors when missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DeepCompError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
KODAK_HINT = "Kodak can be downloaded from https://r0k.us/graphics/kodak/ (kodim01.png ... kodim24.png)"


def list_images(folder: str | Path, hint: str = KODAK_HINT) -> list[Path]:
    """Sorted image files of ``folder``; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DeepCompError(f"image folder not found: {folder}; {hint}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DeepCompError(f"no images (PNG/JPEG) in {folder}; {hint}")
    return files


def read_rgb(path: str | Path) -> np.ndarray:
    """An image as an HxWx3 uint8 array."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:
        raise DeepCompError(f"cannot read image {path}: {exc}") from None


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0).unsqueeze(0)
