"""Per-layer sensitivity to pruning and weight sharing, and an allocator.

Sensitivity (Han et al., Deep Compression, fig. 6; no retraining)
    For each *layer* (a parameter the policy shares: conv/linear weights,
    GDN ``gamma``), and each setting (pruning ratio, bit width) of a grid,
    only that layer is pruned by magnitude and shared through the real codec
    (the same path as ``deepcomp compress``), and the rate-distortion loss
    ``lambda * 255^2 * MSE + bpp`` of the whole model is measured on fixed
    validation crops of the *training* photos (never Kodak).  The encoded
    size of that tensor alone (Huffman-coded records plus its share of the
    header) is recorded for every setting.  Only conv/linear weights
    (``*weight`` with two or more dimensions) get pruning ratios; the other
    layers vary their bit width only.

    ``mode="joint"`` measures every (ratio, bits) pair; ``"separable"``
    measures the pruning curve at the largest bit width and the bit-width
    curve unpruned, and predicts the rest additively:
    ``d(r, b) = d(r, B) + d(0, b) - d(0, B)``.

Allocation
    :func:`allocate` picks one setting per layer for a target file size or a
    target loss increase, assuming the layers' loss increases add up (as
    Han's per-layer analysis does).  Per layer the settings are reduced to
    their Pareto front (fewer bytes, lower loss) and its lower convex hull;
    the steps along all hulls are taken greedily in order of loss increase
    per byte saved (the Lagrangian solution on the hulls), then changes of
    one or two layers' settings that fit the budget better are made while
    they help (the greedy pass alone is optimal only at the hull's
    vertices).  The result is a
    :class:`~deepcomp.policy.Policy` with one rule per layer in front of the
    base policy's rules.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import codec, container, zoo
from .checkpoints import atomic_write_bytes, read_json
from .errors import DeepCompError
from .policy import Policy, Rule
from .training import evaluate_rd

FORMAT = "deepcomp-sensitivity/1"
DEFAULT_RATIOS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_BITS = (3, 4, 5, 6, 8)
MODES = ("joint", "separable")


def _key(ratio: float, bits: int) -> tuple[float, int]:
    return (round(float(ratio), 6), int(bits))


def is_prunable(name: str, shape: Sequence[int]) -> bool:
    """Conv/linear weights: the tensors that get pruning ratios."""
    return name.endswith("weight") and len(shape) >= 2


def candidate_layers(model: nn.Module, policy: Policy) -> list[str]:
    """Parameters the policy shares (bits set): the layers the allocator chooses settings for."""
    out = []
    for name, p in model.named_parameters():
        rule = policy.rule_for(name, tuple(p.shape))
        if rule.bits is not None and p.is_floating_point() and p.numel() > 0:
            out.append(name)
    return out


def setting_rule(base: Rule, ratio: float, bits: int) -> Rule:
    """The base rule of a layer with a magnitude pruning ratio and a bit width."""
    return replace(base, pattern="*", kind="any", min_size=0, prune=float(ratio) if ratio > 0 else None, prune_std=None, bits=int(bits))


def encode_tensor(name: str, a: np.ndarray, rule: Rule, channel_axis: int = 0) -> tuple[np.ndarray, int]:
    """One tensor through the codec: (decoded values, bytes it adds to a file)."""
    policy = Policy(rules=(rule,))
    c = codec.encode_arrays({name: a}, policy, channel_axes={name: channel_axis})
    empty = codec.encode_arrays({}, policy)
    nbytes = len(container.to_bytes(c)) - len(container.to_bytes(empty))
    return codec.decode_arrays(c, name)[name], int(nbytes)


# ---------------------------------------------------------------- the table
@dataclass
class SensitivityTable:
    """Measured settings per layer; losses relative to ``base["loss"]``."""

    base: dict
    layers: dict  # name -> {"shape": [...], "size": n, "prunable": bool, "rule": {...}}
    entries: list = field(default_factory=list)  # {"layer", "ratio", "bits", "bytes", "loss", "bpp", "psnr"}; loss None = not measured
    ratios: list = field(default_factory=list)
    bits: list = field(default_factory=list)
    mode: str = "joint"
    fixed_bytes: int = 0  # everything that is not a layer (raw tensors, the file's frame and header)
    fp32_bytes: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {(e["layer"],) + _key(e["ratio"], e["bits"]): e for e in self.entries}

    def add(self, entry: dict) -> None:
        k = (entry["layer"],) + _key(entry["ratio"], entry["bits"])
        if k in self._index:
            self._index[k].update(entry)
        else:
            self.entries.append(entry)
            self._index[k] = entry

    def entry(self, layer: str, ratio: float, bits: int) -> dict | None:
        return self._index.get((layer,) + _key(ratio, bits))

    def layer_ratios(self, layer: str) -> list[float]:
        return sorted(self.ratios) if self.layers[layer]["prunable"] else [0.0]

    def settings(self, layer: str) -> list[tuple[float, int]]:
        return [(r, b) for r in self.layer_ratios(layer) for b in sorted(self.bits)]

    def measured_settings(self, layer: str) -> list[tuple[float, int]]:
        """The settings whose loss ``mode`` measures."""
        if self.mode == "joint" or not self.layers[layer]["prunable"]:
            return self.settings(layer)
        top = max(self.bits)
        return sorted({(r, top) for r in self.layer_ratios(layer)} | {(0.0, b) for b in self.bits})

    def delta(self, layer: str, ratio: float, bits: int) -> float:
        """Loss increase of the setting: measured, or predicted additively (separable mode)."""
        e = self.entry(layer, ratio, bits)
        if e is not None and e.get("loss") is not None:
            return float(e["loss"]) - float(self.base["loss"])
        top = max(self.bits)
        parts = [self.entry(layer, ratio, top), self.entry(layer, 0.0, bits), self.entry(layer, 0.0, top)]
        if any(p is None or p.get("loss") is None for p in parts):
            raise DeepCompError(f"sensitivity of {layer} at ratio {ratio}, {bits} bits was not measured")
        return float(parts[0]["loss"]) + float(parts[1]["loss"]) - float(parts[2]["loss"]) - float(self.base["loss"])

    def nbytes(self, layer: str, ratio: float, bits: int) -> int:
        e = self.entry(layer, ratio, bits)
        if e is None or e.get("bytes") is None:
            raise DeepCompError(f"size of {layer} at ratio {ratio}, {bits} bits was not measured")
        return int(e["bytes"])

    def options(self, layer: str) -> list[dict]:
        """Every setting of a layer: ratio, bits, bytes, delta."""
        return [{"ratio": r, "bits": b, "bytes": self.nbytes(layer, r, b), "delta": self.delta(layer, r, b)} for r, b in self.settings(layer)]

    def complete(self) -> bool:
        for layer in self.layers:
            for r, b in self.settings(layer):
                e = self.entry(layer, r, b)
                if e is None or e.get("bytes") is None:
                    return False
            for r, b in self.measured_settings(layer):
                if self.entry(layer, r, b).get("loss") is None:
                    return False
        return True

    def to_json(self) -> dict:
        return {"format": FORMAT, "base": self.base, "layers": self.layers, "ratios": list(self.ratios), "bits": list(self.bits), "mode": self.mode,
                "fixed_bytes": self.fixed_bytes, "fp32_bytes": self.fp32_bytes, "meta": self.meta, "entries": self.entries}

    @classmethod
    def from_json(cls, obj: dict, source: str = "sensitivity table") -> "SensitivityTable":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise DeepCompError(f"{source} is not a deepcomp sensitivity table (format {FORMAT!r})")
        try:
            return cls(base=obj["base"], layers=obj["layers"], entries=list(obj["entries"]), ratios=list(obj["ratios"]), bits=list(obj["bits"]),
                       mode=obj["mode"], fixed_bytes=int(obj["fixed_bytes"]), fp32_bytes=int(obj["fp32_bytes"]), meta=dict(obj.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeepCompError(f"{source}: bad sensitivity table ({exc})") from None

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityTable":
        return cls.from_json(read_json(path, "sensitivity table"), str(path))


# ---------------------------------------------------------------- measuring
def _grid(ratios: Iterable[float], bits: Iterable[int]) -> tuple[list[float], list[int]]:
    ratios = sorted({round(float(r), 6) for r in ratios} | {0.0})
    bits = sorted({int(b) for b in bits})
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise DeepCompError("pruning ratios must be fractions in [0, 1)")
    if not bits or any(not 1 <= b <= 16 for b in bits):
        raise DeepCompError("bit widths must be integers in 1..16")
    return ratios, bits


def analyze(
    model: nn.Module,
    crops: torch.Tensor,
    lmbda: float,
    policy: Policy | None = None,
    ratios: Iterable[float] = DEFAULT_RATIOS,
    bits: Iterable[int] = DEFAULT_BITS,
    mode: str = "joint",
    layers: Sequence[str] | None = None,
    table: SensitivityTable | None = None,
    on_update: Callable[[SensitivityTable], None] | None = None,
    progress: bool = True,
    meta: Mapping | None = None,
) -> SensitivityTable:
    """Measure (or complete a resumed ``table``) the per-layer sensitivity of ``model``.

    ``crops``: validation crops of the training photos; ``lmbda``: the
    baseline's lambda.  ``layers`` (default: :func:`candidate_layers`)
    restricts the layers.  ``on_update`` is called after each layer (e.g. to
    save the table, which makes the analysis resumable).  The model's
    weights are restored afterwards.
    """
    from tqdm import tqdm

    if mode not in MODES:
        raise DeepCompError(f"unknown sensitivity mode {mode!r}; choose one of {', '.join(MODES)}")
    policy = policy or Policy()
    ratios, bits = _grid(ratios, bits)
    params = dict(model.named_parameters())
    names = list(layers) if layers is not None else candidate_layers(model, policy)
    for n in names:
        if n not in params:
            raise DeepCompError(f"no parameter {n!r} in the model")
    state = zoo.strip_derived(model.state_dict())
    if table is None:
        base = evaluate_rd(model, crops, lmbda)
        info = {}
        for n in names:
            shape = list(params[n].shape)
            info[n] = {"shape": shape, "size": int(params[n].numel()), "prunable": is_prunable(n, shape),
                       "rule": asdict(policy.rule_for(n, tuple(shape)))}
        rest = {k: v.detach().cpu().numpy() for k, v in state.items() if k not in names}
        fixed = len(container.to_bytes(codec.encode_arrays(rest, policy, dict(meta or {}), channel_axes=zoo.output_channel_axes(model))))
        fp32 = 4 * sum(int(v.numel()) for v in state.values())
        table = SensitivityTable(base=base, layers=info, ratios=ratios, bits=bits, mode=mode, fixed_bytes=fixed, fp32_bytes=fp32,
                                 meta={"lmbda": lmbda, "crops": int(len(crops)), "crop_size": list(crops.shape[-2:]), **dict(meta or {})})
    else:
        if sorted(table.ratios) != ratios or sorted(table.bits) != bits or table.mode != mode or set(table.layers) != set(names):
            raise DeepCompError("the saved sensitivity table was measured on another grid or other layers; use a new output folder")
        if any(table.layers[n]["rule"].get("granularity", "element") != policy.rule_for(n, tuple(params[n].shape)).granularity for n in names):
            raise DeepCompError("the saved sensitivity table pruned at another granularity (single weights or kernels); use a new output folder")
    axes = zoo.output_channel_axes(model)
    todo = []
    for n in names:
        measured = set(table.measured_settings(n))
        for r, b in table.settings(n):
            e = table.entry(n, r, b)
            if e is None or (((r, b) in measured) and e.get("loss") is None):
                todo.append((n, r, b, (r, b) in measured))
    bar = tqdm(total=len(todo), desc="sensitivity", unit="setting", disable=not progress or not todo, dynamic_ncols=True)
    try:
        last = None
        for n, r, b, measure in todo:
            p = params[n]
            original = p.detach().clone()
            rule = Rule(**table.layers[n]["rule"])
            decoded, nbytes = encode_tensor(n, original.cpu().numpy(), setting_rule(rule, r, b), axes.get(n, 0))
            entry = {"layer": n, "ratio": r, "bits": b, "bytes": nbytes, "loss": None, "bpp": None, "psnr": None}
            if measure:
                with torch.no_grad():
                    p.copy_(torch.from_numpy(decoded).to(p.device, p.dtype))
                try:
                    res = evaluate_rd(model, crops, lmbda)
                finally:
                    with torch.no_grad():
                        p.copy_(original)
                entry.update(loss=res["loss"], bpp=res["bpp"], psnr=res["psnr"])
            table.add(entry)
            bar.update(1)
            bar.set_postfix(layer=n, r=r, b=b)
            if on_update is not None and last is not None and last != n:
                on_update(table)
            last = n
    finally:
        bar.close()
    if on_update is not None:
        on_update(table)
    return table


# ---------------------------------------------------------------- plot
def plot_sensitivity(table: SensitivityTable, path: str | Path) -> Path:
    """Loss increase against pruning ratio (at the largest bit width) and against bit width (unpruned), one line per layer."""
    from .report import _pyplot

    plt = _pyplot()

    path = Path(path)
    top = max(table.bits)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    # one colour per layer in both panels (tab20: distinct for up to 20 layers, then repeated with another line style)
    cmap = plt.get_cmap("tab20")
    for i, (layer, info) in enumerate(table.layers.items()):
        style = {"color": cmap(i % 20), "linestyle": "-" if i < 20 else "--", "marker": "o", "ms": 3}
        if info["prunable"]:
            rs = table.layer_ratios(layer)
            ax1.plot(rs, [table.delta(layer, r, top) for r in rs], label=layer, **style)
        bs = sorted(table.bits)
        ax2.plot(bs, [table.delta(layer, 0.0, b) for b in bs], label=layer, **style)
    ax1.set_xlabel("pruning ratio (magnitude, this layer only)")
    ax1.set_ylabel(f"RD loss increase (base {table.base['loss']:.4f})")
    ax1.set_title(f"pruning, {top}-bit sharing")
    ax2.set_xlabel("bit width (k-means codebook, this layer only)")
    ax2.set_title("weight sharing, unpruned")
    for ax in (ax1, ax2):
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle("Per-layer sensitivity on validation crops of the training photos (no retraining)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- allocation
@dataclass
class Allocation:
    """One setting per layer, with the predicted file size and loss increase."""

    choices: dict  # layer -> (ratio, bits)
    bytes: int
    delta: float
    target_bytes: int | None = None
    target_loss: float | None = None
    rules: dict = field(default_factory=dict)  # layer -> the base rule's fields (quantizer, init, storage...)

    def policy(self, base: Policy) -> Policy:
        """``base`` with one exact-name rule per layer in front (magnitude pruning ratio, bit width)."""
        rules = []
        for name, (ratio, bits) in self.choices.items():
            rule = Rule(**self.rules[name]) if name in self.rules else base.rule_for(name, ())
            rules.append(replace(rule, pattern=_fnmatch_escape(name), kind="any", min_size=0, prune=float(ratio) if ratio > 0 else None,
                                 prune_std=None, bits=int(bits)))
        return replace(base, rules=tuple(rules) + tuple(base.rules), global_prune=None)

    def to_json(self) -> dict:
        return {"choices": {k: {"ratio": r, "bits": b} for k, (r, b) in self.choices.items()}, "bytes": self.bytes, "delta": self.delta,
                "target_bytes": self.target_bytes, "target_loss": self.target_loss}


def _fnmatch_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _hull(options: list[dict]) -> list[dict]:
    """Lower convex hull of the Pareto front (bytes ascending, delta descending)."""
    front: list[dict] = []
    best = math.inf
    for o in sorted(options, key=lambda o: (o["bytes"], o["delta"])):
        if o["delta"] < best:
            if front and front[-1]["bytes"] == o["bytes"]:
                front.pop()
            front.append(o)
            best = o["delta"]
    hull: list[dict] = []
    for o in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (b["bytes"] - a["bytes"]) * (o["delta"] - a["delta"]) - (b["delta"] - a["delta"]) * (o["bytes"] - a["bytes"])
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def _exchange(table: SensitivityTable, chosen: dict, target_bytes: int | None, target_loss: float | None, max_passes: int = 50) -> dict:
    """Local search after the greedy pass: the best change of one layer's or two layers' settings, while it helps.

    The greedy pass is optimal only where the budget falls on a vertex of
    the combined hull; between vertices a change of two layers (one up, one
    down) often fits the budget better.
    """
    layers = list(chosen)
    opts = {l: table.options(l) for l in layers}
    B = {l: np.array([o["bytes"] for o in opts[l]], dtype=np.float64) for l in layers}
    D = {l: np.array([o["delta"] for o in opts[l]], dtype=np.float64) for l in layers}
    cur = {l: next(i for i, o in enumerate(opts[l]) if o["ratio"] == chosen[l]["ratio"] and o["bits"] == chosen[l]["bits"]) for l in layers}

    def objective(nbytes, delta):
        # (feasible, value to minimise); ties broken by the other quantity
        if target_bytes is not None:
            return nbytes <= target_bytes, delta + nbytes * 1e-15
        return delta <= target_loss + 1e-12, nbytes + delta * 1e-9

    for _ in range(max_passes):
        tb = table.fixed_bytes + sum(B[l][cur[l]] for l in layers)
        td = sum(D[l][cur[l]] for l in layers)
        best_val = objective(tb, td)[1]
        best = None
        for i, l1 in enumerate(layers):
            nb = tb - B[l1][cur[l1]] + B[l1]
            nd = td - D[l1][cur[l1]] + D[l1]
            for j in range(len(nb)):
                ok, val = objective(nb[j], nd[j])
                if ok and val < best_val - 1e-12:
                    best_val, best = val, {l1: j}
            for l2 in layers[i + 1:]:
                nb2 = nb[:, None] - B[l2][cur[l2]] + B[l2][None, :]
                nd2 = nd[:, None] - D[l2][cur[l2]] + D[l2][None, :]
                if target_bytes is not None:
                    val2 = np.where(nb2 <= target_bytes, nd2 + nb2 * 1e-15, np.inf)
                else:
                    val2 = np.where(nd2 <= target_loss + 1e-12, nb2 + nd2 * 1e-9, np.inf)
                k = int(np.argmin(val2))
                if val2.flat[k] < best_val - 1e-12:
                    best_val, best = float(val2.flat[k]), {l1: k // val2.shape[1], l2: k % val2.shape[1]}
        if best is None:
            break
        cur.update(best)
    return {l: opts[l][cur[l]] for l in layers}


def allocate(table: SensitivityTable, target_bytes: int | None = None, target_loss: float | None = None) -> Allocation:
    """Per-layer settings for a file of at most ``target_bytes``, or at most ``target_loss`` predicted loss increase.

    With a size target, the loss increase is kept as small as the hulls
    allow; with a loss target, the file is made as small as possible.
    Raises ``DeepCompError`` if the target cannot be met.
    """
    if (target_bytes is None) == (target_loss is None):
        raise DeepCompError("give a target size or a target loss increase (one of them)")
    hulls = {layer: _hull(table.options(layer)) for layer in table.layers}
    pos = {layer: len(h) - 1 for layer, h in hulls.items()}  # start: the lowest loss
    total_bytes = table.fixed_bytes + sum(h[-1]["bytes"] for h in hulls.values())
    total_delta = sum(h[-1]["delta"] for h in hulls.values())
    if target_loss is not None and total_delta > target_loss:
        raise DeepCompError(f"no allocation meets a loss increase of {target_loss:g}: the smallest predicted increase is {total_delta:.4g}")
    heap: list = []

    def push(layer: str) -> None:
        j = pos[layer]
        if j > 0:
            h = hulls[layer]
            saved = h[j]["bytes"] - h[j - 1]["bytes"]
            cost = h[j - 1]["delta"] - h[j]["delta"]
            heapq.heappush(heap, (cost / saved, layer))

    for layer in hulls:
        push(layer)
    while heap:
        if target_bytes is not None and total_bytes <= target_bytes:
            break
        _, layer = heapq.heappop(heap)
        h, j = hulls[layer], pos[layer]
        saved, cost = h[j]["bytes"] - h[j - 1]["bytes"], h[j - 1]["delta"] - h[j]["delta"]
        if target_loss is not None and total_delta + cost > target_loss:
            continue  # this layer stops here; cheaper steps of other layers may still fit
        pos[layer] = j - 1
        total_bytes -= saved
        total_delta += cost
        push(layer)
    if target_bytes is not None and total_bytes > target_bytes:
        smallest = table.fixed_bytes + sum(h[0]["bytes"] for h in hulls.values())
        raise DeepCompError(f"no allocation on this grid reaches {target_bytes:,} bytes: the smallest predicted file is {smallest:,} bytes "
                            f"({table.fp32_bytes / smallest:.1f}x); add larger pruning ratios or smaller bit widths")
    chosen = {layer: hulls[layer][pos[layer]] for layer in table.layers}
    chosen = _exchange(table, chosen, target_bytes, target_loss)
    total_bytes = table.fixed_bytes + sum(o["bytes"] for o in chosen.values())
    total_delta = sum(o["delta"] for o in chosen.values())
    choices = {layer: (o["ratio"], o["bits"]) for layer, o in chosen.items()}
    rules = {layer: dict(table.layers[layer]["rule"]) for layer in table.layers if table.layers[layer].get("rule")}
    return Allocation(choices, int(total_bytes), float(total_delta), target_bytes, target_loss, rules)
