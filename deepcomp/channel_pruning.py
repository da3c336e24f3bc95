"""Structured (channel) pruning on plain state_dicts: which channels to keep, and the thinner tensors.

A *channel group* names every tensor axis that indexes one channel
dimension of a network: the output axis of the conv that produces the
channels (and its bias), the per-channel parameters in between (a GDN's
``beta`` and both axes of its ``gamma``, an entropy bottleneck's density
model), and the input axis of every conv that consumes them.  Removing
channel ``c`` of a group removes index ``c`` on each of those axes at once,
so the pruned network is physically thinner and still consistent.  Groups
for CompressAI models come from :func:`deepcomp.zoo.channel_groups`; this
module knows nothing about CompressAI.

A :class:`Slot` may split its axis into ``blocks`` equal blocks that are all
indexed by the group's channels (a conv producing ``[scales, means]`` for
each latent channel has two blocks).

Importance (which channels go first)
    ``"l1"``: the L1 norm of each channel's producing filter (Li et al.,
    *Pruning Filters for Efficient ConvNets*, 2017); ``"l1-product"``: that
    times the L1 norm of the consuming weights of the channel (a channel that
    nothing reads is unimportant however large its filter); ``"activation"``:
    a measured per-channel activity (e.g. the mean absolute deviation of the
    channel's activations on validation crops, which a following GDN does not
    normalise away) times the consuming weights' L1 norm.  Ties are broken by
    index, so the selection is deterministic.

Everything here works on ``torch.Tensor`` or NumPy state_dicts alike and is
pure: the input state_dict is never modified.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .errors import DeepCompError

ROLES = ("producer", "consumer", "param")
IMPORTANCE = ("l1", "l1-product", "activation")


class Slot(NamedTuple):
    """One axis of one tensor indexed by a group's channels."""

    key: str
    axis: int
    role: str = "param"  # producer (the filters that make the channel), consumer (reads it), param (per-channel)
    blocks: int = 1  # the axis holds ``blocks`` consecutive copies of the channel range


@dataclass(frozen=True)
class ChannelGroup:
    """Tensor axes that all index the same channels; ``point`` names the module whose output carries them."""

    name: str
    slots: tuple
    point: str | None = None

    def __post_init__(self) -> None:
        slots = tuple(s if isinstance(s, Slot) else Slot(*s) for s in self.slots)
        object.__setattr__(self, "slots", slots)
        for s in slots:
            if s.role not in ROLES:
                raise DeepCompError(f"channel group {self.name}: unknown role {s.role!r} of {s.key}")
            if s.blocks < 1:
                raise DeepCompError(f"channel group {self.name}: {s.key} has {s.blocks} blocks")

    @property
    def keys(self) -> list[str]:
        return sorted({s.key for s in self.slots})

    def by_role(self, role: str) -> list[Slot]:
        return [s for s in self.slots if s.role == role]


# ---------------------------------------------------------------- shapes
def _shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in (t.shape if hasattr(t, "shape") else t))


def shapes_of(state_dict: Mapping) -> "OrderedDict[str, tuple[int, ...]]":
    """Name -> shape of every tensor (tensors or shapes accepted)."""
    return OrderedDict((k, _shape(v)) for k, v in state_dict.items())


def group_size(shapes: Mapping, group: ChannelGroup) -> int:
    """The number of channels of ``group`` in ``shapes``; a one-line error if its slots disagree."""
    sizes = {}
    for s in group.slots:
        if s.key not in shapes:
            raise DeepCompError(f"channel group {group.name}: no tensor {s.key}")
        shape = _shape(shapes[s.key])
        if not -len(shape) <= s.axis < len(shape):
            raise DeepCompError(f"channel group {group.name}: {s.key} has no axis {s.axis}")
        n = shape[s.axis]
        if n % s.blocks:
            raise DeepCompError(f"channel group {group.name}: axis {s.axis} of {s.key} ({n}) does not split into {s.blocks} blocks")
        sizes[(s.key, s.axis)] = n // s.blocks
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{k}[{a}]: {n}" for (k, a), n in sizes.items())
        raise DeepCompError(f"channel group {group.name} has inconsistent widths ({detail})")
    return next(iter(sizes.values()))


def widths(shapes: Mapping, groups: Sequence[ChannelGroup]) -> "OrderedDict[str, int]":
    """Group name -> number of channels, every group checked for consistency."""
    return OrderedDict((g.name, group_size(shapes, g)) for g in groups)


def kept_count(size: int, ratio: float) -> int:
    """Channels kept when pruning ``ratio`` of ``size``: ``size - round(ratio * size)``, at least one."""
    if not 0.0 <= ratio < 1.0 or ratio != ratio:
        raise DeepCompError(f"channel pruning ratio must be in [0, 1), got {ratio}")
    return max(1, size - int(round(ratio * size)))


def pruned_shapes(shapes: Mapping, groups: Sequence[ChannelGroup], new_widths: Mapping[str, int]) -> "OrderedDict[str, tuple[int, ...]]":
    """The shapes after giving each group in ``new_widths`` that many channels."""
    out = OrderedDict((k, list(_shape(v))) for k, v in shapes.items())
    by_name = {g.name: g for g in groups}
    for name, w in new_widths.items():
        if name not in by_name:
            raise DeepCompError(f"unknown channel group {name!r}; groups: {', '.join(by_name)}")
        g = by_name[name]
        size = group_size(shapes, g)
        if not 1 <= int(w) <= size:
            raise DeepCompError(f"channel group {name}: width {w} is not in 1..{size}")
        for s in g.slots:
            out[s.key][s.axis] = int(w) * s.blocks
    return OrderedDict((k, tuple(v)) for k, v in out.items())


def cost(shapes: Mapping, weights: Mapping[str, float] | None = None) -> float:
    """Sum over tensors of ``elements * weights[name]`` (``weights=None``: the element count).

    With weights = output positions per pixel of each conv weight this is
    the MACs per pixel; with all weights 1 it is the parameter count.
    """
    total = 0.0
    for k, v in shapes.items():
        w = 1.0 if weights is None else weights.get(k, 0.0)
        if w:
            total += float(np.prod(_shape(v), dtype=np.float64)) * w
    return total


# ---------------------------------------------------------------- importance and selection
def _array(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def _per_channel_l1(a: np.ndarray, slot: Slot, size: int) -> np.ndarray:
    """L1 norm per channel of one slot (summed over the other axes and the blocks)."""
    moved = np.moveaxis(np.abs(a), slot.axis, 0).reshape(slot.blocks, size, -1)
    return moved.sum(axis=(0, 2))


def _normalised_sum(parts: list[np.ndarray], size: int) -> np.ndarray:
    """Sum of per-channel scores, each divided by its mean (tensors of different scale weigh alike)."""
    total = np.zeros(size)
    for p in parts:
        m = p.mean()
        total += p / m if m > 0 else p
    return total


def producer_l1(state_dict: Mapping, group: ChannelGroup) -> np.ndarray:
    """Per-channel L1 norm of the producing filters (biases count only where no filter exists)."""
    size = group_size(state_dict, group)
    slots = [s for s in group.by_role("producer") if len(_shape(state_dict[s.key])) >= 2] or group.by_role("producer")
    if not slots:
        raise DeepCompError(f"channel group {group.name} has no producer")
    return _normalised_sum([_per_channel_l1(_array(state_dict[s.key]), s, size) for s in slots], size)


def consumer_l1(state_dict: Mapping, group: ChannelGroup) -> np.ndarray:
    """Per-channel L1 norm of the weights that read the channels (ones if nothing reads them)."""
    size = group_size(state_dict, group)
    slots = group.by_role("consumer")
    if not slots:
        return np.ones(size)
    return _normalised_sum([_per_channel_l1(_array(state_dict[s.key]), s, size) for s in slots], size) / len(slots)


def channel_importance(state_dict: Mapping, group: ChannelGroup, method: str = "l1", activity: np.ndarray | None = None) -> np.ndarray:
    """One score per channel of ``group``; the lowest are pruned first (see the module docstring)."""
    if method not in IMPORTANCE:
        raise DeepCompError(f"unknown channel importance {method!r}; choose one of {', '.join(IMPORTANCE)}")
    if method == "l1":
        return producer_l1(state_dict, group)
    if method == "l1-product":
        return producer_l1(state_dict, group) * consumer_l1(state_dict, group)
    if activity is None:
        raise DeepCompError(f"channel importance 'activation' needs measured activity for group {group.name}")
    activity = np.asarray(activity, dtype=np.float64).ravel()
    size = group_size(state_dict, group)
    if activity.size != size:
        raise DeepCompError(f"channel group {group.name}: {activity.size} activity values for {size} channels")
    return activity * consumer_l1(state_dict, group)


def select_channels(state_dict: Mapping, group: ChannelGroup, ratio: float, scores: np.ndarray | None = None,
                    method: str = "l1") -> np.ndarray:
    """Sorted indices of the channels kept when pruning ``ratio`` of ``group``.

    ``scores`` (one per channel) overrides ``method``; the lowest scores go,
    ties broken by index (the later channel goes first).
    """
    size = group_size(state_dict, group)
    keep = kept_count(size, ratio)
    if scores is None:
        scores = channel_importance(state_dict, group, method)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size != size:
        raise DeepCompError(f"channel group {group.name}: {scores.size} scores for {size} channels")
    if np.isnan(scores).any():
        raise DeepCompError(f"channel group {group.name}: NaN importance scores")
    order = np.lexsort((np.arange(size), -scores))  # highest score first, then lowest index
    return np.sort(order[:keep])


def _take(t, axis: int, index: np.ndarray):
    if hasattr(t, "index_select"):
        import torch

        return t.index_select(axis, torch.as_tensor(index, dtype=torch.long, device=t.device)).contiguous()
    return np.ascontiguousarray(np.take(np.asarray(t), index, axis=axis))


def slot_index(slot: Slot, size: int, kept: np.ndarray) -> np.ndarray:
    """Indices along the slot's axis for the kept channels (every block)."""
    kept = np.asarray(kept, dtype=np.int64)
    return np.concatenate([b * size + kept for b in range(slot.blocks)])


def index_channels(state_dict: Mapping, groups: Sequence[ChannelGroup], kept: Mapping[str, np.ndarray]) -> "OrderedDict":
    """A new state_dict keeping the channels ``kept[group]`` of each named group (others untouched).

    Sizes are taken from ``state_dict`` before any indexing, so a tensor
    shared by two groups (a conv's input and output axes) is cut on both.
    """
    by_name = {g.name: g for g in groups}
    plan = []
    for name, idx in kept.items():
        if name not in by_name:
            raise DeepCompError(f"unknown channel group {name!r}; groups: {', '.join(by_name)}")
        g = by_name[name]
        size = group_size(state_dict, g)
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if idx.size == 0 or idx.min() < 0 or idx.max() >= size or np.unique(idx).size != idx.size:
            raise DeepCompError(f"channel group {name}: kept channels must be distinct indices in 0..{size - 1}")
        if idx.size < size:
            plan.append((g, size, np.sort(idx)))
    out = OrderedDict(state_dict.items())
    for g, size, idx in plan:
        for s in g.slots:
            out[s.key] = _take(out[s.key], s.axis, slot_index(s, size, idx))
    return out


def prune_channels(
    state_dict: Mapping,
    groups: Sequence[ChannelGroup],
    ratios: Mapping[str, float],
    method: str = "l1",
    scores: Mapping[str, np.ndarray] | None = None,
) -> tuple["OrderedDict", dict[str, np.ndarray]]:
    """Prune ``ratios[group]`` of each named group's channels; (thinner state_dict, kept indices per group).

    Every selection is made on the original weights; groups missing from
    ``ratios`` keep all their channels.  ``scores`` (group -> per-channel
    scores) overrides ``method`` where given.
    """
    scores = scores or {}
    by_name = {g.name: g for g in groups}
    for name in ratios:
        if name not in by_name:
            raise DeepCompError(f"unknown channel group {name!r}; groups: {', '.join(by_name)}")
    kept = {}
    for name, ratio in ratios.items():
        g = by_name[name]
        kept[name] = select_channels(state_dict, g, float(ratio), scores.get(name), method)
    return index_channels(state_dict, groups, kept), kept


def uniform_ratios(groups: Iterable[ChannelGroup], ratio: float) -> dict[str, float]:
    return {g.name: float(ratio) for g in groups}
