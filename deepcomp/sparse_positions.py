"""Relative-index coding of the positions of kept weights (Han et al., Deep Compression).

A pruned tensor is a flat boolean *mask* (True = kept weight).  The kept
positions are coded as *gaps* with a ``gap_bits``-bit bound, filler symbol
``F = 2**gap_bits - 1``:

* symbol ``g`` in ``[0, F)``: skip ``g`` zeros, then the next kept weight;
* symbol ``F`` (filler): skip ``F`` zeros, no weight here.

A run of ``z`` zeros before a kept weight becomes ``z // F`` fillers and then
``z % F``.  Zeros after the last kept weight need no symbol because the tensor
size is stored elsewhere.  The gap stream is then Huffman-coded
(:mod:`deepcomp.huffman`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deepcomp import huffman
from deepcomp.errors import DeepCompError

MIN_GAP_BITS = 1
MAX_GAP_BITS = 16


def filler_symbol(gap_bits: int) -> int:
    """Return the filler symbol ``2**gap_bits - 1`` (also the largest gap symbol)."""
    _check_gap_bits(gap_bits)
    return (1 << int(gap_bits)) - 1


def encode_gaps(mask: np.ndarray, gap_bits: int) -> np.ndarray:
    """Return the gap symbols (uint16) coding the True positions of ``mask``.

    ``mask`` is a boolean array, read flattened in C order.
    """
    positions = np.flatnonzero(_as_mask(mask))
    filler = filler_symbol(gap_bits)
    if positions.size == 0:
        return np.zeros(0, dtype=np.uint16)
    zeros_before = np.diff(positions, prepend=-1) - 1
    fillers, remainders = np.divmod(zeros_before, filler)
    ends = np.cumsum(fillers + 1)
    gaps = np.full(int(ends[-1]), filler, dtype=np.uint16)
    gaps[ends - 1] = remainders
    return gaps


def decode_positions(gaps: np.ndarray, gap_bits: int, size: int) -> np.ndarray:
    """Return the int64 flat indices of the kept weights coded by ``gaps``.

    Inverse of :func:`encode_gaps` for a mask of ``size`` elements.  Raises
    DeepCompError for a symbol above the filler, a stream ending in a filler
    (never written), or a position at or past ``size``.
    """
    filler = filler_symbol(gap_bits)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
        raise DeepCompError(f"mask size must be a non-negative integer, got {size!r}")
    symbols = np.asarray(gaps)
    if symbols.size == 0:
        return np.zeros(0, dtype=np.int64)
    if symbols.ndim != 1 or not np.issubdtype(symbols.dtype, np.integer):
        raise DeepCompError(f"gaps must be a 1-D integer array, got {symbols.dtype} {symbols.shape}")
    if symbols.min() < 0 or symbols.max() > filler:
        raise DeepCompError(f"gap symbols must lie in 0..{filler} for {gap_bits}-bit gaps")
    symbols = symbols.astype(np.int64)
    if symbols[-1] == filler:
        raise DeepCompError("gap stream ends with a filler")
    is_weight = symbols != filler
    ends = np.cumsum(symbols + is_weight)  # a filler advances F, a gap g advances g + 1
    positions = ends[is_weight] - 1
    if positions[-1] >= size:
        raise DeepCompError(f"gap stream points at position {positions[-1]}, past mask size {size}")
    return positions


def choose_gap_bits(mask: np.ndarray, candidates: Iterable[int] = range(1, 17)) -> int:
    """Return the gap width that gives the smallest Huffman-coded gap stream.

    The cost of a width is the coded stream's bits plus its packed length
    table (:func:`huffman.pack_lengths`).  Ties go to the earliest candidate.
    """
    widths = list(candidates)
    if not widths:
        raise DeepCompError("no candidate gap widths")
    positions = np.flatnonzero(_as_mask(mask))
    zeros_before = np.diff(positions, prepend=-1) - 1
    costs = [gap_stream_bits(zeros_before, gap_bits) for gap_bits in widths]
    return widths[int(np.argmin(costs))]


def gap_stream_bits(zeros_before: np.ndarray, gap_bits: int) -> int:
    """Return the Huffman-coded size in bits (stream + packed length table) of the gaps.

    ``zeros_before`` holds, for each kept weight, the number of zeros since
    the previous one; the gap stream itself is never built.
    """
    filler = filler_symbol(gap_bits)
    fillers, remainders = np.divmod(zeros_before, filler)
    frequencies = np.bincount(remainders, minlength=filler + 1)
    frequencies[filler] += int(fillers.sum())
    lengths = huffman.code_lengths(frequencies)
    return huffman.stream_bits(frequencies, lengths) + 8 * len(huffman.pack_lengths(lengths))


def _as_mask(mask) -> np.ndarray:
    """Return ``mask`` as a flat boolean array, or raise DeepCompError."""
    flags = np.asarray(mask)
    if flags.dtype != np.bool_:
        raise DeepCompError(f"mask must be boolean, got {flags.dtype}")
    return flags.ravel()


def _check_gap_bits(gap_bits: int) -> None:
    """Raise DeepCompError unless ``gap_bits`` is an int in MIN_GAP_BITS..MAX_GAP_BITS."""
    if (
        not isinstance(gap_bits, (int, np.integer))
        or isinstance(gap_bits, bool)
        or not MIN_GAP_BITS <= gap_bits <= MAX_GAP_BITS
    ):
        raise DeepCompError(f"gap width must be {MIN_GAP_BITS}..{MAX_GAP_BITS} bits, got {gap_bits!r}")
