"""Pruning one part of a model: the encoder, the decoder or the probability model, alone or together.

The parts come from the names of the tensors (``zoo.MODEL_PARTS``):

* ``encoder``: the analysis transform ``g_a``;
* ``decoder``: the synthesis transform ``g_s``;
* ``probability``: the entropy bottleneck and, with a hyperprior, the hyper
  transforms ``h_a`` and ``h_s`` (the Gaussian conditional has no
  parameters; a context model adds ``context_prediction`` and
  ``entropy_parameters``).

A *part set* names one part, ``all`` of them, or a ``+``-joined
combination (``encoder+decoder``).

What is pruned inside a part (``zoo.is_part_weight``): the conv weights,
and in the entropy bottleneck the stored ``matrices.i`` and ``factors.i`` of
its density model.  Never biases, GDN ``beta``/``gamma``, the entropy
bottleneck's ``biases.i`` or its ``quantiles`` (they set the range of the
CDF tables: zeroing them would collapse the support of the coded values), and
never buffers.  Note that the density model passes a matrix through a
softplus, so a stored zero there is ``softplus(0) = ln 2`` in the density,
not a removed connection: it is what a sparse weight format stores for free,
and magnitude pruning of the stored values is the smallest change that makes
them sparse.  A zero factor does remove its ``tanh`` term.

Masks are per tensor: each pruned tensor loses exactly ``round(ratio *
size)`` weights of smallest magnitude (``pruning.magnitude_mask``, ties
broken by position).  Masked retraining is
``finetune.masked_retrain``: the whole network is trained on the RD loss
with the given lambda (the baseline's), the auxiliary loss fits the
``quantiles``, and the pruned weights are multiplied back to exactly zero
after every optimiser step.  It uses the training photos only.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from . import pruning, zoo
from .errors import DeepCompError

#: The parts, in table order.
PARTS = tuple(zoo.MODEL_PARTS)

#: The part set of every part.
ALL = "all"


def parse_part_set(spec: str) -> tuple[str, ...]:
    """``encoder``, ``decoder``, ``probability``, ``all`` or a ``+``-joined combination -> the parts, in :data:`PARTS` order."""
    names = [s.strip() for s in str(spec).split("+")]
    if any(n == ALL for n in names):
        if len(names) > 1:
            raise DeepCompError(f"part set {spec!r}: {ALL!r} cannot be combined with other parts")
        return PARTS
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise DeepCompError(f"unknown part {unknown[0] if unknown else spec!r}; choose {', '.join(PARTS)}, {ALL}, or a combination like encoder+decoder")
    if len(set(names)) != len(names):
        raise DeepCompError(f"part set {spec!r} names a part twice")
    return tuple(p for p in PARTS if p in names)


def part_set_name(parts: Iterable[str]) -> str:
    """The canonical name of a part set (``all`` when it holds every part)."""
    parts = tuple(p for p in PARTS if p in set(parts))
    return ALL if parts == PARTS else "+".join(parts)


def _shape(v) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(np.shape(v))


def part_tensors(tensors: Mapping[str, object], parts: Iterable[str]) -> list[str]:
    """The names of the tensors per-part pruning zeroes in ``parts`` (state_dict order).

    ``tensors``: name -> tensor/array (a state_dict or ``named_parameters``).
    Derived buffers and tensors outside the known parts are never chosen;
    a tensor of an unknown top-level module fails (``zoo.part_of``).
    """
    parts = set(parts)
    names = []
    for name, t in tensors.items():
        if zoo.is_derived(name) or not zoo.is_part_weight(name, _shape(t)):
            continue
        if zoo.part_of(name) in parts:
            names.append(name)
    return names


def check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 < ratio < 1.0:
        raise DeepCompError(f"pruning ratios must be in (0, 1), got {ratio:g}")
    return ratio


def part_masks(tensors: Mapping[str, object], parts: Iterable[str], ratio: float) -> dict[str, np.ndarray]:
    """Magnitude masks (True = kept) of the tensors of ``parts``: ``round(ratio * size)`` zeros in each."""
    ratio = check_ratio(ratio)
    parts = tuple(parts)
    names = part_tensors(tensors, parts)
    if not names:
        raise DeepCompError(f"the model has no prunable tensors in {part_set_name(parts)}")
    out = {}
    for n in names:
        t = tensors[n]
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        out[n] = pruning.magnitude_mask(a, ratio)
    return out


def prune_parts(model: nn.Module, parts: Iterable[str], ratio: float) -> dict[str, torch.Tensor]:
    """Zero ``ratio`` of every prunable parameter of ``parts`` in ``model``; returns the masks (bool tensors, True = kept)."""
    from .finetune import apply_pruning

    masks = {n: torch.from_numpy(np.ascontiguousarray(m)) for n, m in part_masks(dict(model.named_parameters()), parts, ratio).items()}
    apply_pruning(model, masks)
    return masks


def density(tensors: Mapping[str, object], names: Iterable[str]) -> float:
    """Fraction of non-zero values over the tensors ``names``."""
    kept = total = 0
    for n in names:
        t = tensors[n]
        t = t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
        kept += int(torch.count_nonzero(t))
        total += t.numel()
    return kept / total if total else 1.0
