"""Fine-tuning after compression: masked retraining and trained quantization.

Both stages reuse :func:`deepcomp.training.train_steps` (CompressAI's
rate-distortion loss with the baseline's lambda, Adam, the auxiliary loss on
the entropy bottleneck's ``quantiles``, validation on a split of the
training photos), so they checkpoint and resume like ``deepcomp train``.

Masked retraining (Han et al. section 2; Zhu & Gupta's AGP)
    :func:`gradual_prune_retrain` prunes by magnitude in ``rounds`` rounds up
    to the policy's sparsity, following a cubic (``agp``) or linear schedule,
    and retrains between rounds with the pruned weights held at exactly zero
    (``train_steps(masks=...)`` multiplies them by the mask after every
    optimiser step).  A pruned weight stays pruned in later rounds.
    ``rounds=1`` is one-shot pruning followed by retraining.  The final
    sparsity of a tensor whose rule gives ``prune_std`` (Han's threshold) is
    the fraction that threshold prunes on the weights before retraining.

Trained quantization (Han et al. section 3.3)
    After weight sharing every shared tensor holds at most ``2**bits``
    distinct non-zero values.  :func:`attach_shared` replaces each k-means
    shared parameter by a parametrization ``w = [centroids, 0][index]``
    (``torch.nn.utils.parametrize``): the indices are fixed buffers, index
    ``k`` is the pruned zero, and the only trainable tensor is the codebook.
    Autograd's backward of the gather is a scatter-add, so a centroid's
    gradient is the sum of the gradients of the weights that share it.

    What is trained: the centroids of every k-means-shared parameter; every
    parameter the policy leaves raw (biases, GDN ``beta``, the entropy
    bottleneck's density model; ``train_raw=False`` freezes them); the
    entropy bottleneck's ``quantiles`` keep being fitted by the auxiliary
    loss so that its CDFs stay valid.  Tensors shared with the ``uniform``
    quantizer are held fixed (a trained uniform grid would no longer be
    uniform), and so are all buffers.  Raw tensors stored as fp16 are
    rounded to fp16 at the end, so that the file holds exactly the trained
    values.

Writing the result (:func:`write_exact`)
    No special codec path is needed: ``kmeans_share`` keeps every distinct
    value as a centroid when there are at most ``2**bits`` of them, so
    re-encoding the fine-tuned weights with the same bit widths reproduces
    the fine-tuned codebooks exactly; the codec codes zeros as pruned
    whatever the policy, so the policy is used without its pruning rules
    (:func:`storage_policy`; magnitude or threshold rules must not prune
    again).  The uniform quantizers are idempotent on their own output.
    :func:`write_exact` decodes what it wrote and fails unless every tensor
    is bit-identical to the state_dict it was given.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import codec, container, pruning, zoo
from .errors import DeepCompError
from .policy import Policy
from .training import TRAIN_HINT, CropSampler, TrainConfig, split_photos, train_steps, validation_crops

SCHEDULES = ("agp", "linear")


# ---------------------------------------------------------------- schedules
def agp_sparsity(step: float, total: float, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: ``final + (initial - final) (1 - step/total)^3``.

    ``initial`` at step 0, ``final`` from ``total`` on; steep at first, flat
    at the end, when the network has fewer weights left to lose.
    """
    if total <= 0:
        return float(final)
    t = min(max(step / total, 0.0), 1.0)
    return float(final + (initial - final) * (1.0 - t) ** 3)


def round_sparsity(round_index: int, rounds: int, final: float, schedule: str = "agp") -> float:
    """Sparsity reached by pruning round ``round_index`` (1-based) of ``rounds``."""
    if schedule not in SCHEDULES:
        raise DeepCompError(f"unknown pruning schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if rounds < 1:
        raise DeepCompError("the number of pruning rounds must be at least 1")
    if schedule == "agp":
        return agp_sparsity(round_index, rounds, final)
    return float(final) * min(max(round_index / rounds, 0.0), 1.0)


# ---------------------------------------------------------------- data
@dataclass
class TrainData:
    """Random training crops and fixed validation crops (a split of the training photos)."""

    sampler: CropSampler
    val_crops: torch.Tensor | None

    @classmethod
    def from_folder(cls, folder: str | Path, patch_size: int, val_fraction: float = 0.1, val_patch: int = 256, seed: int = 0) -> "TrainData":
        train_files, val_crops = _split_and_validation_crops(folder, val_fraction, val_patch)
        return cls(CropSampler(train_files, patch_size, seed=seed), val_crops)

    @classmethod
    def validation_only(cls, folder: str | Path, val_fraction: float = 0.1, val_patch: int = 256) -> "TrainData":
        """The validation crops without a training sampler (for measuring, not training)."""
        return cls(None, _split_and_validation_crops(folder, val_fraction, val_patch)[1])


def _split_and_validation_crops(folder: str | Path, val_fraction: float, val_patch: int) -> tuple[list[Path], torch.Tensor]:
    """The training photos and the validation crops, which fit the smallest validation photo."""
    train_files, val_files = split_photos(folder, val_fraction)
    if not val_files:
        raise DeepCompError(f"no validation photos in {folder} with a validation fraction of {val_fraction}; {TRAIN_HINT}")
    from PIL import Image

    sides = []
    for f in val_files:
        with Image.open(f) as im:
            sides.append(min(im.size))
    return train_files, validation_crops(val_files, min(val_patch, min(sides)))


def _as_data(data, cfg: TrainConfig, val_patch: int = 256) -> TrainData:
    if isinstance(data, TrainData):
        return data
    return TrainData.from_folder(data, cfg.patch_size, cfg.val_fraction, val_patch, cfg.seed)


def _params(model: nn.Module) -> "OrderedDict[str, nn.Parameter]":
    return OrderedDict(model.named_parameters())


def cpu_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- masked retraining
def prune_targets(arrays: Mapping[str, np.ndarray], policy: Policy) -> dict:
    """The final sparsity of every tensor the policy prunes (JSON-able).

    ``{"global": fraction or None, "tensors": {name: fraction or None}}``;
    with a global fraction the per-tensor entries are None (one threshold).
    """
    tensors: dict[str, float | None] = {}
    kernels: list[str] = []
    for name, a in arrays.items():
        a = np.asarray(a)
        rule = policy.rule_for(name, a.shape)
        if not rule.prunes or not np.issubdtype(a.dtype, np.floating) or a.size == 0:
            continue
        if rule.granularity == "kernel":  # never with global pruning (Policy refuses it)
            kernels.append(name)
        if policy.global_prune is not None:
            tensors[name] = None
        elif rule.prune:
            tensors[name] = float(rule.prune)
        else:
            tensors[name] = 1.0 - pruning.density(pruning.threshold_mask(a, rule.prune_std))
    targets = {"global": policy.global_prune, "tensors": tensors}
    if kernels:  # pruned by whole kernels (absent: every tensor by single weights)
        targets["kernel"] = kernels
    return targets


def schedule_masks(
    arrays: Mapping[str, np.ndarray],
    targets: dict,
    round_index: int,
    rounds: int,
    schedule: str = "agp",
    previous: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Magnitude masks (True = kept) of pruning round ``round_index`` (1-based).

    Pruned positions of ``previous`` stay pruned.
    """
    names = list(targets["tensors"])
    if targets.get("global") is not None:
        frac = round_sparsity(round_index, rounds, targets["global"], schedule)
        masks = pruning.global_masks({n: arrays[n] for n in names}, frac)
    else:
        kernel = set(targets.get("kernel", ()))
        masks = {n: pruning.magnitude_mask(arrays[n], round_sparsity(round_index, rounds, targets["tensors"][n], schedule),
                                           "kernel" if n in kernel else "element") for n in names}
    if previous:
        for n in masks:
            if n in previous:
                masks[n] = masks[n] & np.asarray(previous[n], dtype=bool)
    return masks


def _float_masks(masks: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    params = _params(model)
    return {n: m.to(torch.float32) for n, m in masks.items() if n in params}


def apply_pruning(model: nn.Module, masks: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Zero the pruned positions of the model's tensors (parameters and buffers)."""
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for n, m in masks.items():
            t = state[n]
            t.mul_(torch.as_tensor(np.asarray(m) if not isinstance(m, torch.Tensor) else m, device=t.device).to(t.dtype))


def masked_retrain(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor | np.ndarray],
    cfg: TrainConfig,
    data: TrainData | str | Path,
    state: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    set_lr: float | None = None,
) -> dict:
    """Retrain for ``cfg.steps`` steps with the pruned weights held at exactly zero.

    ``masks``: name -> 0/1 (True = kept).  ``on_checkpoint`` receives
    ``{"state_dict", "masks", "train_state"}``; pass ``state`` (the returned
    or checkpointed ``train_state``) to resume; ``set_lr`` replaces the
    learning rate that state carries (:func:`~deepcomp.training.train_steps`).
    """
    data = _as_data(data, cfg)
    tmasks = {n: torch.as_tensor(np.asarray(m)) if not isinstance(m, torch.Tensor) else m for n, m in masks.items()}
    tmasks = {n: m.to(torch.bool) for n, m in tmasks.items()}
    apply_pruning(model, tmasks)
    state = {} if state is None else state

    def save(st: dict) -> None:
        if on_checkpoint is not None:
            on_checkpoint({"state_dict": cpu_state_dict(model), "masks": {n: m.cpu() for n, m in tmasks.items()}, "train_state": st})

    return train_steps(model, data.sampler, cfg, state, data.val_crops, masks=_float_masks(tmasks, model), on_checkpoint=save,
                       checkpoint_every=checkpoint_every, progress=progress, log=log, set_lr=set_lr)


def gradual_prune_retrain(
    model: nn.Module,
    policy: Policy,
    cfg: TrainConfig,
    data: TrainData | str | Path,
    rounds: int = 1,
    schedule: str = "agp",
    state: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    anneal_steps: int = 0,
    anneal_lr: float | None = None,
    distiller=None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Iterative magnitude pruning up to the policy's sparsity, with masked retraining.

    ``cfg.steps`` training steps in all: the first ``cfg.steps - anneal_steps``
    split evenly over ``rounds``; round ``i`` first prunes to
    ``round_sparsity(i, rounds, final, schedule)`` of each tensor's final
    sparsity, then retrains with the masks.  The last ``anneal_steps`` retrain
    the final masks at ``anneal_lr`` (a low-rate phase, as a baseline's
    training ends: the weights settle before they are shared).  Returns the
    final masks (name -> bool tensor, True = kept) and the training state,
    which holds the schedule (``state["prune"]``) and masks
    (``state["masks"]``): pass it back as ``state`` to resume.
    ``on_checkpoint`` receives ``{"state_dict", "train_state"}``; ``distiller``
    (:class:`~deepcomp.distillation.LayerDistiller`) adds its loss to every step.
    """
    data = _as_data(data, cfg)
    state = {} if state is None else state
    if rounds < 1:
        raise DeepCompError("the number of pruning rounds must be at least 1")
    if not 0 <= anneal_steps < cfg.steps or (anneal_steps and anneal_lr is None):
        raise DeepCompError(f"the anneal phase needs 0 <= steps < the {cfg.steps} retraining steps and a learning rate")
    round_sparsity(1, rounds, 0.0, schedule)  # checks the schedule name
    params = _params(model)
    if "prune" not in state:
        arrays = {n: p.detach().cpu().numpy() for n, p in params.items()}
        state["prune"] = {"targets": prune_targets(arrays, policy), "round": 0, "rounds": rounds, "schedule": schedule}
    ps = state["prune"]
    if ps["rounds"] != rounds or ps["schedule"] != schedule:
        raise DeepCompError(f"the checkpoint was pruned in {ps['rounds']} {ps['schedule']} rounds, not {rounds} {schedule}")
    masks: dict[str, torch.Tensor] = dict(state.get("masks") or {})

    def save(st: dict) -> None:
        if on_checkpoint is not None:
            on_checkpoint({"state_dict": cpu_state_dict(model), "train_state": st})

    total = cfg.steps - anneal_steps
    for r in range(1, rounds + 1):
        end = total if r == rounds else round(r * total / rounds)
        if ps["round"] < r:
            arrays = {n: params[n].detach().cpu().numpy() for n in ps["targets"]["tensors"]}
            new = schedule_masks(arrays, ps["targets"], r, rounds, schedule, {n: m.numpy() for n, m in masks.items()})
            masks = {n: torch.from_numpy(np.ascontiguousarray(m)) for n, m in new.items()}
            apply_pruning(model, masks)
            state["masks"] = masks
            ps["round"] = r
            if masks:
                kept = sum(int(m.sum()) for m in masks.values())
                size = sum(m.numel() for m in masks.values())
                log(f"pruning round {r}/{rounds} ({schedule}) at step {state.get('step', 0)}: sparsity {1 - kept / size:.4f} of {size:,} prunable weights")
        if state.get("step", 0) < end:
            train_steps(model, data.sampler, replace(cfg, steps=end), state, data.val_crops, masks=_float_masks(masks, model),
                        on_checkpoint=save, checkpoint_every=checkpoint_every, progress=progress, log=log, distiller=distiller)
    if anneal_steps and state.get("step", 0) < cfg.steps:
        if state.get("step", 0) == total:
            log(f"anneal at step {total}: {anneal_steps} steps at lr {anneal_lr:g} with the final masks")
        train_steps(model, data.sampler, cfg, state, data.val_crops, masks=_float_masks(masks, model), on_checkpoint=save,
                    checkpoint_every=checkpoint_every, progress=progress, log=log, set_lr=anneal_lr, distiller=distiller)
    return masks, state


# ---------------------------------------------------------------- trained quantization
class SharedParametrization(nn.Module):
    """``weight = [centroids, 0][index]``: the codebook is the parameter, the indices a buffer.

    ``index`` has the weight's shape, values ``0..k``; ``k`` is a pruned
    zero.  The backward of the gather sums the gradients of the weights
    that share a centroid.
    """

    def __init__(self, index: torch.Tensor, k: int):
        super().__init__()
        self.k = int(k)
        self.register_buffer("index", index.to(torch.long))

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([centroids, centroids.new_zeros(1)])
        return table[self.index]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The codebook of a weight that is already ``codebook[index]`` (exact, no averaging)."""
        flat = weight.detach().reshape(-1)
        idx = self.index.reshape(-1).to(flat.device)
        kept = idx < self.k
        c = flat.new_zeros(self.k)
        c[idx[kept]] = flat[kept]
        return c


@dataclass
class SharedTensor:
    """One parameter under trained quantization."""

    name: str
    k: int
    index: torch.Tensor | None  # cluster of each element, -1 for a pruned zero; None: frozen (uniform quantizer)


def codebook_indices(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct non-zero values, index of each element; zeros get ``len(values)``)."""
    a = np.asarray(a, dtype=np.float32)
    nz = a != 0
    book = np.unique(a[nz])
    index = np.full(a.shape, book.size, dtype=np.int64)
    index[nz] = np.searchsorted(book, a[nz])
    return book, index


def _index_dtype(k: int) -> torch.dtype:
    return torch.int16 if k < (1 << 15) else torch.int32


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds the tensor ``name`` of ``model``'s state_dict, and the tensor's attribute name."""
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def attach_shared(model: nn.Module, policy: Policy, indices: Mapping[str, torch.Tensor] | None = None) -> dict[str, SharedTensor]:
    """Put every shared parameter of ``model`` under trained quantization.

    The model must hold shared weights (e.g. decoded from a deepcomp file):
    a k-means-shared parameter is parametrized by its codebook (see
    :class:`SharedParametrization`); one shared by a uniform quantizer is
    frozen.  ``indices`` (name -> index tensor, -1 for a pruned zero, as
    :class:`SharedTensor` and the checkpoints hold them) fixes the
    assignment instead of deriving it from the distinct values.
    Undo with :func:`detach_shared`.
    """
    shared: dict[str, SharedTensor] = {}
    try:
        _attach(model, policy, indices, shared)
    except BaseException:
        detach_shared(model, shared)
        raise
    return shared


def _attach(model: nn.Module, policy: Policy, indices: Mapping[str, torch.Tensor] | None, shared: dict[str, SharedTensor]) -> None:
    for name, p in list(_params(model).items()):
        rule = policy.rule_for(name, tuple(p.shape))
        if rule.bits is None or not p.is_floating_point() or p.numel() == 0:
            continue
        if rule.quantizer != "kmeans":
            p.requires_grad_(False)
            shared[name] = SharedTensor(name, 0, None)
            continue
        w = p.detach().cpu().numpy()
        if indices is not None and name in indices:
            public = indices[name].to(torch.long)
            if tuple(public.shape) != tuple(p.shape):
                raise DeepCompError(f"the indices of {name} do not have its shape")
            k = int(public.max()) + 1 if public.numel() else 0
            index = torch.where(public < 0, torch.full_like(public, k), public)
        else:
            book, idx = codebook_indices(w)
            if book.size > (1 << rule.bits):
                raise DeepCompError(f"{name} holds {book.size} distinct values, more than 2^{rule.bits}: share the weights first")
            index, k = torch.from_numpy(idx), int(book.size)
        param = SharedParametrization(index, k)
        with torch.no_grad():
            if index.numel() and (int(index.min()) < 0 or not torch.equal(param(param.right_inverse(torch.from_numpy(w))), torch.from_numpy(w))):
                raise DeepCompError(f"{name} is not codebook[index] for the given indices")
        module, attr = _owner(model, name)
        remember_parameter_order(module)
        parametrize.register_parametrization(module, attr, param.to(p.device))
        public = torch.where(index == k, torch.full_like(index, -1), index)
        shared[name] = SharedTensor(name, k, public.cpu().to(_index_dtype(k)))


def detach_shared(model: nn.Module, shared: Mapping[str, SharedTensor]) -> None:
    """Back to plain parameters holding ``centroids[index]`` (frozen ones unfrozen)."""
    for name, s in shared.items():
        module, attr = _owner(model, name)
        if s.index is not None:
            if parametrize.is_parametrized(module, attr):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            restore_parameter_order(module)
        getattr(module, attr).requires_grad_(True)


def remember_parameter_order(module: nn.Module) -> None:
    """Note the order of ``module``'s parameters before a parametrization changes it (once)."""
    if not hasattr(module, "_deepcomp_order"):
        module._deepcomp_order = list(module._parameters)


def restore_parameter_order(module: nn.Module) -> None:
    """Put the parameters back in their remembered order once no parametrization is left on ``module``."""
    order = getattr(module, "_deepcomp_order", None)
    if order is not None and not parametrize.is_parametrized(module):
        items = dict(module._parameters)
        module._parameters.clear()
        module._parameters.update({k: items[k] for k in order if k in items})
        module._parameters.update({k: v for k, v in items.items() if k not in order})
        del module._deepcomp_order


def centroids(model: nn.Module, name: str) -> torch.Tensor:
    """The trainable codebook of a parametrized tensor."""
    module, attr = _owner(model, name)
    return module.parametrizations[attr].original


def plain_state_dict(model: nn.Module, keys: list[str]) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict under its usual names (parametrized tensors computed), on the CPU."""
    out = OrderedDict()
    with torch.no_grad():
        for k in keys:
            module, attr = _owner(model, k)
            out[k] = getattr(module, attr).detach().cpu().clone()
    return out


def round_raw_storage(model: nn.Module, policy: Policy) -> None:
    """Round the tensors the policy stores raw in fp16 to fp16 values, so the file holds them exactly."""
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            rule = policy.rule_for(name, tuple(t.shape))
            if rule.bits is None and rule.storage == "fp16" and t.is_floating_point():
                t.copy_(t.half().float())


def train_centroids(
    model: nn.Module,
    policy: Policy,
    cfg: TrainConfig,
    data: TrainData | str | Path,
    state: dict | None = None,
    indices: Mapping[str, torch.Tensor] | None = None,
    train_raw: bool = True,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    distiller=None,
) -> dict:
    """Trained quantization: fine-tune the codebooks with the cluster indices fixed.

    ``model`` holds shared weights (e.g. ``model_file.load`` of the share
    stage's file).  Trains ``cfg.steps`` steps on the RD loss (see the module
    docstring for what is trained), then leaves plain parameters equal to
    ``centroids[index]`` in the model.  ``on_checkpoint`` receives
    ``{"state_dict", "indices", "train_state"}``; resume with that
    ``train_state`` as ``state`` and those ``indices`` after loading the
    state_dict.  ``distiller`` adds its layer-matching loss to every step.
    """
    data = _as_data(data, cfg)
    state = {} if state is None else state
    keys = list(model.state_dict().keys())
    with raw_frozen(model, policy, not train_raw):
        shared = attach_shared(model, policy, indices)
        n_train = sum(s.k for s in shared.values() if s.index is not None)
        log(f"trained quantization: {sum(s.index is not None for s in shared.values())} codebooks ({n_train} centroids) trained, "
            f"{sum(s.index is None for s in shared.values())} uniform tensors frozen, raw parameters {'trained' if train_raw else 'frozen'}")

        def save(st: dict) -> None:
            if on_checkpoint is not None:
                on_checkpoint({"state_dict": plain_state_dict(model, keys), "indices": {n: s.index for n, s in shared.items() if s.index is not None},
                               "train_state": st})

        try:
            train_steps(model, data.sampler, cfg, state, data.val_crops, on_checkpoint=save, checkpoint_every=checkpoint_every, progress=progress,
                        log=log, distiller=distiller)
        finally:
            detach_shared(model, shared)
    round_raw_storage(model, policy)
    return state


@contextmanager
def raw_frozen(model: nn.Module, policy: Policy, freeze: bool = True):
    """Within the block, the parameters the policy stores raw (except the ``quantiles``) take no gradient, if ``freeze``."""
    frozen = []
    if freeze:
        for name, p in _params(model).items():
            rule = policy.rule_for(name, tuple(p.shape))
            if rule.bits is None and not name.endswith(".quantiles") and p.requires_grad:
                p.requires_grad_(False)
                frozen.append(p)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


# ---------------------------------------------------------------- writing the file
def storage_policy(policy: Policy) -> Policy:
    """The policy without its pruning: how weights that already hold their zeros are stored.

    The codec codes every zero as pruned whatever the rule says; a pruning
    rule applied again would prune more (a threshold) or re-rank ties.
    """
    rules = tuple(replace(r, prune=None, prune_std=None) for r in policy.rules)
    return replace(policy, rules=rules, global_prune=None)


def encode_exact(state_dict: Mapping[str, torch.Tensor], policy: Policy, arch: str | None = None, quality: int | None = None,
                 reference_bytes: int | None = None, widths: Mapping[str, int] | None = None,
                 reference_sha256: str | None = None) -> container.Container:
    """Encode weights that are already pruned and shared so that they decode bit-identically.

    Raises ``DeepCompError`` naming the first tensor that does not (more
    distinct values than its bit width allows, or values that fp16 storage
    would round).
    """
    from .model_file import compress_state_dict

    policy = storage_policy(policy)
    c = compress_state_dict(state_dict, policy, arch, quality, reference_bytes=reference_bytes, widths=widths,
                            reference_sha256=reference_sha256)
    back = codec.decode_arrays(c, "encoded state_dict")
    given = zoo.strip_derived(state_dict) if arch is not None else state_dict
    for name, t in given.items():
        a = t.detach().cpu().numpy()
        b = back[name]
        if a.shape != b.shape or not np.array_equal(a.astype(b.dtype), b) or (np.issubdtype(a.dtype, np.floating) and not np.array_equal(a, b.astype(a.dtype))):
            rule = policy.rule_for(name, a.shape)
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)) if a.shape == b.shape else math.nan
            distinct = np.unique(a[a != 0]).size if np.issubdtype(a.dtype, np.floating) else None
            raise DeepCompError(f"{name} would not be stored exactly (bits {rule.bits}, {distinct} distinct non-zero values, max difference {diff:.3g})")
    return c


def write_exact(path: str | Path, state_dict: Mapping[str, torch.Tensor], policy: Policy, arch: str | None = None, quality: int | None = None,
                reference_bytes: int | None = None, widths: Mapping[str, int] | None = None,
                reference_sha256: str | None = None) -> int:
    """:func:`encode_exact`, written to ``path``; returns the file size in bytes."""
    return container.write(path, encode_exact(state_dict, policy, arch, quality, reference_bytes, widths, reference_sha256))
