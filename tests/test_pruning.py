import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from deepcomp import pruning
from deepcomp.errors import DeepCompError

arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=7), elements=st.floats(-10, 10, width=32))


@settings(max_examples=60, deadline=None)
@given(arrays, st.floats(0, 1))
def test_magnitude_mask_prunes_exact_count_of_smallest(w, fraction):
    mask = pruning.magnitude_mask(w, fraction)
    assert mask.shape == w.shape
    assert (~mask).sum() == round(fraction * w.size)
    if mask.any() and (~mask).any():
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


def test_threshold_mask_is_hans_rule():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 32))
    mask = pruning.threshold_mask(w, 0.5)
    assert np.array_equal(mask, np.abs(w) > 0.5 * w.std())
    # about 38% of a normal lies within 0.5 sigma
    assert 0.3 < 1 - pruning.density(mask) < 0.46


def test_global_masks_share_one_threshold():
    rng = np.random.default_rng(1)
    tensors = {"a": rng.normal(size=(100,)) * 10, "b": rng.normal(size=(50, 2))}
    masks = pruning.global_masks(tensors, 0.5)
    kept = np.concatenate([np.abs(tensors[n])[masks[n]].ravel() for n in tensors])
    dropped = np.concatenate([np.abs(tensors[n])[~masks[n]].ravel() for n in tensors])
    assert len(dropped) == 100 and kept.min() >= dropped.max()
    # the large-scale tensor keeps more than the small-scale one
    assert pruning.density(masks["a"]) > pruning.density(masks["b"])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_fraction_is_package_error(bad):
    with pytest.raises(DeepCompError):
        pruning.magnitude_mask(np.ones(4), bad)


def test_kernel_mask_prunes_whole_kernels_of_smallest_norm():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 4, 3, 3))
    w[0, 1] *= 0.01  # the smallest kernel by L2 norm, though not every weight of it is the smallest
    mask = pruning.magnitude_mask(w, 0.25, "kernel")
    kernels = mask.reshape(24, 9)
    assert mask.shape == w.shape and (kernels.all(axis=1) | ~kernels.any(axis=1)).all()  # all or nothing per kernel
    assert (~kernels.any(axis=1)).sum() == 6 and not mask[0, 1].any()
    norms = np.sqrt(np.square(w).reshape(24, 9).sum(axis=1))
    assert norms[kernels.all(axis=1)].min() >= norms[~kernels.any(axis=1)].max()
    # two or fewer dimensions: a kernel is one weight
    v = rng.normal(size=(8, 5))
    assert np.array_equal(pruning.magnitude_mask(v, 0.5, "kernel"), pruning.magnitude_mask(v, 0.5))
    with pytest.raises(DeepCompError, match="granularity"):
        pruning.magnitude_mask(w, 0.5, "channel")
