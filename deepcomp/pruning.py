"""Magnitude pruning: which weights to keep (True) and which to zero (False).

Like ``torch.nn.utils.prune`` but on NumPy arrays and returning masks only:
per tensor by fraction (keep the largest ``|w|``), by Han et al.'s threshold
(``quality * std(w)``), or globally across tensors with one threshold.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import DeepCompError


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0 or fraction != fraction:
        raise DeepCompError(f"pruning fraction must be in [0, 1], got {fraction}")


def kernel_size(shape) -> int:
    """Elements per kernel: the trailing (spatial) dimensions of a conv weight, 1 for anything of 2 or fewer dimensions."""
    return int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1


def magnitude_mask(weights: np.ndarray, fraction: float, granularity: str = "element") -> np.ndarray:
    """Mask that zeroes exactly ``round(fraction * size)`` weights of smallest |w|.

    ``granularity="kernel"``: whole kernels (:func:`kernel_size` elements) of
    smallest L2 norm instead, ``round(fraction * kernels)`` of them.  Ties are
    broken by position (stable), so the result is deterministic.
    """
    _check_fraction(fraction)
    if granularity == "kernel":
        w = np.asarray(weights, dtype=np.float64)
        ks = kernel_size(w.shape)
        norms = np.sqrt(np.square(w.reshape(-1, ks)).sum(axis=1)) if w.size else np.zeros(0)
        return np.repeat(magnitude_mask(norms, fraction), ks).reshape(w.shape)
    if granularity != "element":
        raise DeepCompError(f"unknown pruning granularity {granularity!r} (element, kernel)")
    flat = np.abs(np.asarray(weights, dtype=np.float64).ravel())
    n_prune = int(round(fraction * flat.size))
    mask = np.ones(flat.size, dtype=bool)
    if n_prune > 0:
        order = np.argsort(flat, kind="stable")
        mask[order[:n_prune]] = False
    return mask.reshape(np.shape(weights))


def threshold_mask(weights: np.ndarray, quality: float) -> np.ndarray:
    """Han et al.'s rule: keep weights with ``|w| > quality * std(w)``."""
    if quality < 0 or quality != quality:
        raise DeepCompError(f"pruning quality parameter must be >= 0, got {quality}")
    w = np.asarray(weights, dtype=np.float64)
    return np.abs(w) > quality * w.std()


def global_masks(tensors: Mapping[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """One magnitude threshold over all ``tensors`` that prunes ``fraction`` of their weights."""
    _check_fraction(fraction)
    if not tensors:
        return {}
    magnitudes = np.concatenate([np.abs(np.asarray(t, dtype=np.float64)).ravel() for t in tensors.values()])
    joint = magnitude_mask(magnitudes, fraction)
    masks, start = {}, 0
    for name, t in tensors.items():
        size = int(np.size(t))
        masks[name] = joint[start : start + size].reshape(np.shape(t))
        start += size
    return masks


def density(mask: np.ndarray) -> float:
    """Fraction of weights kept."""
    mask = np.asarray(mask)
    return float(mask.sum()) / mask.size if mask.size else 1.0
