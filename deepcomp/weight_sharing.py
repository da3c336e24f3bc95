"""Weight sharing: per-tensor codebooks and the indices into them.

k-means (scikit-learn) over the surviving weights with linear, density-based
or Forgy centroid initialisation, as in Han et al.; and a uniform b-bit
quantizer (per tensor or per output channel), the int8 baseline.

k-means on one-dimensional data is exact on a fine histogram: the weights
are binned into at most ``HISTOGRAM_BINS`` bins and scikit-learn's KMeans
runs on the bin centres weighted by their counts, which makes it fast for
millions of weights; a final exact step assigns every weight to its nearest
centroid and moves each centroid to the mean of its weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .errors import DeepCompError

INITS = ("linear", "density", "forgy")
HISTOGRAM_BINS = 1 << 13


@dataclass
class SharedWeights:
    """``codebook[indices]`` reconstructs the shared values (float32)."""

    codebook: np.ndarray  # float32, shape (k,) or (channels, k) for per-channel uniform
    indices: np.ndarray  # int64, same length as the values that were shared

    def reconstruct(self) -> np.ndarray:
        return self.codebook[self.indices]


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise DeepCompError(f"bit width must be an integer in 1..16, got {bits!r}")


def initial_centroids(values: np.ndarray, k: int, init: str, seed: int = 0) -> np.ndarray:
    """Han et al.'s three initialisations of ``k`` centroids for 1-D ``values``."""
    if init == "linear":
        return np.linspace(values.min(), values.max(), k)
    if init == "density":
        return np.quantile(values, np.linspace(0.0, 1.0, k))
    if init == "forgy":
        rng = np.random.default_rng(seed)
        return rng.choice(values, size=k, replace=False)
    raise DeepCompError(f"unknown centroid initialisation {init!r}; choose one of {', '.join(INITS)}")


def assign_nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each value (centroids sorted ascending)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, values, side="left")


def kmeans_share(values: np.ndarray, bits: int, init: str = "linear", seed: int = 0, max_iter: int = 100) -> SharedWeights:
    """Cluster 1-D ``values`` into at most ``2**bits`` shared values.

    Returns a sorted float32 codebook and each value's index.  Clusters that
    end up empty are dropped, so the codebook may be shorter than ``2**bits``.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    _check_bits(bits)
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return SharedWeights(np.zeros(0, np.float32), np.zeros(0, np.int64))
    if init not in INITS:
        raise DeepCompError(f"unknown centroid initialisation {init!r}; choose one of {', '.join(INITS)}")
    unique, unique_counts = np.unique(values, return_counts=True)
    k = 1 << bits
    if unique.size <= k:  # nothing to cluster: every distinct value is a centroid
        codebook = unique.astype(np.float32)
        return SharedWeights(codebook, np.searchsorted(codebook, values.astype(np.float32)).astype(np.int64))
    # cluster the distinct values (weighted by their counts), or the means of
    # histogram bins when there are many; not when outliers leave fewer
    # occupied bins than clusters
    points, weights = unique, unique_counts.astype(np.float64)
    if unique.size > HISTOGRAM_BINS:
        lo, hi = float(values.min()), float(values.max())
        bins = np.clip(((values - lo) / (hi - lo) * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        counts = np.bincount(bins, minlength=HISTOGRAM_BINS)
        sums = np.bincount(bins, weights=values, minlength=HISTOGRAM_BINS)
        used = counts > 0
        if used.sum() >= k:
            points, weights = sums[used] / counts[used], counts[used].astype(np.float64)
    init_c = initial_centroids(values if init != "forgy" else points, k, init, seed)
    init_c = np.unique(init_c)
    km = KMeans(n_clusters=init_c.size, init=init_c.reshape(-1, 1), n_init=1, max_iter=max_iter, random_state=seed, tol=1e-10)
    with warnings.catch_warnings():
        # fewer distinct clusters than centroids is expected here: the empty ones are dropped below
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        km.fit(points.reshape(-1, 1), sample_weight=weights)
    centroids = np.sort(km.cluster_centers_.ravel())
    # exact final step on the raw values: assign, then move to the mean
    idx = assign_nearest(values, centroids)
    counts = np.bincount(idx, minlength=centroids.size)
    sums = np.bincount(idx, weights=values, minlength=centroids.size)
    used = counts > 0
    codebook = (sums[used] / counts[used]).astype(np.float32)
    order = np.argsort(codebook, kind="stable")
    codebook = codebook[order]
    remap = np.full(centroids.size, -1, dtype=np.int64)
    remap[np.flatnonzero(used)[order]] = np.arange(codebook.size)
    return SharedWeights(codebook, remap[idx])


def uniform_codebook(scale: float, bits: int) -> np.ndarray:
    """The codebook of the symmetric uniform quantizer with step ``scale``.

    ``2**(bits-1) - 1`` levels each side of zero (255 values for 8 bits);
    1 bit gives {-scale, +scale}.  Encoder and decoder both call this, so a
    file needs to store only the step (float64) to rebuild the codebook bit
    for bit.
    """
    _check_bits(bits)
    if bits == 1:
        return np.array([-scale, scale], dtype=np.float32)
    half = (1 << (bits - 1)) - 1
    return (np.arange(-half, half + 1, dtype=np.float64) * float(scale)).astype(np.float32)


def uniform_scale(values: np.ndarray, bits: int) -> float:
    """The step that maps the largest |value| to the outermost level."""
    half = max((1 << (bits - 1)) - 1, 1)
    peak = float(np.abs(values).max()) if np.size(values) else 0.0
    return peak / half if peak > 0 else 1.0


def uniform_share(values: np.ndarray, bits: int) -> SharedWeights:
    """Symmetric uniform quantizer over ``uniform_codebook(scale, bits)``."""
    _check_bits(bits)
    values = np.asarray(values, dtype=np.float64).ravel()
    scale = uniform_scale(values, bits)
    codebook = uniform_codebook(scale, bits)
    if bits == 1:
        return SharedWeights(codebook, (values >= 0).astype(np.int64))
    half = (1 << (bits - 1)) - 1
    idx = np.clip(np.rint(values / scale), -half, half).astype(np.int64) + half
    return SharedWeights(codebook, idx)


def uniform_share_per_channel(weights: np.ndarray, bits: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel uniform quantizer along ``axis``.

    Returns ``(codebooks, indices, scales)``: ``codebooks`` of shape
    (channels, levels), ``indices`` shaped like ``weights``, ``scales`` the
    float64 step of each channel; the value at channel ``c`` is
    ``codebooks[c, indices]`` and ``codebooks[c] == uniform_codebook(scales[c], bits)``.
    """
    w = np.moveaxis(np.asarray(weights, dtype=np.float64), axis, 0)
    books, scales, idx = [], [], np.empty(w.shape, dtype=np.int64)
    for c in range(w.shape[0]):
        s = uniform_share(w[c], bits)
        books.append(s.codebook)
        scales.append(uniform_scale(w[c].ravel(), bits))
        idx[c] = s.indices.reshape(w.shape[1:])
    return np.stack(books), np.moveaxis(idx, 0, axis), np.array(scales, dtype=np.float64)
