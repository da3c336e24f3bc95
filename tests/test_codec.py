"""Round trips of the codec: a decoded tensor is codebook[index] exactly, 0 where pruned."""

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dataclasses import replace

from deepcomp import codec, container, pruning
from deepcomp.errors import DeepCompError
from deepcomp.policy import Policy, Rule
from deepcomp.weight_sharing import kmeans_share


def shapes():
    return st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


@settings(max_examples=40, deadline=None)
@given(shape=shapes(), density=st.floats(0.0, 1.0), bits=st.integers(1, 8), quantizer=st.sampled_from(["kmeans", "uniform"]),
       per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_round_trip_equals_codebook_reconstruction(shape, density, bits, quantizer, per_channel, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    w[rng.random(shape) > density] = 0.0  # already-pruned weights
    rule = Rule(bits=bits, quantizer=quantizer, per_channel=per_channel)
    c = codec.encode_arrays({"t.weight": w}, Policy(rules=(rule,)))
    back = codec.decode_arrays(container.from_bytes(container.to_bytes(c)))["t.weight"]
    assert back.shape == w.shape and back.dtype == np.float32
    assert np.all(back[w == 0] == 0)
    e = c.header["tensors"][0]
    book = codec.entry_codebook(c, e)
    kept = w != 0
    if quantizer == "kmeans":
        # the reconstruction is exactly the k-means codebook lookup of the kept weights
        ref = kmeans_share(w[kept], bits)
        assert np.array_equal(book, ref.codebook)
        assert np.array_equal(back[kept], ref.reconstruct())
    else:
        assert np.all(np.isin(back[kept], book))
        if bits > 1:
            step = np.diff(book, axis=-1).max()
            assert np.max(np.abs(back - w), initial=0) <= step / 2 + 1e-5


def test_pruning_rules_and_dense_layout():
    rng = np.random.default_rng(0)
    arrays = OrderedDict(
        [("g_a.0.weight", rng.normal(size=(16, 3, 5, 5)).astype(np.float32)),
         ("g_a.0.bias", rng.normal(size=(16,)).astype(np.float32)),
         ("g_a.1.gamma", rng.random((16, 16)).astype(np.float32)),
         ("entropy_bottleneck._matrix0", rng.normal(size=(16, 3, 1)).astype(np.float32)),
         ("step", np.array(7, dtype=np.int64))]
    )
    policy = Policy().with_weight_rule(prune=0.6, bits=4)
    c = codec.encode_arrays(arrays, policy)
    back = codec.decode_arrays(container.from_bytes(container.to_bytes(c)))
    assert list(back) == list(arrays)
    w = back["g_a.0.weight"]
    assert np.count_nonzero(w) == round(0.4 * w.size)
    assert len(np.unique(w[w != 0])) <= 16
    kept = w != 0
    assert np.abs(arrays["g_a.0.weight"][kept]).min() >= np.abs(arrays["g_a.0.weight"][~kept]).max()
    for raw in ("g_a.0.bias", "entropy_bottleneck._matrix0", "step"):
        assert np.array_equal(back[raw], arrays[raw]) and back[raw].dtype == arrays[raw].dtype
    # a 16x16 gamma is below the default 1024-element floor: raw
    assert np.array_equal(back["g_a.1.gamma"], arrays["g_a.1.gamma"])


def test_skewed_tensor_uses_background_layout_near_entropy():
    """A tensor dominated by one value is gap-coded around it, not 1 bit/symbol."""
    rng = np.random.default_rng(5)
    w = np.full((256, 256), 0.25, dtype=np.float32)
    hit = rng.random(w.shape) < 0.03
    w[hit] = rng.normal(size=hit.sum())
    c = codec.encode_arrays({"gamma": w}, Policy(rules=(Rule(bits=4),)))
    e = c.header["tensors"][0]
    assert e["layout"] == "gaps" and e["background"] != len(codec.entry_codebook(c, e))
    back = codec.decode_arrays(container.from_bytes(container.to_bytes(c)))["gamma"]
    background = codec.entry_codebook(c, e)[e["background"]]
    assert np.all(back[~hit] == background) and abs(background - 0.25) < 0.05
    payload_bits = 8 * sum(len(c.records[r]) for r in codec.tensor_records(e))
    assert payload_bits < 0.5 * w.size  # well under the 1 bit/element a plain Huffman code needs


def test_kernel_pruned_weight_uses_the_kernels_layout_and_pays_one_gap_per_kernel():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 32, 5, 5)).astype(np.float32)
    by_kernel = Policy().with_weight_rule(prune=0.7, bits=5, granularity="kernel")
    c = codec.encode_arrays({"g_a.2.weight": w}, by_kernel)
    e = c.header["tensors"][0]
    assert e["layout"] == "kernels" and e["kernel"] == 25
    back = codec.decode_arrays(container.from_bytes(container.to_bytes(c)))["g_a.2.weight"]
    kept = pruning.magnitude_mask(w, 0.7, "kernel")
    assert np.all(back[~kept] == 0) and np.all(back[kept] != 0)
    assert np.array_equal(back[kept], kmeans_share(w[kept], 5).reconstruct())
    # the positions: about one bit per kernel, far below one gap per weight of the same density pruned singly
    position_bytes = len(c.records[e["positions"]["stream"]])
    assert position_bytes * 8 < 1.2 * w.size / 25
    single = codec.encode_arrays({"g_a.2.weight": w}, Policy().with_weight_rule(prune=0.7, bits=5))
    assert single.header["tensors"][0]["layout"] == "gaps"
    assert len(container.to_bytes(c)) < 0.75 * len(container.to_bytes(single))
    # a corrupt kernel size is refused in one line
    bad = container.Container(header={**c.header, "tensors": [dict(e, kernel=5)]}, records=c.records)
    with pytest.raises(DeepCompError, match="kernel size"):
        codec.decode_arrays(bad)


def test_granularity_stays_out_of_policies_that_do_not_use_it():
    assert "granularity" not in Policy().to_json()["rules"][2]
    kernel = Policy().with_weight_rule(prune=0.5, bits=4, granularity="kernel")
    assert Policy.from_json(kernel.to_json()) == kernel and kernel.to_json()["rules"][2]["granularity"] == "kernel"
    with pytest.raises(DeepCompError, match="granularity"):
        Rule(granularity="channel")
    with pytest.raises(DeepCompError, match="kernel"):
        Rule(prune_std=0.5, bits=4, granularity="kernel")
    with pytest.raises(DeepCompError, match="global"):
        codec.encode_arrays({"w.weight": np.ones((4, 4, 3, 3), np.float32)}, replace(kernel, global_prune=0.5))


def test_fp16_storage_on_request():
    a = np.linspace(-1, 1, 100, dtype=np.float32)
    c = codec.encode_arrays({"b": a}, Policy(rules=(Rule(storage="fp16"),)))
    back = codec.decode_arrays(c)["b"]
    assert back.dtype == np.float32 and np.array_equal(back, a.astype(np.float16).astype(np.float32))


def test_corrupt_header_descriptions_raise_package_error():
    a = np.random.default_rng(0).normal(size=(8, 8, 3, 3)).astype(np.float32)
    c = codec.encode_arrays({"w.weight": a}, Policy().with_weight_rule(prune=0.5, bits=3))
    for mutate in (
        lambda e: e.update(layout="weird"),
        lambda e: e.update(shape=[8, 8, 3, 4]),
        lambda e: e["indices"].update(count=e["indices"]["count"] + 5),
        lambda e: e.update(codebook=999),
        lambda e: (e.pop("gap_bits", None), e.update(layout="gaps")),
    ):
        bad = container.Container(header={**c.header, "tensors": [dict(c.header["tensors"][0], indices=dict(c.header["tensors"][0]["indices"]))]}, records=c.records)
        mutate(bad.header["tensors"][0])
        with pytest.raises(DeepCompError):
            codec.decode_arrays(container.from_bytes(container.to_bytes(bad)))
