"""Per-tensor compression rules, chosen by name pattern.

A policy is an ordered list of rules; the first rule that matches a tensor
decides how it is stored.  A rule matches by ``pattern`` (``fnmatch`` on the
tensor name, e.g. ``g_a.*``), by ``kind`` (``weight``: a tensor named
``*weight`` with two or more dimensions, i.e. conv, transposed-conv and
linear weights; ``any``) and by ``min_size`` (number of elements).

What a rule says:
- ``prune``: fraction of weights to zero by magnitude, or ``prune_std``:
  Han et al.'s threshold ``quality * std``; neither: dense.
  ``granularity``: ``element`` (each weight on its own |w|) or ``kernel``
  (``prune`` only: whole kernels, the trailing spatial dimensions of a conv
  weight, by their L2 norm; their positions then cost one bit per kernel).
- ``bits``: share the (surviving) weights in ``2**bits`` values; ``None``
  stores the tensor raw, as ``storage`` (``fp32`` or ``fp16``).
- ``quantizer``: ``kmeans`` (with ``init`` linear/density/forgy) or
  ``uniform`` (``per_channel`` along the output-channel axis).

Policy files are JSON: ``{"rules": [{...}, ...], "global_prune": null}``.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import DeepCompError

KINDS = ("any", "weight")
QUANTIZERS = ("kmeans", "uniform")
STORAGES = ("fp32", "fp16")
GRANULARITIES = ("element", "kernel")


@dataclass(frozen=True)
class Rule:
    pattern: str = "*"
    kind: str = "any"
    min_size: int = 0
    prune: float | None = None
    prune_std: float | None = None
    bits: int | None = None
    quantizer: str = "kmeans"
    init: str = "linear"
    per_channel: bool = False
    storage: str = "fp32"
    granularity: str = "element"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DeepCompError(f"rule {self.pattern!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.prune is not None and not (0.0 <= self.prune < 1.0):
            raise DeepCompError(f"rule {self.pattern!r}: prune must be in [0, 1), got {self.prune}")
        if self.prune is not None and self.prune_std is not None:
            raise DeepCompError(f"rule {self.pattern!r}: give prune or prune_std, not both")
        if self.prune_std is not None and self.prune_std < 0:
            raise DeepCompError(f"rule {self.pattern!r}: prune_std must be >= 0")
        if self.bits is not None and (not isinstance(self.bits, int) or not 1 <= self.bits <= 16):
            raise DeepCompError(f"rule {self.pattern!r}: bits must be an integer in 1..16, got {self.bits!r}")
        if self.quantizer not in QUANTIZERS:
            raise DeepCompError(f"rule {self.pattern!r}: quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        from .weight_sharing import INITS

        if self.init not in INITS:
            raise DeepCompError(f"rule {self.pattern!r}: init must be one of {INITS}, got {self.init!r}")
        if self.storage not in STORAGES:
            raise DeepCompError(f"rule {self.pattern!r}: storage must be one of {STORAGES}, got {self.storage!r}")
        if self.granularity not in GRANULARITIES:
            raise DeepCompError(f"rule {self.pattern!r}: granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity != "element" and self.prune_std is not None:
            raise DeepCompError(f"rule {self.pattern!r}: prune_std prunes single weights; kernel granularity needs prune")
        if (self.prune or self.prune_std is not None) and self.bits is None:
            raise DeepCompError(f"rule {self.pattern!r}: a pruned tensor needs bits (sparse tensors are stored shared)")

    def matches(self, name: str, shape: tuple[int, ...]) -> bool:
        if not fnmatch.fnmatchcase(name, self.pattern):
            return False
        if self.kind == "weight" and not (name.endswith("weight") and len(shape) >= 2):
            return False
        return int(np.prod(shape, dtype=np.int64)) >= self.min_size

    @property
    def prunes(self) -> bool:
        return bool(self.prune) or self.prune_std is not None


#: Defaults: entropy models raw fp32 (small, and their CDFs are sensitive);
#: conv/linear weights shared in 8 bits; other tensors of 1024 or more
#: elements (GDN gamma) shared in 5 bits; the small rest (biases) raw fp32.
DEFAULT_RULES = (
    Rule(pattern="*entropy_bottleneck*"),
    Rule(pattern="*gaussian_conditional*"),
    Rule(kind="weight", bits=8),
    Rule(min_size=1024, bits=5),
    Rule(),
)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = DEFAULT_RULES
    global_prune: float | None = None  # one threshold over every tensor whose rule prunes

    def __post_init__(self) -> None:
        if self.global_prune is not None and any(r.prunes and r.granularity != "element" for r in self.rules):
            raise DeepCompError("global pruning prunes single weights; kernel granularity needs a per-tensor prune")

    def rule_for(self, name: str, shape: Iterable[int]) -> Rule:
        shape = tuple(int(s) for s in shape)
        for rule in self.rules:
            if rule.matches(name, shape):
                return rule
        return Rule()

    def with_weight_rule(self, prune: float | None = None, bits: int | None = None, granularity: str | None = None) -> "Policy":
        """Set ``prune``/``bits``/``granularity`` on every ``kind="weight"`` rule (the CLI's --prune/--bits/--granularity)."""
        rules = []
        for r in self.rules:
            if r.kind == "weight":
                changes = {}
                if prune is not None:
                    changes.update(prune=prune or None, prune_std=None)
                if bits is not None:
                    changes["bits"] = bits
                if granularity is not None:
                    changes["granularity"] = granularity
                r = replace(r, **changes)
            rules.append(r)
        return replace(self, rules=tuple(rules))

    def with_raw_storage(self, storage: str) -> "Policy":
        """Store every tensor a rule leaves unshared (``bits`` None) as ``storage`` (the CLI's --raw-storage)."""
        if storage not in STORAGES:
            raise DeepCompError(f"raw storage must be one of {STORAGES}, got {storage!r}")
        return replace(self, rules=tuple(replace(r, storage=storage) for r in self.rules))

    def to_json(self) -> dict:
        # the default granularity is left out, so that policies written before it existed read back unchanged
        rules = [{k: v for k, v in asdict(r).items() if not (k == "granularity" and v == "element")} for r in self.rules]
        return {"rules": rules, "global_prune": self.global_prune}

    @classmethod
    def from_json(cls, obj: dict, source: str = "policy") -> "Policy":
        if not isinstance(obj, dict) or not isinstance(obj.get("rules"), list):
            raise DeepCompError(f"{source}: expected an object with a list of rules")
        known = {f.name for f in fields(Rule)}
        rules = []
        for i, r in enumerate(obj["rules"]):
            if not isinstance(r, dict):
                raise DeepCompError(f"{source}: rule {i} is not an object")
            unknown = set(r) - known
            if unknown:
                raise DeepCompError(f"{source}: rule {i} has unknown field(s) {', '.join(sorted(unknown))}")
            rules.append(Rule(**r))
        extra = set(obj) - {"rules", "global_prune"}
        if extra:
            raise DeepCompError(f"{source}: unknown field(s) {', '.join(sorted(extra))}")
        gp = obj.get("global_prune")
        if gp is not None and not (isinstance(gp, (int, float)) and 0 <= gp < 1):
            raise DeepCompError(f"{source}: global_prune must be a fraction in [0, 1)")
        return cls(rules=tuple(rules), global_prune=gp)


def read_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.is_file():
        raise DeepCompError(f"policy file not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeepCompError(f"policy file {path} is not valid JSON: {exc}") from None
    return Policy.from_json(obj, source=str(path))
