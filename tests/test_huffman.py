"""Tests for deepcomp.huffman: round trips, optimality, dahuffman cross-checks, bad input."""

import heapq

import numpy as np
import pytest
from bitarray import bitarray
from bitarray.util import canonical_decode
from dahuffman import HuffmanCodec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepcomp import huffman
from deepcomp.errors import DeepCompError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_symbols(seed: int, alphabet_size: int, count: int, kind: str) -> np.ndarray:
    """Draw ``count`` symbols below ``alphabet_size`` from a distribution of the given kind."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        symbols = rng.integers(0, alphabet_size, count)
    elif kind == "laplace":
        centre, scale = rng.uniform(0, alphabet_size), rng.uniform(0.3, alphabet_size / 4 + 0.5)
        symbols = np.round(rng.laplace(centre, scale, count))
    elif kind == "geometric":
        symbols = rng.geometric(rng.uniform(0.05, 0.9), count) - 1
    else:  # "constant"
        symbols = np.full(count, rng.integers(0, alphabet_size))
    return np.clip(symbols, 0, alphabet_size - 1).astype(np.int64)


symbol_streams = st.builds(
    random_symbols,
    seed=st.integers(0, 2**32 - 1),
    alphabet_size=st.one_of(st.integers(1, 40), st.integers(1, 300), st.sampled_from([256, 257, 4096, 65536])),
    count=st.integers(0, 3000),
    kind=st.sampled_from(["uniform", "laplace", "geometric", "constant"]),
)


def optimal_cost(frequencies) -> int:
    """Reference optimal prefix-code cost: the sum of all merged weights in Huffman's algorithm."""
    heap = [int(f) for f in frequencies if f > 0]
    if len(heap) == 1:
        return heap[0]  # a lone symbol costs one bit per occurrence
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def reference_code_table(lengths) -> dict[int, tuple[int, int]]:
    """Canonical code by the textbook loop: symbol -> (bitsize, value), as dahuffman wants it."""
    table, value, previous_length = {}, 0, 0
    for length, symbol in sorted((int(n), s) for s, n in enumerate(lengths) if n > 0):
        value <<= length - previous_length
        table[symbol] = (length, value)
        value, previous_length = value + 1, length
    return table


def kraft_sum(lengths) -> float:
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(np.sum(2.0 ** -lengths[lengths > 0]))


# ------------------------------------------------------------------ round trips


@SETTINGS
@given(symbols=symbol_streams)
def test_round_trip(symbols):
    alphabet_size = int(symbols.max()) + 1 if symbols.size else 1
    frequencies = np.bincount(symbols, minlength=alphabet_size)
    lengths = huffman.code_lengths(frequencies)
    assert lengths.dtype == np.uint8 and lengths.shape == frequencies.shape
    assert np.array_equal(lengths > 0, frequencies > 0)
    assert kraft_sum(lengths) <= 1.0
    payload, nbits = huffman.encode(symbols, lengths)
    assert nbits == huffman.stream_bits(frequencies, lengths)
    assert len(payload) == (nbits + 7) // 8
    table = huffman.unpack_lengths(huffman.pack_lengths(lengths))
    decoded = huffman.decode(payload, nbits, table, symbols.size)
    assert decoded.dtype == huffman.symbol_dtype(table.size)
    assert np.array_equal(decoded, symbols)


@SETTINGS
@given(symbols=symbol_streams)
def test_cost_is_optimal(symbols):
    frequencies = np.bincount(symbols)
    lengths = huffman.code_lengths(frequencies)
    if symbols.size:
        assert huffman.stream_bits(frequencies, lengths) == optimal_cost(frequencies)


@SETTINGS
@given(
    frequencies=st.lists(st.integers(0, 10**6), min_size=1, max_size=200).map(np.array),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_frequencies_give_valid_optimal_codes(frequencies, seed):
    lengths = huffman.code_lengths(frequencies)
    assert np.array_equal(lengths > 0, frequencies > 0)
    assert kraft_sum(lengths) <= 1.0
    if frequencies.any():
        assert huffman.stream_bits(frequencies, lengths) == optimal_cost(frequencies)
        symbols = np.random.default_rng(seed).permutation(np.repeat(np.arange(frequencies.size), np.minimum(frequencies, 50)))
        payload, nbits = huffman.encode(symbols, lengths)
        assert np.array_equal(huffman.decode(payload, nbits, lengths, symbols.size), symbols)


def test_empty_stream():
    lengths = huffman.code_lengths(np.zeros(5, dtype=np.int64))
    assert not lengths.any()
    assert huffman.encode(np.zeros(0, dtype=np.int64), lengths) == (b"", 0)
    assert huffman.decode(b"", 0, lengths, 0).size == 0
    assert huffman.unpack_lengths(huffman.pack_lengths(lengths)).size == 0
    assert huffman.entropy_bits(np.zeros(3, dtype=np.int64)) == 0.0
    assert huffman.stream_bits(np.zeros(3, dtype=np.int64), lengths) == 0


def test_single_symbol_gets_one_bit():
    frequencies = np.bincount(np.full(13, 7))
    lengths = huffman.code_lengths(frequencies)
    assert lengths.tolist() == [0] * 7 + [1]
    payload, nbits = huffman.encode(np.full(13, 7), lengths)
    assert nbits == 13 and payload == bytes(2)
    assert huffman.decode(payload, nbits, lengths, 13).tolist() == [7] * 13
    assert huffman.entropy_bits(frequencies) == 0.0


def test_large_alphabet_decodes_to_uint16():
    symbols = np.random.default_rng(0).integers(0, 5000, 20000)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=5000))
    payload, nbits = huffman.encode(symbols, lengths)
    decoded = huffman.decode(payload, nbits, lengths, symbols.size)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, symbols)


# ------------------------------------------------------- maximum code length


def fibonacci(count: int) -> np.ndarray:
    numbers = [1, 1]
    while len(numbers) < count:
        numbers.append(numbers[-1] + numbers[-2])
    return np.array(numbers, dtype=np.int64)


@pytest.mark.parametrize("count", [33, 40, 60, 90])
def test_fibonacci_frequencies_are_limited_to_max_length(count):
    frequencies = fibonacci(count)  # unconstrained Huffman gives lengths up to count - 1
    lengths = huffman.code_lengths(frequencies)
    assert lengths.max() <= huffman.MAX_CODE_LENGTH
    assert kraft_sum(lengths) <= 1.0 and (lengths > 0).all()
    # flattening only touches the rarest symbols: the cost stays within 1e-4 of optimal
    assert huffman.stream_bits(frequencies, lengths) <= 1.0001 * optimal_cost(frequencies)
    symbols = np.repeat(np.arange(count), np.minimum(frequencies, 3))
    payload, nbits = huffman.encode(symbols, lengths)
    table = huffman.unpack_lengths(huffman.pack_lengths(lengths))
    assert np.array_equal(huffman.decode(payload, nbits, table, symbols.size), symbols)


def test_fibonacci_below_limit_is_untouched():
    frequencies = fibonacci(30)
    lengths = huffman.code_lengths(frequencies)
    assert lengths.max() == 29
    assert huffman.stream_bits(frequencies, lengths) == optimal_cost(frequencies)


def test_max_length_is_what_canonical_decode_accepts():
    too_long = [0] * (huffman.MAX_CODE_LENGTH + 1) + [2]
    longest = [0] * huffman.MAX_CODE_LENGTH + [2]
    assert list(canonical_decode(bitarray("0" * huffman.MAX_CODE_LENGTH), longest, [0, 1])) == [0]
    with pytest.raises(ValueError):
        list(canonical_decode(bitarray("0" * 32), too_long, [0, 1]))


# ------------------------------------------------- entropy and stream sizes


@pytest.mark.parametrize("alphabet_size", [32, 256])
def test_laplacian_stream_is_close_to_entropy(alphabet_size):
    rng = np.random.default_rng(alphabet_size)
    symbols = np.clip(np.round(rng.laplace(alphabet_size / 2, alphabet_size / 16, 200_000)), 0, alphabet_size - 1)
    frequencies = np.bincount(symbols.astype(np.int64), minlength=alphabet_size)
    lengths = huffman.code_lengths(frequencies)
    entropy = huffman.entropy_bits(frequencies)
    coded = huffman.stream_bits(frequencies, lengths)
    assert entropy <= coded <= 1.03 * entropy
    assert coded == huffman.encode(symbols.astype(np.int64), lengths)[1]


def test_entropy_of_simple_distributions():
    assert huffman.entropy_bits(np.array([5, 5, 5, 5])) == pytest.approx(40.0)
    assert huffman.entropy_bits(np.array([1, 0, 1])) == pytest.approx(2.0)
    assert huffman.entropy_bits(np.array([3, 1])) == pytest.approx(-3 * np.log2(0.75) - np.log2(0.25))


def test_stream_bits_counts_every_occurrence():
    assert huffman.stream_bits(np.array([4, 2, 1, 1]), np.array([1, 2, 3, 3])) == 4 + 4 + 3 + 3
    assert huffman.stream_bits(np.array([4, 2]), np.array([1, 2, 2])) == 8  # shorter frequency table
    with pytest.raises(DeepCompError):
        huffman.stream_bits(np.array([1, 1, 1]), np.array([1, 1]))


# ------------------------------------------------ independent dahuffman checks


small_alphabet_streams = st.builds(
    random_symbols,
    seed=st.integers(0, 2**32 - 1),
    alphabet_size=st.integers(1, 300),
    count=st.integers(1, 1500),
    kind=st.sampled_from(["uniform", "laplace", "geometric", "constant"]),
)


@SETTINGS
@given(symbols=small_alphabet_streams)
def test_dahuffman_optimal_cost_matches_with_eof(symbols):
    frequencies = np.bincount(symbols)
    used = np.flatnonzero(frequencies)
    codec = HuffmanCodec.from_frequencies(dict(zip(used.tolist(), frequencies[used].tolist())))
    table = codec.get_code_table()
    symbol_bits = sum(bits * int(frequencies[s]) for s, (bits, _) in table.items() if isinstance(s, int))
    (eof_bits,) = [bits for s, (bits, _) in table.items() if not isinstance(s, int)]
    # dahuffman adds an end-of-file symbol of frequency 1: give ours the same extended alphabet.
    extended = np.append(frequencies, 1)
    assert huffman.stream_bits(extended, huffman.code_lengths(extended)) == symbol_bits + eof_bits
    # and without it, ours is never worse than dahuffman's code on the real symbols
    assert huffman.stream_bits(frequencies, huffman.code_lengths(frequencies)) <= symbol_bits


@SETTINGS
@given(symbols=small_alphabet_streams)
def test_dahuffman_reads_and_writes_our_canonical_code(symbols):
    lengths = huffman.code_lengths(np.bincount(symbols))
    payload, nbits = huffman.encode(symbols, lengths)
    table = reference_code_table(lengths)
    assert {s: (len(c), int(c.to01(), 2)) for s, c in huffman.canonical_code(lengths).items()} == table

    # dahuffman's bit-by-bit table decoder reads our payload; the zero padding
    # may decode to extra symbols after the first len(symbols), so drop them
    # and check that the symbols read fill exactly nbits.
    decoded = list(HuffmanCodec(table, eof="EOF").decode_streaming(payload))[: symbols.size]
    assert decoded == symbols.tolist()
    assert sum(table[s][0] for s in decoded) == nbits

    # dahuffman's encoder with an 8-bit all-zero EOF writes exactly our zero padding.
    assert HuffmanCodec({**table, "EOF": (8, 0)}, eof="EOF").encode(symbols.tolist()) == payload


def test_canonical_code_is_ordered_by_length_then_symbol():
    lengths = np.array([3, 0, 2, 3, 2, 0, 0, 3, 3])
    count, symbol = huffman.decode_tables(lengths)
    assert count == [0, 0, 2, 4]
    assert symbol == [2, 4, 0, 3, 7, 8]
    code = huffman.canonical_code(lengths)
    assert {s: c.to01() for s, c in code.items()} == {2: "00", 4: "01", 0: "100", 3: "101", 7: "110", 8: "111"}
    bits = bitarray("".join(code[s].to01() for s in [8, 2, 0, 4, 7, 3]))
    assert list(canonical_decode(bits, count, symbol)) == [8, 2, 0, 4, 7, 3]


# ---------------------------------------------------------- length tables


@SETTINGS
@given(data=st.binary(max_size=64))
def test_unpack_lengths_accepts_only_canonical_tables(data):
    try:
        lengths = huffman.unpack_lengths(data)
    except DeepCompError:
        return
    assert huffman.pack_lengths(lengths) == data


def test_pack_lengths_layout():
    assert huffman.pack_lengths(np.array([1, 1, 0, 0])) == bytes([2, 0b00001000, 0b01000000])
    assert huffman.pack_lengths(np.zeros(70000, dtype=np.uint8)) == b"\x00"
    big = np.zeros(65536, dtype=np.uint8)
    big[[0, -1]] = 1
    packed = huffman.pack_lengths(big)
    assert packed[:3] == bytes([0x80, 0x80, 0x04]) and len(packed) == 3 + 65536 * 5 // 8
    assert np.array_equal(huffman.unpack_lengths(packed), big)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\x80\x80\x80\x01", "too long"),
        (b"\x81\x00" + bytes(1), "minimally"),
        (b"\x81\x80\x04" + bytes(40961), "65537 symbols"),
        (bytes([2, 0b00001000]), "expected 2"),
        (bytes([2, 0b00001000, 0b01000000, 0]), "expected 2"),
        (bytes([2, 0b00001000, 0b01000001]), "padding"),
        (bytes([2, 0b00001000, 0b00000000]), "ends with a zero"),
        (bytes([3, 0b00001000, 0b01000010]), "Kraft"),  # lengths 1, 1, 1
        ("text", "must be bytes"),
    ],
)
def test_unpack_lengths_rejects_malformed_tables(data, reason):
    with pytest.raises(DeepCompError, match=reason):
        huffman.unpack_lengths(data)


def test_unpack_lengths_accepts_longest_code():
    assert huffman.unpack_lengths(bytes([1, 0b11111000])).tolist() == [31]


@pytest.mark.parametrize(
    "lengths",
    [
        [1, 1, 1],
        [32],
        [-1, 1],
        np.zeros((2, 2), dtype=np.uint8),
        [0.5, 1.0],
        np.eye(1, 65537, 65536, dtype=np.uint8)[0],  # one code, but symbol 65536
    ],
)
def test_bad_length_tables_raise(lengths):
    with pytest.raises(DeepCompError):
        huffman.pack_lengths(lengths)


# ------------------------------------------------------- malformed streams


def small_stream():
    symbols = np.array([0, 1, 2, 3, 3, 3, 3, 2, 2, 1, 0, 3, 3, 2, 1, 3, 3])
    lengths = huffman.code_lengths(np.bincount(symbols))
    payload, nbits = huffman.encode(symbols, lengths)
    return symbols, lengths, payload, nbits


def test_decode_rejects_inconsistent_streams():
    symbols, lengths, payload, nbits = small_stream()
    count = symbols.size
    bad_calls = [
        (payload[:-1], nbits, lengths, count),  # payload too short
        (payload + b"\x00", nbits, lengths, count),  # payload too long
        (payload, nbits - 1, lengths, count),  # cut inside the last codeword
        (payload, nbits, lengths, count + 1),  # too few codewords
        (payload, nbits, lengths, count - 1),  # too many codewords
        (payload, nbits, lengths, 0),
        (payload, -1, lengths, count),
        (payload, nbits, lengths, -1),
        (payload, float(nbits), lengths, count),
        ("text", nbits, lengths, count),
        (payload, nbits, np.zeros(4, dtype=np.uint8), count),  # empty code
        (payload, nbits, np.array([1, 1, 1, 1]), count),  # not a prefix code
    ]
    for call in bad_calls:
        with pytest.raises(DeepCompError):
            huffman.decode(*call)


def test_decode_rejects_unused_codeword_of_incomplete_code():
    lengths = np.array([0, 1])  # symbol 1 is "0"; "1" is no codeword
    assert huffman.decode(b"\x00", 3, lengths, 3).tolist() == [1, 1, 1]
    with pytest.raises(DeepCompError, match="corrupt"):
        huffman.decode(b"\x20", 3, lengths, 3)


@SETTINGS
@given(flips=st.lists(st.integers(0, 10**6), min_size=1, max_size=4), count_delta=st.integers(-2, 2))
def test_corrupted_streams_raise_only_deepcomp_errors(flips, count_delta):
    symbols, lengths, payload, nbits = small_stream()
    corrupted = bytearray(payload)
    for flip in flips:
        corrupted[(flip // 8) % len(corrupted)] ^= 1 << (flip % 8)
    try:
        decoded = huffman.decode(bytes(corrupted), nbits, lengths, symbols.size + count_delta)
    except DeepCompError:
        return
    assert decoded.size == symbols.size + count_delta


def test_encode_rejects_symbols_without_codes():
    lengths = np.array([1, 1, 0])
    for bad in (np.array([0, 2]), np.array([0, 3]), np.array([-1]), np.array([0.0, 1.0])):
        with pytest.raises(DeepCompError):
            huffman.encode(bad, lengths)


def test_bad_frequencies_raise():
    for bad in (np.array([-1, 2]), np.array([[1, 2]]), np.array([0.5])):
        with pytest.raises(DeepCompError):
            huffman.code_lengths(bad)
