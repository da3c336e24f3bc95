import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from deepcomp import weight_sharing as ws
from deepcomp.errors import DeepCompError


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 3000), elements=st.floats(-4, 4, width=32)), st.integers(1, 8), st.sampled_from(ws.INITS))
def test_kmeans_codebook_is_sorted_and_small(values, bits, init):
    assert_sorted_small_codebook_of_nearest_centroids(values, ws.kmeans_share(values, bits, init=init), bits)


def assert_sorted_small_codebook_of_nearest_centroids(values, s, bits):
    assert s.codebook.dtype == np.float32
    assert 1 <= s.codebook.size <= 2**bits
    assert np.all(np.diff(s.codebook) > 0)
    assert s.indices.shape == values.shape and s.indices.min() >= 0 and s.indices.max() < s.codebook.size
    # every centroid is used, and each value sits at its nearest centroid
    assert np.unique(s.indices).size == s.codebook.size
    err = np.abs(s.reconstruct() - values)
    nearest = np.abs(values[:, None] - s.codebook[None, :]).min(axis=1)
    assert np.allclose(err, nearest, atol=1e-6)


def test_kmeans_with_empty_clusters_drops_them_without_a_warning():
    # values (found by the property test above) on which scikit-learn ends with fewer distinct clusters than
    # centroids and warns (ConvergenceWarning); kmeans_share drops the empty ones, so a user sees no warning
    v = np.array([1.0, 4.000572204589844, 0.0, 0.0023563404101878405, 3.9985992908477783, 4.419034004211426, 3.682953357696533,
                  1.0, 2.499703884124756, -4.0, -0.0863853171467781, 2.5, -4.0, 0.9999999403953552, -1.931658921705548e-08,
                  -2.6011647946688754e-07, 1.0, 3.9994335174560547, 2.9014744758605957, -4.634380346146827e-08,
                  -3.212107912986539e-08, 1.1664104461669922, -4.0, -4.0, 4.0, 2.5, 1.0022391080856323, 0.999275267124176,
                  3.6245057582855225, 1.0, 0.9313462972640991, -4.327879905700684, 4.0, 1.0000001192092896, 1.5155365467071533,
                  2.5003747940063477, 4.000302791595459, 0.9999999403953552, 2.4044885635375977, 4.001104354858398, -4.0,
                  3.999969244003296, -4.0, -4.0, -4.000000476837158, 0.0, 3.998224973678589, 3.9996225833892822, 2.5,
                  9.692877210909501e-05, 2.5, 7.847165051089178e-08, 1.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = ws.kmeans_share(v, 5, init="forgy")
    assert_sorted_small_codebook_of_nearest_centroids(v, s, 5)


def test_kmeans_beats_uniform_on_laplacian():
    rng = np.random.default_rng(0)
    v = rng.laplace(size=200_000).astype(np.float32)
    for bits in (4, 6):
        km = ws.kmeans_share(v, bits)
        un = ws.uniform_share(v, bits)
        assert np.mean((km.reconstruct() - v) ** 2) < np.mean((un.reconstruct() - v) ** 2)


def test_few_distinct_values_are_kept_exactly():
    v = np.array([0.5, -1.0, 0.5, 2.0], dtype=np.float32)
    s = ws.kmeans_share(v, 3)
    assert np.array_equal(s.reconstruct(), v)


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_uniform_quantizer_error_bounded_by_half_step(bits):
    rng = np.random.default_rng(2)
    v = rng.normal(size=1000)
    s = ws.uniform_share(v, bits)
    if bits > 1:
        step = s.codebook[1] - s.codebook[0]
        assert np.max(np.abs(s.reconstruct() - v)) <= step / 2 + 1e-6
        assert s.codebook.size == 2 ** bits - 1


def test_uniform_per_channel_uses_each_channels_scale():
    rng = np.random.default_rng(3)
    scales = np.array([1, 10, 100, 0.1, 1, 2, 3, 4])
    w = rng.normal(size=(4, 8, 3, 3)) * scales[None, :, None, None]  # transposed-conv layout
    books, idx, steps = ws.uniform_share_per_channel(w, 8, axis=1)
    assert books.shape == (8, 255)
    assert all(np.array_equal(books[c], ws.uniform_codebook(steps[c], 8)) for c in range(8))
    rec = books[np.arange(8)[None, :, None, None], idx]
    rel = np.abs(rec - w).max(axis=(0, 2, 3)) / np.abs(w).max(axis=(0, 2, 3))
    assert np.all(rel <= 0.5 / 127 + 1e-6)


def test_bad_options_are_package_errors():
    with pytest.raises(DeepCompError):
        ws.kmeans_share(np.arange(10.0), 0)
    with pytest.raises(DeepCompError):
        ws.kmeans_share(np.arange(1000.0), 4, init="nope")


def test_outliers_leaving_few_occupied_bins():
    """Thousands of distinct values crowded into a few histogram bins by an outlier."""
    rng = np.random.default_rng(4)
    v = np.concatenate([0.001 + 1e-7 * rng.random(9000), [5.0, -3.0]]).astype(np.float32)
    s = ws.kmeans_share(v, 5)
    assert 3 <= s.codebook.size <= 32
    assert np.all(s.reconstruct()[-2:] == v[-2:])
    assert np.max(np.abs(s.reconstruct() - v)) < 1e-3
