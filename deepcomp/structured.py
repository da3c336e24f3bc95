"""Structured (channel) pruning of CompressAI models: sensitivity, allocation, fine-tuning, checkpoints.

The pure work (groups, importance, thinner state_dicts, costs) is in
:mod:`deepcomp.channel_pruning`; the CompressAI knowledge (which axes form a
group, rebuilding a thinner model) in :mod:`deepcomp.zoo`.  This module puts
them together:

Sensitivity (:func:`analyze_channels`)
    For each channel group and each ratio of a grid, only that group loses
    that fraction of its channels (the least important ones) and the thinner
    model's rate-distortion loss ``lambda * 255^2 * MSE + bpp`` is measured
    on fixed validation crops of the *training* photos (never Kodak), with
    no retraining.  One model build and one pass over the crops per setting.

Allocation (:func:`allocate_channels`)
    Per-group ratios for a target: a fraction of the MACs per pixel (encode
    + decode) or of the parameters removed, or a predicted loss increase.
    Loss increases are assumed to add up across groups; costs are exact
    (the thinner shapes of all groups together: a conv between two pruned
    groups loses rows and columns).  Greedy: from the unpruned model, the
    move (one group to a larger ratio of the grid) with the least loss
    increase per unit of cost removed is taken until the target is met.
    :func:`uniform_allocation` gives every group the same ratio instead.

Fine-tuning (:func:`finetune`)
    The thinner model is an ordinary (smaller) CompressAI model, so plain RD
    training applies (``training.train_steps``: the baseline's lambda, Adam,
    the auxiliary loss on the entropy bottleneck's quantiles), no masks.

Checkpoints (:func:`save_pruned`)
    ``{"state_dict", "config": {"arch", "quality", "lmbda", "widths",
    "channel_pruning"}}`` with ``update(force=True)`` applied; ``widths``
    (channels per group) is what ``zoo.build(..., widths=...)`` needs, and
    ``deepcomp compress``/``evaluate`` read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import channel_pruning as cp
from . import zoo
from .checkpoints import atomic_write_bytes, checkpoint_config, read_json, read_state_dict, write_checkpoint
from .errors import DeepCompError
from .training import TrainConfig, evaluate_rd, train_steps

FORMAT = "deepcomp-channel-sensitivity/1"
DEFAULT_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
COSTS = ("macs", "params")


# ---------------------------------------------------------------- the source model
@dataclass
class Source:
    """A model to prune, with what its checkpoint records."""

    model: nn.Module
    arch: str
    quality: int
    lmbda: float
    widths: dict  # channels per group now (the standard ones for an unpruned model)
    path: str = ""
    config: dict = field(default_factory=dict)

    @property
    def groups(self) -> list:
        return zoo.channel_groups(self.model)

    def shapes(self) -> dict:
        return cp.shapes_of(zoo.strip_derived(self.model.state_dict()))


def load_source(checkpoint: str | Path, arch: str | None = None, quality: int | None = None, lmbda: float | None = None) -> Source:
    """A checkpoint (a baseline, or an already channel-pruned model) as a :class:`Source`, entropy coders updated."""
    cfg = checkpoint_config(checkpoint)
    state = read_state_dict(checkpoint)
    for name, given in (("arch", arch), ("quality", quality)):
        if given is not None and cfg.get(name) is not None and given != cfg[name]:
            raise DeepCompError(f"{checkpoint} records {name} {cfg[name]!r}, not {given!r}")
    arch = arch or cfg.get("arch")
    quality = quality or cfg.get("quality")
    if arch is None or quality is None:
        raise DeepCompError(f"{checkpoint} does not say which model it holds: pass --arch and --quality")
    if lmbda is None:
        lmbda = zoo.config_lambda(cfg, quality)
    model = zoo.model_from_state_dict(arch, int(quality), state, source=str(checkpoint), widths=cfg.get("widths"))
    return Source(model, arch, int(quality), float(lmbda), zoo.channel_widths(model), str(checkpoint), cfg)


# ---------------------------------------------------------------- importance
@torch.no_grad()
def measure_activity(model: nn.Module, groups: Sequence[cp.ChannelGroup], crops: torch.Tensor, batch: int = 8) -> dict[str, np.ndarray]:
    """Per group, each channel's mean absolute deviation at the group's ``point`` (the module whose output carries it).

    Measured in eval mode on ``crops``; a channel that barely varies carries
    little information whatever its filter's norm.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for g in groups:
        if g.point is None:
            continue

        def hook(_m, _inp, out, name=g.name):
            a = out.detach().double()
            dev = (a - a.mean(dim=(0, 2, 3), keepdim=True)).abs().mean(dim=(0, 2, 3)) * a.shape[0]
            sums[name] = sums.get(name, 0) + dev.cpu()
            counts[name] = counts.get(name, 0) + a.shape[0]

        handles.append(model.get_submodule(g.point).register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        for i in range(0, len(crops), batch):
            model(crops[i : i + batch].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (sums[n] / counts[n]).numpy() for n in sums}


def importance_scores(model: nn.Module, groups: Sequence[cp.ChannelGroup], method: str = "l1",
                      crops: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Per group, one score per channel (``channel_pruning.channel_importance``); ``activation`` needs ``crops``."""
    if method not in cp.IMPORTANCE:
        raise DeepCompError(f"unknown channel importance {method!r}; choose one of {', '.join(cp.IMPORTANCE)}")
    state = zoo.strip_derived(model.state_dict())
    activity = {}
    if method == "activation":
        if crops is None:
            raise DeepCompError("channel importance 'activation' needs validation crops (--data)")
        activity = measure_activity(model, groups, crops)
    return {g.name: cp.channel_importance(state, g, method, activity.get(g.name)) for g in groups}


# ---------------------------------------------------------------- thinner models
def thin_model(source: Source, ratios: Mapping[str, float], scores: Mapping[str, np.ndarray] | None = None,
               method: str = "l1") -> tuple[nn.Module, dict, dict]:
    """The source model without ``ratios[group]`` of each group's channels: (model, widths, kept indices).

    A new model (the source is untouched) on the source's device, weights
    assigned, entropy coders *not* updated.
    """
    device = next(source.model.parameters()).device
    state = zoo.strip_derived(source.model.state_dict())
    groups = source.groups
    new_state, kept = cp.prune_channels(state, groups, {k: v for k, v in ratios.items() if v > 0}, method, scores)
    widths = dict(cp.widths(cp.shapes_of(new_state), groups))
    model = zoo.build(source.arch, source.quality, init_weights=False, widths=widths)
    zoo.assign_weights(model, new_state, "pruned state_dict")
    return model.to(device), widths, kept


# ---------------------------------------------------------------- sensitivity
@dataclass
class ChannelSensitivity:
    """RD loss of the model with one group pruned at each ratio (no retraining)."""

    base: dict
    groups: dict  # name -> {"size": n, "entries": [{"ratio", "kept", "loss", "bpp", "psnr"}]}
    ratios: list
    importance: str = "l1"
    meta: dict = field(default_factory=dict)

    def delta(self, group: str, ratio: float) -> float:
        if ratio == 0:
            return 0.0
        for e in self.groups[group]["entries"]:
            if abs(e["ratio"] - ratio) < 1e-9:
                return float(e["loss"]) - float(self.base["loss"])
        raise DeepCompError(f"the sensitivity of {group} at ratio {ratio} was not measured")

    def complete(self) -> bool:
        return all(len(g["entries"]) == len(self.ratios) for g in self.groups.values())

    def to_json(self) -> dict:
        return {"format": FORMAT, "base": self.base, "ratios": list(self.ratios), "importance": self.importance, "meta": self.meta,
                "groups": self.groups}

    @classmethod
    def from_json(cls, obj, source: str = "channel sensitivity") -> "ChannelSensitivity":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise DeepCompError(f"{source} is not a deepcomp channel sensitivity table (format {FORMAT!r})")
        try:
            return cls(base=dict(obj["base"]), groups=dict(obj["groups"]), ratios=[float(r) for r in obj["ratios"]],
                       importance=str(obj["importance"]), meta=dict(obj.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeepCompError(f"{source}: bad channel sensitivity table ({exc})") from None

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "ChannelSensitivity":
        return cls.from_json(read_json(path, "channel sensitivity table"), str(path))


def _ratio_grid(ratios) -> list[float]:
    grid = sorted({round(float(r), 6) for r in ratios} - {0.0})
    if not grid or any(not 0.0 < r < 1.0 for r in grid):
        raise DeepCompError("channel pruning ratios of the sensitivity grid must be fractions in (0, 1)")
    return grid


def analyze_channels(
    source: Source,
    crops: torch.Tensor,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    method: str = "l1",
    scores: Mapping[str, np.ndarray] | None = None,
    table: ChannelSensitivity | None = None,
    on_update: Callable[[ChannelSensitivity], None] | None = None,
    progress: bool = True,
    only: Sequence[str] | None = None,
) -> ChannelSensitivity:
    """Measure (or complete a resumed ``table``) the RD loss of each group (of ``only``) pruned alone at each ratio."""
    from tqdm import tqdm

    grid = _ratio_grid(ratios)
    groups = source.groups
    sizes = {g: n for g, n in source.widths.items() if only is None or g in only}
    if scores is None:
        scores = importance_scores(source.model, groups, method, crops)
    if table is None:
        base = evaluate_rd(source.model, crops, source.lmbda)
        table = ChannelSensitivity(base=base, groups={g: {"size": n, "entries": []} for g, n in sizes.items()}, ratios=grid,
                                   importance=method, meta={"lmbda": source.lmbda, "crops": int(len(crops)),
                                                            "crop_size": list(crops.shape[-2:]), "source": source.path})
    elif sorted(table.ratios) != grid or table.importance != method or table.groups.keys() != sizes.keys() or \
            any(table.groups[g]["size"] != n for g, n in sizes.items()):
        raise DeepCompError("the saved channel sensitivity was measured on another grid, importance or model; use a new file")
    todo = [(g, r) for g in table.groups for r in grid if not any(abs(e["ratio"] - r) < 1e-9 for e in table.groups[g]["entries"])]
    bar = tqdm(total=len(todo), desc="channel sensitivity", unit="setting", disable=not progress or not todo, dynamic_ncols=True)
    try:
        last = None
        for g, r in todo:
            if on_update is not None and last is not None and last != g:
                on_update(table)
            model, widths, _ = thin_model(source, {g: r}, scores, method)
            res = evaluate_rd(model, crops, source.lmbda)
            table.groups[g]["entries"].append({"ratio": r, "kept": widths[g], "loss": res["loss"], "bpp": res["bpp"], "psnr": res["psnr"]})
            table.groups[g]["entries"].sort(key=lambda e: e["ratio"])
            bar.update(1)
            bar.set_postfix(group=g, r=r, loss=f"{res['loss']:.4f}")
            last = g
    finally:
        bar.close()
    if on_update is not None:
        on_update(table)
    return table


def plot_channel_sensitivity(table: ChannelSensitivity, path: str | Path) -> Path:
    """RD loss increase against the fraction of channels removed, one line per group."""
    from .report import _pyplot

    plt = _pyplot()

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for g, info in table.groups.items():
        rs = [0.0] + [e["ratio"] for e in info["entries"]]
        ax.plot(rs, [table.delta(g, r) for r in rs], marker="o", ms=3, label=f"{g} ({info['size']})")
    ax.set_xlabel("fraction of the group's channels removed (no retraining)")
    ax.set_ylabel(f"RD loss increase (base {table.base['loss']:.4f})")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"Channel-pruning sensitivity ({table.importance} importance)\nvalidation crops of the training photos", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- costs and allocation
def cost_weights(arch: str, quality: int, kind: str = "macs") -> dict[str, float] | None:
    """Weights for ``channel_pruning.cost``: MACs per pixel (encode + decode), or None (parameters)."""
    if kind not in COSTS:
        raise DeepCompError(f"unknown cost {kind!r}; choose one of {', '.join(COSTS)}")
    if kind == "params":
        return None
    w = zoo.mac_weights(arch, quality)
    total: dict[str, float] = {}
    for side in w.values():
        for k, v in side.items():
            total[k] = total.get(k, 0.0) + v
    return total


@dataclass
class ChannelAllocation:
    """Per-group ratios with their widths, cost and predicted loss increase."""

    ratios: dict
    widths: dict
    cost: float
    base_cost: float
    delta: float
    kind: str = "macs"
    target: dict = field(default_factory=dict)

    @property
    def removed(self) -> float:
        return 1.0 - self.cost / self.base_cost if self.base_cost else 0.0

    def to_json(self) -> dict:
        return {"ratios": self.ratios, "widths": self.widths, "cost": self.cost, "base_cost": self.base_cost, "removed": self.removed,
                "delta": self.delta, "kind": self.kind, "target": self.target}


def _widths_for(sizes: Mapping[str, int], ratios: Mapping[str, float]) -> dict[str, int]:
    return {g: cp.kept_count(n, ratios.get(g, 0.0)) for g, n in sizes.items()}


def allocate_channels(
    table: ChannelSensitivity,
    shapes: Mapping,
    groups: Sequence[cp.ChannelGroup],
    weights: Mapping[str, float] | None,
    target_removed: float | None = None,
    target_loss: float | None = None,
    kind: str = "macs",
    only: Sequence[str] | None = None,
) -> ChannelAllocation:
    """Ratios per group that remove at least ``target_removed`` of the cost, or stay within ``target_loss``.

    Greedy on the measured grid (see the module docstring); ``only``
    restricts the groups that may be pruned.
    """
    if (target_removed is None) == (target_loss is None):
        raise DeepCompError("give a target fraction of the cost to remove or a target loss increase (one of them)")
    if target_removed is not None and not 0.0 < target_removed < 1.0:
        raise DeepCompError(f"the target fraction to remove must be in (0, 1), got {target_removed}")
    sizes = dict(cp.widths(shapes, groups))
    names = [g for g in sizes if (only is None or g in only)]
    for g in names:
        if g not in table.groups:
            raise DeepCompError(f"the channel sensitivity has no group {g}")
    grid = [0.0] + sorted(table.ratios)
    pos = {g: 0 for g in sizes}
    base_cost = cp.cost(shapes, weights)

    def total(p) -> float:
        return cp.cost(cp.pruned_shapes(shapes, groups, _widths_for(sizes, {g: grid[i] for g, i in p.items()})), weights)

    current = base_cost
    delta = 0.0
    while True:
        if target_removed is not None and 1.0 - current / base_cost >= target_removed - 1e-12:
            break
        best = None
        for g in names:
            d0 = table.delta(g, grid[pos[g]])
            for j in range(pos[g] + 1, len(grid)):
                c = total({**pos, g: j})
                saved = current - c
                if saved <= 0:
                    continue
                dl = table.delta(g, grid[j]) - d0
                if target_loss is not None and delta + dl > target_loss + 1e-12:
                    continue
                # a move that meets the size target ends the search: the cheapest in loss wins;
                # before that, the least loss increase per unit of cost removed
                finishes = target_removed is not None and 1.0 - c / base_cost >= target_removed - 1e-12
                key = (0, dl, -saved) if finishes else (1, dl / saved, j)
                if best is None or key < best[0]:
                    best = (key, g, j, c, dl)
        if best is None:
            break
        _, g, j, c, dl = best
        pos[g], current, delta = j, c, delta + dl
    ratios = {g: grid[i] for g, i in pos.items()}
    alloc = ChannelAllocation(ratios, _widths_for(sizes, ratios), current, base_cost, delta, kind,
                              {"removed": target_removed, "loss": target_loss})
    if target_removed is not None and alloc.removed < target_removed - 1e-12:
        raise DeepCompError(f"the sensitivity grid removes at most {alloc.removed:.1%} of the {kind} (target {target_removed:.1%}); "
                            f"add larger ratios")
    return alloc


def uniform_allocation(shapes: Mapping, groups: Sequence[cp.ChannelGroup], weights: Mapping[str, float] | None, target_removed: float,
                       kind: str = "macs", only: Sequence[str] | None = None) -> ChannelAllocation:
    """One ratio for every group (of ``only``), the smallest that removes ``target_removed`` of the cost."""
    if not 0.0 < target_removed < 1.0:
        raise DeepCompError(f"the target fraction to remove must be in (0, 1), got {target_removed}")
    sizes = dict(cp.widths(shapes, groups))
    names = [g for g in sizes if (only is None or g in only)]
    base_cost = cp.cost(shapes, weights)

    def removed(r: float) -> float:
        w = _widths_for(sizes, {g: r for g in names})
        return 1.0 - cp.cost(cp.pruned_shapes(shapes, groups, w), weights) / base_cost

    lo, hi = 0.0, 0.999
    if removed(hi) < target_removed:
        raise DeepCompError(f"pruning every group cannot remove {target_removed:.1%} of the {kind}")
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if removed(mid) >= target_removed else (mid, hi)
    ratios = {g: (hi if g in names else 0.0) for g in sizes}
    widths = _widths_for(sizes, ratios)
    c = cp.cost(cp.pruned_shapes(shapes, groups, widths), weights)
    return ChannelAllocation(ratios, widths, c, base_cost, math.nan, kind, {"removed": target_removed, "uniform": True})


def model_costs(model: nn.Module, arch: str, quality: int, macs: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Parameters and MACs per pixel (encode, decode) of a (thinner) model."""
    macs = macs or zoo.mac_weights(arch, quality)
    shapes = cp.shapes_of(zoo.strip_derived(model.state_dict()))
    return {"params": int(sum(p.numel() for p in model.parameters())),
            "macs_encode": cp.cost(shapes, macs["encode"]), "macs_decode": cp.cost(shapes, macs["decode"])}


# ---------------------------------------------------------------- fine-tuning and files
def finetune(model: nn.Module, cfg: TrainConfig, data, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Plain RD fine-tuning of a (thinner) model for ``cfg.steps`` steps; returns the history.

    ``data`` is a :class:`deepcomp.finetune.TrainData`.  Runs on the GPU
    when there is one; the model is back on the CPU afterwards.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    try:
        state = train_steps(model, data.sampler, cfg, {}, data.val_crops, progress=progress, log=log)
    finally:
        model.cpu()
    return {"steps": int(state.get("step", 0)), "history": state.get("history", [])}


def save_pruned(path: str | Path, model: nn.Module, arch: str, quality: int, lmbda: float, widths: Mapping[str, int], info: Mapping) -> None:
    """Write a CompressAI-style checkpoint of a channel-pruned model (``update(force=True)`` applied), atomically."""
    model = model.cpu()
    model.update(force=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    config = {"arch": arch, "quality": int(quality), "lmbda": float(lmbda), "widths": {k: int(v) for k, v in widths.items()},
              "channel_pruning": json.loads(json.dumps(dict(info), default=_jsonable))}
    write_checkpoint(path, {"state_dict": state, "config": config})


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON-able: {type(v).__name__}")


def parse_ratios(text: str) -> dict[str, float]:
    """Per-group ratios from inline JSON (``{"g_a.0": 0.5}``) or a JSON file of that form."""
    text = str(text)
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeepCompError(f"--ratios is not valid JSON: {exc}") from None
    else:
        obj = read_json(text, "channel ratios file")
    if not isinstance(obj, dict) or not obj:
        raise DeepCompError("--ratios must be a JSON object of channel group -> fraction of channels to remove")
    out = {}
    for k, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise DeepCompError(f"channel ratio of {k} must be a fraction in [0, 1), got {v!r}")
        out[str(k)] = float(v)
    return out


def validation_data(folder: str | Path, val_fraction: float = 0.1, val_patch: int = 256):
    """The validation crops of :class:`deepcomp.finetune.TrainData` without its training sampler (no fine-tuning)."""
    from .finetune import TrainData

    return TrainData.validation_only(folder, val_fraction, val_patch)


def make_pruned(
    source: Source,
    ratios: Mapping[str, float],
    out: str | Path,
    scores: Mapping[str, np.ndarray] | None = None,
    importance: str = "activation",
    train_data=None,
    finetune_steps: int = 0,
    lr: float = 1e-4,
    batch_size: int = 8,
    patch_size: int = 256,
    val_every: int = 250,
    seed: int = 0,
    record: Mapping | None = None,
    macs: Mapping | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict]:
    """Thin the source to ``ratios``, fine-tune ``finetune_steps`` steps on ``train_data``, write ``out``.

    Returns the thinner model and the ``channel_pruning`` record written
    into the checkpoint's config (``record`` plus ratios, widths, costs,
    validation RD before and after fine-tuning).
    """
    if finetune_steps > 0 and train_data is None:
        raise DeepCompError("fine-tuning needs the training photos: pass --data")
    rec = dict(record or {})
    rec.update(source=source.path, importance=importance, source_widths=dict(source.widths), ratios=dict(ratios))
    model, widths, _ = thin_model(source, ratios, scores, importance)
    rec["widths"] = widths
    macs = macs or zoo.mac_weights(source.arch, source.quality)
    rec["costs"] = {"source": model_costs(source.model, source.arch, source.quality, macs), "pruned": model_costs(model, source.arch, source.quality, macs)}
    crops = train_data.val_crops if train_data is not None else None
    if crops is not None:
        rec["val"] = {"source": evaluate_rd(source.model, crops, source.lmbda), "pruned": evaluate_rd(model, crops, source.lmbda)}
    if finetune_steps > 0:
        cfg = TrainConfig(arch=source.arch, quality=source.quality, lmbda=source.lmbda, steps=finetune_steps, batch_size=batch_size,
                          patch_size=patch_size, lr=lr, val_every=min(val_every, finetune_steps), seed=seed)
        log(f"fine-tuning the thinner model for {finetune_steps} steps (lr {lr:g}, batch {batch_size}x{patch_size}px, lambda {source.lmbda:g})")
        ft = finetune(model, cfg, train_data, progress=progress, log=log)
        rec["finetune"] = {"steps": ft["steps"], "lr": lr, "batch_size": batch_size, "patch_size": patch_size, "history": ft["history"]}
        if crops is not None:
            rec["val"]["finetuned"] = evaluate_rd(model, crops, source.lmbda)
    save_pruned(out, model, source.arch, source.quality, source.lmbda, widths, rec)
    c0, c1 = rec["costs"]["source"], rec["costs"]["pruned"]
    m0, m1 = c0["macs_encode"] + c0["macs_decode"], c1["macs_encode"] + c1["macs_decode"]
    log(f"wrote {out}: {c1['params']:,} parameters ({c1['params'] / c0['params']:.1%}), {m1 / 1e3:.1f} kMAC/pixel ({m1 / m0:.1%})")
    return model, rec


def channel_prune(
    checkpoint: str | Path,
    out: str | Path,
    *,
    arch: str | None = None,
    quality: int | None = None,
    lmbda: float | None = None,
    ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
    target: float | None = None,
    cost: str = "macs",
    target_loss: float | None = None,
    groups: Sequence[str] | None = None,
    importance: str = "activation",
    sens_ratios: Sequence[float] = DEFAULT_RATIOS,
    sensitivity: str | Path | None = None,
    finetune_steps: int = 0,
    data: str | Path | None = None,
    batch_size: int = 8,
    patch_size: int = 256,
    lr: float = 1e-4,
    val_every: int = 250,
    val_fraction: float = 0.1,
    val_patch: int = 256,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Prune a checkpoint's channels (given ratios, or allocated for a target), fine-tune, write ``out``.

    Exactly one of ``ratio`` (every group, or those of ``groups``),
    ``ratios`` (per group), ``target`` (fraction of the ``cost`` to remove)
    and ``target_loss`` (predicted RD loss increase).  Targets run the
    sensitivity analysis on ``data`` (reused from / saved to
    ``sensitivity``).  Returns the ``channel_pruning`` record written into
    the checkpoint's config.
    """
    from .checkpoints import check_output_path
    from .finetune import TrainData

    check_output_path(out)
    if sum(x is not None for x in (ratio, ratios, target, target_loss)) != 1:
        raise DeepCompError("give one of --ratio, --ratios, --target-macs/--target-params, --target-loss")
    if finetune_steps < 0:
        raise DeepCompError("--finetune-steps must be >= 0")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise DeepCompError(f"--ratio must be a fraction in [0, 1), got {ratio}")
    if importance not in cp.IMPORTANCE:
        raise DeepCompError(f"unknown channel importance {importance!r}; choose one of {', '.join(cp.IMPORTANCE)}")
    if cost not in COSTS:
        raise DeepCompError(f"unknown cost {cost!r}; choose one of {', '.join(COSTS)}")
    source = load_source(checkpoint, arch, quality, lmbda)
    all_groups = source.groups
    names = [g.name for g in all_groups]
    for given in (groups or []), (ratios or {}):
        bad = [g for g in given if g not in names]
        if bad:
            raise DeepCompError(f"unknown channel group {bad[0]!r}; groups: {', '.join(names)}")
    needs_data = target is not None or target_loss is not None or importance == "activation" or finetune_steps > 0
    train_data = None
    if needs_data:
        if data is None:
            raise DeepCompError("this needs the training photos: pass --data")
        train_data = TrainData.from_folder(data, patch_size, val_fraction, val_patch, seed) if finetune_steps > 0 else \
            validation_data(data, val_fraction, val_patch)
    crops = train_data.val_crops if train_data is not None else None
    scores = importance_scores(source.model, all_groups, importance, crops)
    record: dict = {}
    if ratio is not None:
        chosen = {g: (ratio if groups is None or g in groups else 0.0) for g in names}
    elif ratios is not None:
        chosen = {g: float(ratios.get(g, 0.0)) for g in names}
    else:
        table = None
        if sensitivity is not None and Path(sensitivity).is_file():
            table = ChannelSensitivity.load(sensitivity)
            log(f"channel sensitivity from {sensitivity}")
        save = (lambda t: t.save(sensitivity)) if sensitivity is not None else None
        table = analyze_channels(source, crops, sens_ratios, importance, scores, table=table, on_update=save, progress=progress, only=groups)
        weights = cost_weights(source.arch, source.quality, cost)
        alloc = allocate_channels(table, source.shapes(), all_groups, weights, target, target_loss, cost, only=groups)
        chosen = alloc.ratios
        record["allocation"] = alloc.to_json()
        log(f"allocation: {alloc.removed:.1%} of the {cost} removed, predicted loss increase {alloc.delta:+.4f}: "
            + ", ".join(f"{g} {r:g}" for g, r in chosen.items() if r > 0))
    _, record = make_pruned(source, chosen, out, scores, importance, train_data, finetune_steps, lr, batch_size, patch_size, val_every,
                            seed, record, progress=progress, log=log)
    return record
