"""Quantization-aware fine-tuning of shared weights: the clusters may change.

Han et al.'s trained quantization (:func:`deepcomp.finetune.train_centroids`)
fixes every weight's cluster and trains only the codebooks, 2**bits numbers
per tensor.  Here every kept weight also keeps a full-precision *latent*
value (started from the retrained weights, or from the shared ones):

* the forward pass uses the centroid nearest to the latent value;
* the backward pass hands the weight's gradient straight through to the
  latent value (the straight-through estimator);
* each centroid is the mean of the latent values assigned to it, one Lloyd
  step per training forward pass (a centroid with no weights keeps its value).

A latent value that crosses the midpoint between two centroids moves its
weight to the other cluster, so the assignment itself is trained, which
fixed indices cannot do.  Pruned weights stay exactly zero: the mask
multiplies both the weight and its gradient.  Tensors shared with the
``uniform`` quantizer are held fixed (as in trained quantization); every
parameter the policy leaves raw is trained unless ``train_raw=False``, and
the entropy bottleneck's ``quantiles`` keep being fitted by the auxiliary
loss.  At the end the model holds ``centroid[nearest(latent)]``: at most
2**bits distinct non-zero values per tensor, which
:func:`deepcomp.finetune.write_exact` stores exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import DeepCompError
from .finetune import (
    TrainData, _as_data, _owner, _params, codebook_indices, raw_frozen, remember_parameter_order, restore_parameter_order, round_raw_storage,
)
from .policy import Policy
from .training import TrainConfig, train_steps

#: How shared weights can be fine-tuned: ``fixed`` (Han's trained quantization, every weight keeps its cluster,
#: :func:`deepcomp.finetune.train_centroids`) or ``nearest`` (this module: a weight may change cluster).
CENTROID_MODES = ("fixed", "nearest")


class NearestCentroid(nn.Module):
    """``weight = mask * codebook[nearest(latent)]``, with the gradient passed straight to ``latent``.

    In training mode every call first moves each centroid to the mean of the
    latent values nearest to it (kept weights only).
    """

    def __init__(self, codebook: torch.Tensor, mask: torch.Tensor, start: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("codebook", torch.sort(codebook.detach().to(torch.float32).reshape(-1)).values)
        self.register_buffer("mask", mask.to(torch.bool))
        # the assignment at the start, to count the weights that changed cluster
        self.register_buffer("start", start if start is not None else torch.zeros(0, dtype=torch.long), persistent=False)

    def assign(self, latent: torch.Tensor) -> torch.Tensor:
        book = self.codebook
        return torch.bucketize(latent, (book[1:] + book[:-1]) / 2)

    @torch.no_grad()
    def lloyd_step(self, latent: torch.Tensor) -> None:
        kept = latent[self.mask]
        idx = self.assign(kept)
        k = self.codebook.numel()
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros(k, dtype=latent.dtype, device=latent.device).index_add_(0, idx, kept)
        book = torch.where(counts > 0, sums / counts.clamp(min=1), self.codebook)
        self.codebook.copy_(torch.sort(book).values)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.lloyd_step(latent.detach())
        with torch.no_grad():
            q = self.codebook[self.assign(latent)]
        # the value is q exactly (latent - latent.detach() is 0), the gradient goes to latent
        return torch.where(self.mask, q + (latent - latent.detach()), torch.zeros_like(latent))

    @torch.no_grad()
    def changed(self, latent: torch.Tensor) -> int:
        """How many kept weights sit in another cluster than at the start."""
        if self.start.numel() == 0:
            return 0
        return int((self.assign(latent)[self.mask] != self.start[self.mask]).sum())


def shared_codebooks(arrays: Mapping[str, np.ndarray], policy: Policy) -> dict[str, np.ndarray]:
    """The codebook (sorted distinct non-zero values) of every k-means-shared tensor of decoded shared weights."""
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        rule = policy.rule_for(name, a.shape)
        if rule.bits is not None and rule.quantizer == "kmeans" and np.issubdtype(a.dtype, np.floating) and a.size:
            book, _ = codebook_indices(a)
            if book.size > (1 << rule.bits):
                raise DeepCompError(f"{name} holds {book.size} distinct values, more than 2^{rule.bits}: share the weights first")
            out[name] = book
    return out


def attach_nearest(model: nn.Module, policy: Policy, codebooks: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, str]:
    """Put every k-means-shared parameter of ``model`` under quantization-aware training.

    ``model`` holds the latent weights (pruned positions exactly zero);
    ``codebooks`` the starting codebook of each k-means-shared tensor
    (:func:`shared_codebooks`).  Tensors shared by a uniform quantizer are
    frozen.  Returns name -> ``"nearest"`` or ``"frozen"``; undo with :func:`detach_nearest`.
    """
    handles: dict[str, str] = {}
    try:
        for name, p in list(_params(model).items()):
            rule = policy.rule_for(name, tuple(p.shape))
            if rule.bits is None or not p.is_floating_point() or p.numel() == 0:
                continue
            if rule.quantizer != "kmeans":
                p.requires_grad_(False)
                handles[name] = "frozen"
                continue
            if name not in codebooks:
                raise DeepCompError(f"no starting codebook for the shared tensor {name}")
            book = torch.as_tensor(np.asarray(codebooks[name], dtype=np.float32)).to(p.device)
            if book.numel() == 0 or book.numel() > (1 << rule.bits):
                raise DeepCompError(f"the codebook of {name} has {book.numel()} values; {rule.bits} bits allow 1 to {1 << rule.bits}")
            mask = p.detach() != 0
            param = NearestCentroid(book, mask)
            param.start = param.assign(p.detach())
            module, attr = _owner(model, name)
            remember_parameter_order(module)
            parametrize.register_parametrization(module, attr, param, unsafe=True)
            handles[name] = "nearest"
    except BaseException:
        detach_nearest(model, handles)
        raise
    return handles


def detach_nearest(model: nn.Module, handles: Mapping[str, str]) -> None:
    """Back to plain parameters holding ``mask * codebook[nearest(latent)]`` (frozen ones unfrozen)."""
    was_training = model.training
    model.eval()  # no Lloyd step while the values are read out
    try:
        for name, how in handles.items():
            module, attr = _owner(model, name)
            if how == "nearest" and parametrize.is_parametrized(module, attr):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
                restore_parameter_order(module)
            getattr(module, attr).requires_grad_(True)
    finally:
        model.train(was_training)


def latent_state_dict(model: nn.Module, keys: list[str]) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict under its usual names, parametrized tensors as their latent values, on the CPU."""
    out = OrderedDict()
    with torch.no_grad():
        for k in keys:
            module, attr = _owner(model, k)
            if parametrize.is_parametrized(module, attr):
                out[k] = module.parametrizations[attr].original.detach().cpu().clone()
            else:
                out[k] = getattr(module, attr).detach().cpu().clone()
    return out


def current_codebooks(model: nn.Module, handles: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for name, how in handles.items():
        if how == "nearest":
            module, attr = _owner(model, name)
            out[name] = module.parametrizations[attr][0].codebook.detach().cpu().clone()
    return out


def changed_fraction(model: nn.Module, handles: Mapping[str, str]) -> float:
    """The share of the kept shared weights in another cluster than at the start (of this call's attach)."""
    changed = kept = 0
    for name, how in handles.items():
        if how == "nearest":
            module, attr = _owner(model, name)
            p = module.parametrizations[attr]
            changed += p[0].changed(p.original)
            kept += int(p[0].mask.sum())
    return changed / kept if kept else 0.0


def train_nearest(
    model: nn.Module,
    policy: Policy,
    cfg: TrainConfig,
    data: TrainData | str | Path,
    codebooks: Mapping[str, np.ndarray | torch.Tensor],
    state: dict | None = None,
    train_raw: bool = True,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    distiller=None,
) -> dict:
    """Quantization-aware fine-tuning for ``cfg.steps`` steps (see the module docstring).

    ``model`` holds the latent weights; ``codebooks`` the current codebooks
    (the share stage's at the start, a checkpoint's when resuming).  Leaves
    plain parameters equal to ``mask * codebook[nearest(latent)]`` in the
    model (raw fp16 tensors rounded to fp16).  ``on_checkpoint`` receives
    ``{"state_dict" (latent), "codebooks", "train_state"}``; resume by
    loading that state_dict and passing those codebooks and ``train_state``.
    The returned state's ``"changed"`` is the share of kept weights whose
    cluster changed in this call.
    """
    data = _as_data(data, cfg)
    state = {} if state is None else state
    keys = list(model.state_dict().keys())
    with raw_frozen(model, policy, not train_raw):
        handles = attach_nearest(model, policy, codebooks)
        log(f"quantization-aware fine-tuning: {sum(h == 'nearest' for h in handles.values())} codebooks, clusters reassigned to the nearest "
            f"centroid, {sum(h == 'frozen' for h in handles.values())} uniform tensors frozen, raw parameters {'trained' if train_raw else 'frozen'}")

        def save(st: dict) -> None:
            if on_checkpoint is not None:
                on_checkpoint({"state_dict": latent_state_dict(model, keys), "codebooks": current_codebooks(model, handles), "train_state": st})

        try:
            train_steps(model, data.sampler, cfg, state, data.val_crops, on_checkpoint=save, checkpoint_every=checkpoint_every,
                        progress=progress, log=log, distiller=distiller)
            state["changed"] = changed_fraction(model, handles)
            log(f"quantization-aware fine-tuning: {100 * state['changed']:.2f} % of the kept shared weights changed cluster")
        finally:
            detach_nearest(model, handles)
    round_raw_storage(model, policy)
    return state
