"""Tests for deepcomp.sparse_positions: gap coding round trips, width choice, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcomp import huffman
from deepcomp.errors import DeepCompError
from deepcomp.sparse_positions import choose_gap_bits, decode_positions, encode_gaps, filler_symbol

SETTINGS = settings(max_examples=150, deadline=None)


def random_mask(seed: int, size: int, density: float, clustered: bool) -> np.ndarray:
    """A mask of ``size`` elements with about ``density`` True, optionally in long runs."""
    rng = np.random.default_rng(seed)
    if not clustered:
        return rng.random(size) < density
    # runs of random length alternate between kept and pruned blocks
    runs = rng.geometric(rng.uniform(0.001, 0.2), size + 1)
    values = rng.random(runs.size) < density
    return np.repeat(values, runs)[:size]


masks = st.builds(
    random_mask,
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 4000),
    density=st.one_of(st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 1.0]), st.floats(0, 1)),
    clustered=st.booleans(),
)
gap_widths = st.integers(1, 16)


def reference_gaps(mask: np.ndarray, gap_bits: int) -> list[int]:
    """Gap coding by the obvious loop: count zeros, emit a filler whenever the count reaches F."""
    filler, gaps, zeros = (1 << gap_bits) - 1, [], 0
    for kept in mask:
        if kept:
            gaps.append(zeros)
            zeros = 0
        else:
            zeros += 1
            if zeros == filler:
                gaps.append(filler)
                zeros = 0
    while gaps and gaps[-1] == filler:  # fillers after the last kept weight are never written
        gaps.pop()
    return gaps


# ------------------------------------------------------------------ round trips


@SETTINGS
@given(mask=masks, gap_bits=gap_widths)
def test_round_trip(mask, gap_bits):
    gaps = encode_gaps(mask, gap_bits)
    assert gaps.dtype == np.uint16
    assert gaps.size == 0 or (gaps.max() <= filler_symbol(gap_bits) and gaps[-1] != filler_symbol(gap_bits))
    positions = decode_positions(gaps, gap_bits, mask.size)
    assert positions.dtype == np.int64
    assert np.array_equal(positions, np.flatnonzero(mask))


@settings(max_examples=60, deadline=None)
@given(mask=masks.filter(lambda m: m.size <= 1500), gap_bits=gap_widths)
def test_matches_reference_loop(mask, gap_bits):
    assert encode_gaps(mask, gap_bits).tolist() == reference_gaps(mask, gap_bits)


@SETTINGS
@given(mask=masks, gap_bits=gap_widths)
def test_round_trip_through_huffman(mask, gap_bits):
    gaps = encode_gaps(mask, gap_bits)
    lengths = huffman.code_lengths(np.bincount(gaps, minlength=filler_symbol(gap_bits) + 1))
    payload, nbits = huffman.encode(gaps, lengths)
    table = huffman.unpack_lengths(huffman.pack_lengths(lengths))
    decoded_gaps = huffman.decode(payload, nbits, table, gaps.size)
    restored = np.zeros(mask.size, dtype=bool)
    restored[decode_positions(decoded_gaps, gap_bits, mask.size)] = True
    assert np.array_equal(restored, mask)


def test_example_with_three_bit_gaps():
    mask = np.zeros(30, dtype=bool)
    mask[[0, 3, 4, 12, 29]] = True
    # zeros before each kept weight: 0, 2, 0, 7, 16; F = 7
    assert encode_gaps(mask, 3).tolist() == [0, 2, 0, 7, 0, 7, 7, 2]
    assert decode_positions(np.array([0, 2, 0, 7, 0, 7, 7, 2]), 3, 30).tolist() == [0, 3, 4, 12, 29]


def test_one_bit_gaps_are_the_mask_itself():
    mask = np.array([False, True, True, False, False, True, False, False])
    # F = 1: every pruned weight before the last kept one is a filler
    assert encode_gaps(mask, 1).tolist() == [1, 0, 0, 1, 1, 0]
    assert decode_positions(encode_gaps(mask, 1), 1, mask.size).tolist() == [1, 2, 5]


@pytest.mark.parametrize("gap_bits", [1, 4, 8, 16])
def test_dense_and_empty_masks(gap_bits):
    everything = np.ones(1000, dtype=bool)
    assert encode_gaps(everything, gap_bits).tolist() == [0] * 1000
    assert np.array_equal(decode_positions(np.zeros(1000, np.uint16), gap_bits, 1000), np.arange(1000))
    for nothing in (np.zeros(1000, dtype=bool), np.zeros(0, dtype=bool)):
        assert encode_gaps(nothing, gap_bits).size == 0
        assert decode_positions(encode_gaps(nothing, gap_bits), gap_bits, nothing.size).size == 0


def test_multidimensional_mask_is_read_flat():
    mask = np.zeros((3, 4), dtype=bool)
    mask[1, 2] = mask[2, 3] = True
    assert decode_positions(encode_gaps(mask, 4), 4, mask.size).tolist() == [6, 11]


# ------------------------------------------------------------- width choice


def coded_bits(mask: np.ndarray, gap_bits: int) -> int:
    """What a gap stream of this width really costs: Huffman-encoded bits plus the packed table."""
    gaps = encode_gaps(mask, gap_bits)
    lengths = huffman.code_lengths(np.bincount(gaps, minlength=filler_symbol(gap_bits) + 1))
    return huffman.encode(gaps, lengths)[1] + 8 * len(huffman.pack_lengths(lengths))


@settings(max_examples=25, deadline=None)
@given(mask=masks.filter(lambda m: m.size <= 2000))
def test_choose_gap_bits_minimises_real_cost(mask):
    costs = {gap_bits: coded_bits(mask, gap_bits) for gap_bits in range(1, 17)}
    chosen = choose_gap_bits(mask)
    assert costs[chosen] == min(costs.values())
    assert chosen == min(b for b, cost in costs.items() if cost == costs[chosen])  # ties go to the first


def test_choose_gap_bits_follows_sparsity():
    rng = np.random.default_rng(0)
    sparse = rng.random(200_000) < 0.005
    dense = rng.random(200_000) < 0.5
    assert choose_gap_bits(sparse) > choose_gap_bits(dense)
    assert choose_gap_bits(sparse, candidates=[3, 4]) in (3, 4)


def test_choose_gap_bits_on_trivial_masks():
    assert choose_gap_bits(np.ones(500, dtype=bool)) == 1
    assert choose_gap_bits(np.zeros(500, dtype=bool)) == 1
    assert choose_gap_bits(np.zeros(0, dtype=bool), candidates=[5, 8]) == 5


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("gaps", "gap_bits", "size", "reason"),
    [
        (np.array([0, 8]), 3, 100, "0..7"),  # symbol above the filler
        (np.array([-1]), 3, 100, "0..7"),
        (np.array([0, 7]), 3, 100, "ends with a filler"),
        (np.array([0, 7, 2]), 3, 10, "past mask size"),  # position 10 in a mask of 10
        (np.array([5]), 4, 5, "past mask size"),
        (np.array([1.0]), 3, 100, "integer"),
        (np.array([[1]]), 3, 100, "1-D"),
        (np.array([1]), 0, 100, "gap width"),
        (np.array([1]), 17, 100, "gap width"),
        (np.array([1]), True, 100, "gap width"),
        (np.array([1]), 3.0, 100, "gap width"),
        (np.array([1]), 3, -1, "mask size"),
        (np.array([1]), 3, 2.5, "mask size"),
    ],
)
def test_decode_positions_rejects_malformed_gaps(gaps, gap_bits, size, reason):
    with pytest.raises(DeepCompError, match=reason):
        decode_positions(gaps, gap_bits, size)


@SETTINGS
@given(gaps=st.lists(st.integers(-2, 70000), max_size=50), gap_bits=st.integers(-1, 18), size=st.integers(0, 10**5))
def test_random_gaps_raise_only_deepcomp_errors(gaps, gap_bits, size):
    try:
        positions = decode_positions(np.array(gaps, dtype=np.int64), gap_bits, size)
    except DeepCompError:
        return
    assert np.all(np.diff(positions) > 0) and (positions.size == 0 or 0 <= positions[0] and positions[-1] < size)


def test_encode_rejects_bad_masks_and_widths():
    with pytest.raises(DeepCompError, match="boolean"):
        encode_gaps(np.array([0, 1, 1]), 4)
    with pytest.raises(DeepCompError, match="gap width"):
        encode_gaps(np.ones(3, dtype=bool), 0)
    with pytest.raises(DeepCompError):
        choose_gap_bits(np.ones(3, dtype=bool), candidates=[])
    with pytest.raises(DeepCompError):
        choose_gap_bits(np.ones(3, dtype=bool), candidates=[4, 20])
