"""A state_dict <-> the records of a deepcomp file, following a policy.

Works on NumPy arrays (any framework's tensors converted at the edge).  Per
tensor: prune (``pruning``), share (``weight_sharing``), code the positions
(``sparse_positions``) and the codebook indices (``huffman``), or store raw.

A shared tensor decodes to exactly ``codebook[index]`` at the kept positions
and 0 at the pruned ones.  Its elements are coded as symbols over the
alphabet ``k + 1`` (``k = len(codebook)``), symbol ``k`` standing for zero;
two layouts, the smaller chosen per tensor:

- ``dense``: one symbol per element.
- ``gaps``: a *background* symbol fills the tensor (zero for a pruned
  tensor, or the most frequent cluster of a tensor dominated by one value);
  Han's relative-index coding gives the positions of the other elements and
  one symbol per such element follows.  Huffman codes cost at least one bit
  per symbol, so this is what keeps skewed tensors near their entropy.
- ``kernels``: for a conv weight some of whose kernels (trailing spatial
  dimensions) are all zero, as kernel-granular pruning leaves it: the
  relative-index coding gives the positions of the other kernels, and every
  symbol of those kernels follows.  The positions cost one gap per kept
  kernel instead of one per kept weight.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from . import huffman, pruning, sparse_positions
from .container import Container
from .errors import DeepCompError
from .policy import Policy, Rule
from .weight_sharing import kmeans_share, uniform_codebook, uniform_share, uniform_share_per_channel

FORMAT_NAME = "deepcomp"
_RAW_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}


@dataclass
class Stream:
    """A Huffman-coded symbol stream and its record indices."""

    lengths: int
    stream: int
    nbits: int
    count: int

    def to_json(self) -> dict:
        return {"lengths": self.lengths, "stream": self.stream, "nbits": self.nbits, "count": self.count}


def _code(container: Container, symbols: np.ndarray, alphabet: int) -> Stream:
    freq = np.bincount(symbols, minlength=alphabet) if symbols.size else np.zeros(alphabet, np.int64)
    lengths = huffman.code_lengths(freq)
    payload, nbits = huffman.encode(symbols, lengths)
    return Stream(container.add(huffman.pack_lengths(lengths)), container.add(payload), int(nbits), int(symbols.size))


def _stream_cost(symbols: np.ndarray, alphabet: int) -> int:
    """Bits of the Huffman stream plus its packed length table."""
    freq = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.code_lengths(freq)
    return huffman.stream_bits(freq, lengths) + 8 * len(huffman.pack_lengths(lengths))


def _uncode(container: Container, entry: dict, source: str) -> np.ndarray:
    rec = container.records
    try:
        lengths = huffman.unpack_lengths(rec[entry["lengths"]])
        return huffman.decode(rec[entry["stream"]], int(entry["nbits"]), lengths, int(entry["count"]))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DeepCompError(f"{source}: bad stream description ({exc})") from None


@dataclass
class Plan:
    """What happens to one tensor: its rule and its mask (None: dense)."""

    rule: Rule
    mask: np.ndarray | None = None


def plan_tensors(arrays: Mapping[str, np.ndarray], policy: Policy) -> "OrderedDict[str, Plan]":
    """Rules and pruning masks for every tensor (global pruning if the policy says so)."""
    plans = OrderedDict((n, Plan(policy.rule_for(n, np.shape(a)))) for n, a in arrays.items())
    prunable = {n: arrays[n] for n, p in plans.items() if p.rule.prunes and _is_float(arrays[n])}
    if policy.global_prune is not None:
        for n, m in pruning.global_masks(prunable, policy.global_prune).items():
            plans[n].mask = m
    else:
        for n, a in prunable.items():
            r = plans[n].rule
            plans[n].mask = pruning.magnitude_mask(a, r.prune, r.granularity) if r.prune else pruning.threshold_mask(a, r.prune_std)
    return plans


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def _encode_raw(container: Container, name: str, a: np.ndarray, storage: str) -> dict:
    a = np.asarray(a)
    if _is_float(a):
        stored = a.astype(_RAW_DTYPES[storage])
    else:
        storage = "native"
        stored = a.astype(a.dtype.newbyteorder("<"))
    return {
        "name": name, "shape": list(a.shape), "dtype": a.dtype.name, "encoding": "raw",
        "storage": storage, "stored_dtype": stored.dtype.str, "data": container.add(stored.tobytes()),
    }


def _layout_cost(symbols: np.ndarray, alphabet: int, background: int) -> tuple[int, int, np.ndarray]:
    """(bits, gap width, gap stream) of the ``gaps`` layout with ``background``."""
    others = symbols != background
    gap_bits = sparse_positions.choose_gap_bits(others)
    gaps = sparse_positions.encode_gaps(others, gap_bits)
    return _stream_cost(gaps, 1 << gap_bits) + _stream_cost(symbols[others], alphabet), gap_bits, gaps


def _encode_shared(container: Container, name: str, a: np.ndarray, rule: Rule, mask: np.ndarray | None, channel_axis: int, seed: int) -> dict:
    a = np.asarray(a, dtype=np.float32)
    flat = a.ravel()
    kept = flat != 0
    if mask is not None:
        kept &= np.asarray(mask, dtype=bool).ravel()
    positions = np.flatnonzero(kept)
    entry = {"name": name, "shape": list(a.shape), "dtype": "float32", "encoding": "shared", "bits": rule.bits, "quantizer": rule.quantizer}
    if rule.quantizer == "uniform" and rule.per_channel and a.ndim >= 2:
        axis = channel_axis % a.ndim
        books, idx_full, scales = uniform_share_per_channel(np.where(kept.reshape(a.shape), a, 0.0), rule.bits, axis=axis)
        codebook, indices = books.astype(np.float32), idx_full.ravel()[positions]
        entry["channel_axis"] = axis
        entry["scales"] = container.add(scales.astype("<f8").tobytes())  # the codebooks are rebuilt from these
    else:
        values = flat[positions]
        shared = kmeans_share(values, rule.bits, init=rule.init, seed=seed) if rule.quantizer == "kmeans" else uniform_share(values, rule.bits)
        codebook, indices = shared.codebook, shared.indices
        if rule.quantizer == "kmeans":
            entry["init"] = rule.init
    k = codebook.shape[-1]
    if "scales" not in entry:
        entry["codebook"] = container.add(codebook.astype("<f4").tobytes())
    entry["codebook_shape"] = list(codebook.shape)
    entry["kept"] = int(positions.size)

    symbols = np.full(flat.size, k, dtype=np.int64)  # symbol k: zero
    symbols[positions] = indices
    freq = np.bincount(symbols, minlength=k + 1)
    best = (_stream_cost(symbols, k + 1), None, None, None)  # (bits, background, gap width, gap stream); dense
    # background candidates: zero, and the most frequent cluster when it dominates
    candidates = {k} if freq[k] else set()
    mode = int(np.argmax(freq[:k])) if k else k
    if freq[mode] * 2 > flat.size:
        candidates.add(mode)
    for background in sorted(candidates):
        if freq[background] * 4 < flat.size:  # too few to gain from gap coding
            continue
        cost, gap_bits, gaps = _layout_cost(symbols, k + 1, background)
        if cost < best[0]:
            best = (cost, background, gap_bits, gaps)
    ks = pruning.kernel_size(a.shape)
    if ks > 1 and freq[k]:
        kept_kernels = (symbols.reshape(-1, ks) != k).any(axis=1)
        if not kept_kernels.all():
            kernel_bits = sparse_positions.choose_gap_bits(kept_kernels)
            kernel_gaps = sparse_positions.encode_gaps(kept_kernels, kernel_bits)
            kernel_symbols = symbols.reshape(-1, ks)[kept_kernels].ravel()
            cost = _stream_cost(kernel_gaps, 1 << kernel_bits) + _stream_cost(kernel_symbols, k + 1)
            if cost < best[0]:
                best = (cost, "kernels", kernel_bits, kernel_gaps)
    _, background, gap_bits, gaps = best
    if background is None:
        entry["layout"] = "dense"
        entry["indices"] = _code(container, symbols, k + 1).to_json()
    elif background == "kernels":
        entry.update(layout="kernels", kernel=ks, gap_bits=int(gap_bits))
        entry["positions"] = _code(container, gaps, 1 << gap_bits).to_json()
        entry["indices"] = _code(container, kernel_symbols, k + 1).to_json()
    else:
        others = symbols != background
        entry.update(layout="gaps", background=int(background), gap_bits=int(gap_bits))
        entry["positions"] = _code(container, gaps, 1 << gap_bits).to_json()
        entry["indices"] = _code(container, symbols[others], k + 1).to_json()
    return entry


def encode_arrays(
    arrays: Mapping[str, np.ndarray],
    policy: Policy | None = None,
    meta: Mapping | None = None,
    channel_axes: Mapping[str, int] | None = None,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Container:
    """Encode named arrays into a ``Container`` (header + records)."""
    policy = policy or Policy()
    channel_axes = channel_axes or {}
    container = Container(header={"format": FORMAT_NAME, **(meta or {}), "policy": policy.to_json(), "tensors": []})
    plans = plan_tensors(arrays, policy)
    items = list(plans.items())
    for name, plan in progress(items) if progress else items:
        a = np.asarray(arrays[name])
        if plan.rule.bits is not None and _is_float(a) and a.size > 0:
            entry = _encode_shared(container, name, a, plan.rule, plan.mask, channel_axes.get(name, 0), seed)
        else:
            entry = _encode_raw(container, name, a, plan.rule.storage)
        container.header["tensors"].append(entry)
    return container


def entry_codebook(container: Container, e: dict, source: str = "file") -> np.ndarray:
    """The float32 codebook of a shared tensor, shaped ``codebook_shape``."""
    book_shape = tuple(e["codebook_shape"])
    if len(book_shape) not in (1, 2):
        raise DeepCompError(f"{source}: codebook of {e['name']} has a bad shape")
    if "scales" in e:  # per-channel uniform: one float64 step per channel
        scales = np.frombuffer(container.records[e["scales"]], dtype="<f8")
        if len(book_shape) != 2 or scales.size != book_shape[0]:
            raise DeepCompError(f"{source}: scales of {e['name']} do not fit its codebook shape")
        codebook = np.concatenate([uniform_codebook(s, int(e["bits"])) for s in scales]) if scales.size else np.zeros(0, np.float32)
    else:
        codebook = np.frombuffer(container.records[e["codebook"]], dtype="<f4")
    if codebook.size != int(np.prod(book_shape, dtype=np.int64)):
        raise DeepCompError(f"{source}: codebook of {e['name']} has the wrong size")
    return codebook.reshape(book_shape)


def _decode_shared(container: Container, e: dict, source: str) -> np.ndarray:
    shape = tuple(e["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    book_shape = tuple(e["codebook_shape"])
    codebook = entry_codebook(container, e, source)
    k = book_shape[-1]
    # symbol k is zero
    book = np.concatenate([codebook, np.zeros(book_shape[:-1] + (1,), np.float32)], axis=-1)
    coded = _uncode(container, e["indices"], source)
    if e["layout"] == "dense":
        symbols = coded
        if symbols.size != size:
            raise DeepCompError(f"{source}: {e['name']} has {symbols.size} symbols for {size} elements")
    elif e["layout"] == "gaps":
        background = int(e["background"])
        gaps = _uncode(container, e["positions"], source)
        positions = sparse_positions.decode_positions(gaps, int(e["gap_bits"]), size)
        if coded.size != positions.size or not 0 <= background <= k:
            raise DeepCompError(f"{source}: positions and symbols of {e['name']} do not match")
        symbols = np.full(size, background, dtype=coded.dtype if coded.dtype.itemsize >= 2 else np.uint16)
        symbols[positions] = coded
    elif e["layout"] == "kernels":
        ks = pruning.kernel_size(shape)
        if int(e.get("kernel", 0)) != ks or ks < 2:
            raise DeepCompError(f"{source}: the kernel size of {e['name']} does not fit its shape")
        kernels = sparse_positions.decode_positions(_uncode(container, e["positions"], source), int(e["gap_bits"]), size // ks)
        if coded.size != kernels.size * ks:
            raise DeepCompError(f"{source}: kernels and symbols of {e['name']} do not match")
        symbols = np.full((size // ks, ks), k, dtype=coded.dtype if coded.dtype.itemsize >= 2 else np.uint16)
        symbols[kernels] = coded.reshape(-1, ks)
        symbols = symbols.ravel()
    else:
        raise DeepCompError(f"{source}: unknown layout {e['layout']!r} for {e['name']}")
    if symbols.size and int(symbols.max()) > k:
        raise DeepCompError(f"{source}: a symbol of {e['name']} lies outside its codebook")
    if len(book_shape) == 2:  # per-channel codebooks
        axis = int(e["channel_axis"])
        if not 0 <= axis < len(shape) or shape[axis] != book_shape[0]:
            raise DeepCompError(f"{source}: channel axis of {e['name']} does not fit its shape")
        inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
        channel = (np.arange(size) // inner) % shape[axis]
        return book[channel, symbols].reshape(shape)
    return book[symbols].reshape(shape)


def _decode_raw(container: Container, e: dict, source: str) -> np.ndarray:
    stored = np.dtype(e["stored_dtype"])
    raw = container.records[e["data"]]
    shape = tuple(e["shape"])
    if len(raw) != stored.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise DeepCompError(f"{source}: raw data of {e['name']} has the wrong size")
    return np.frombuffer(raw, dtype=stored).reshape(shape).astype(np.dtype(e["dtype"]))


def decode_arrays(container: Container, source: str = "file") -> "OrderedDict[str, np.ndarray]":
    """Decode every tensor of a container to NumPy arrays."""
    if container.header.get("format") != FORMAT_NAME or not isinstance(container.header.get("tensors"), list):
        raise DeepCompError(f"{source}: not a deepcomp model (header has no tensor list)")
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for e in container.header["tensors"]:
        try:
            if e["encoding"] == "shared":
                out[e["name"]] = _decode_shared(container, e, source)
            elif e["encoding"] == "raw":
                out[e["name"]] = _decode_raw(container, e, source)
            else:
                raise DeepCompError(f"{source}: unknown encoding {e['encoding']!r}")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DeepCompError(f"{source}: bad description of tensor {e.get('name', '?') if isinstance(e, dict) else '?'} ({exc})") from None
    return out


def tensor_records(entry: dict) -> list[int]:
    """The record indices one tensor entry uses."""
    recs = [entry[k] for k in ("data", "codebook", "scales") if k in entry]
    for k in ("indices", "positions"):
        if k in entry:
            recs += [entry[k]["lengths"], entry[k]["stream"]]
    return recs
