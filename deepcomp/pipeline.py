"""The whole Deep Compression pipeline with retraining, stage by stage, resumable.

    deepcomp pipeline CKPT -o OUT [--policy P | --target-ratio R | --target-loss D | --prune F --bits B] ...

Stages, each writing into ``OUT`` (a rerun skips what is finished and
resumes a training stage from its last checkpoint):

===========  =====================  ===============================================
stage        writes                 what it does
===========  =====================  ===============================================
sensitivity  sensitivity.json/.png  only with a target ratio or loss: per-layer
                                    sensitivity on validation crops of the training
                                    photos, then the allocator's policy
policy       policy.json            the policy used (given, default, or allocated)
prune        prune.pth.tar          one-shot magnitude pruning to the policy's
                                    masks, no retraining ("prune only")
retrain      retrain.pth.tar        iterative pruning (``prune_rounds``, AGP or
                                    linear) with masked retraining from the baseline
share        share.dcmp             the retrained weights k-means shared and coded
centroids    centroids.pth.tar      trained quantization (centroid fine-tuning)
huffman      final.dcmp             the fine-tuned weights, stored exactly
evaluate     results/*.json,        every stage on the evaluation images (Kodak,
             stages.md/.csv/.json   real bitstreams) and on the validation crops
===========  =====================  ===============================================

Training, fine-tuning, sensitivity and the validation RD loss use the
training photos only (``data``); the evaluation images are only coded in
the ``evaluate`` stage.  The sizes in the table follow Han et al.'s
stages: *prune only* and *+ retrain* store sparse fp32 values with
fixed-width relative indices, *+ share* and *+ centroid fine-tune*
fixed-width ``bits``-bit indices and fp32 codebooks (these are computed,
not written: no Huffman coding, no file header), *+ Huffman* is the size of
the deepcomp file itself.  Raw tensors count at their storage width
throughout.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from . import codec, container, evaluation, pruning, sparse_positions, zoo
from .checkpoints import atomic_write_bytes, checkpoint_config, read_state_dict, sha256_file, write_checkpoint
from .distillation import LayerDistiller
from .errors import DeepCompError
from .finetune import (
    SCHEDULES, TrainData, apply_pruning, gradual_prune_retrain, storage_policy, train_centroids, write_exact,
)
from .policy import Policy
from .quantization_aware import CENTROID_MODES, shared_codebooks, train_nearest
from .sensitivity import DEFAULT_BITS, DEFAULT_RATIOS, MODES, SensitivityTable, allocate, analyze, plot_sensitivity
from .training import TrainConfig, evaluate_rd, read_training_checkpoint

FORMAT = "deepcomp-pipeline/1"
STAGES = ("sensitivity", "policy", "prune", "retrain", "share", "centroids", "huffman", "evaluate")

#: The rows of the stage table: (key, label, file, how the size is counted).
ROWS = (
    ("baseline", "baseline", None, "fp32, dense"),
    ("prune", "prune only", "prune.pth.tar", "sparse fp32 + fixed-width positions (computed)"),
    ("retrain", "+ retrain", "retrain.pth.tar", "sparse fp32 + fixed-width positions (computed)"),
    ("share", "+ share", "share.dcmp", "b-bit indices + positions + codebooks (computed)"),
    ("centroids", "+ centroid fine-tune", "centroids.pth.tar", "b-bit indices + positions + codebooks (computed)"),
    ("huffman", "+ Huffman", "final.dcmp", "deepcomp file"),
)


@dataclass
class PipelineConfig:
    """Everything that decides the pipeline's results (recorded in ``pipeline.json``)."""

    arch: str | None = None  # None: from the checkpoint's config
    quality: int | None = None
    lmbda: float | None = None  # None: the checkpoint's, else CompressAI's for the quality
    widths: dict | None = None  # a channel-pruned (thinner) model's channels per group; None: the checkpoint's, if any
    policy: dict | None = None  # Policy.to_json(); None: the default policy
    target_ratio: float | None = None  # compression ratio vs fp32 -> sensitivity + allocator
    target_loss: float | None = None  # RD loss increase -> sensitivity + allocator
    retrain_steps: int = 2000
    anneal_steps: int = 0  # the retraining's last steps, after the last pruning round, at centroid_lr
    distill: float = 0.0  # weight of the layer-wise distillation from the baseline in both fine-tunings (0: none)
    prune_rounds: int = 4
    schedule: str = "agp"
    centroid_steps: int = 1000
    centroid_mode: str = "fixed"  # fixed: Han's trained quantization (codebooks only); nearest: quantization-aware, clusters may change
    train_raw: bool = True
    batch_size: int = 8
    patch_size: int = 256
    lr: float = 1e-5
    centroid_lr: float = 1e-5
    aux_lr: float = 1e-3
    val_every: int = 250
    val_fraction: float = 0.1
    val_patch: int = 256
    sens_ratios: tuple = DEFAULT_RATIOS
    sens_bits: tuple = DEFAULT_BITS
    sens_mode: str = "joint"
    seed: int = 0

    def check(self) -> None:
        if self.target_ratio is not None and self.target_loss is not None:
            raise DeepCompError("give a target ratio or a target loss, not both")
        if self.target_ratio is not None and not self.target_ratio > 1:
            raise DeepCompError("the target ratio must be above 1")
        if self.target_loss is not None and not self.target_loss >= 0:
            raise DeepCompError("the target loss increase must be >= 0")
        if self.schedule not in SCHEDULES:
            raise DeepCompError(f"unknown pruning schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.centroid_mode not in CENTROID_MODES:
            raise DeepCompError(f"unknown centroid fine-tuning mode {self.centroid_mode!r}; choose one of {', '.join(CENTROID_MODES)}")
        if self.sens_mode not in MODES:
            raise DeepCompError(f"unknown sensitivity mode {self.sens_mode!r}; choose one of {', '.join(MODES)}")
        if self.prune_rounds < 1 or self.retrain_steps < 0 or self.centroid_steps < 0 or self.anneal_steps < 0:
            raise DeepCompError("prune rounds must be >= 1 and step counts >= 0")
        if not self.distill >= 0:
            raise DeepCompError(f"the distillation weight must be >= 0, got {self.distill}")
        if self.anneal_steps and self.anneal_steps >= self.retrain_steps:
            raise DeepCompError(f"the anneal steps ({self.anneal_steps}) must be fewer than the retraining steps ({self.retrain_steps})")

    def to_json(self) -> dict:
        d = asdict(self)
        d["sens_ratios"] = [float(r) for r in self.sens_ratios]
        d["sens_bits"] = [int(b) for b in self.sens_bits]
        return d

    def train_config(self, steps: int, lr: float) -> TrainConfig:
        return TrainConfig(arch=self.arch, quality=self.quality, lmbda=self.lmbda, steps=steps, batch_size=self.batch_size,
                           patch_size=self.patch_size, lr=lr, aux_lr=self.aux_lr, val_every=self.val_every,
                           val_fraction=self.val_fraction, seed=self.seed)


#: Settings that only the later stages read, with the first stage they change: a rerun in the same folder with
#: other values of these does those stages again instead of refusing (e.g. more centroid steps on the same retraining).
LATER_SETTINGS = {"centroid_steps": "centroids", "centroid_lr": "centroids", "train_raw": "centroids", "centroid_mode": "centroids"}


def _first_stage_changed(diff: list[str], old: dict, new: dict) -> str | None:
    """The earliest stage that the changed settings ``diff`` affect, or None if one of them affects the whole run."""
    if any(k not in LATER_SETTINGS for k in diff):
        return None
    stages = {LATER_SETTINGS[k] for k in diff}
    if "centroid_lr" in diff and (old.get("anneal_steps") or new.get("anneal_steps")):
        stages.add("retrain")  # the anneal phase of the retraining runs at the centroid learning rate
    return min(stages, key=STAGES.index)


# ---------------------------------------------------------------- sizes (Han's stages)
def position_bits(kept: np.ndarray) -> int:
    """Bits of the relative indices of the kept positions, at the best fixed width (no Huffman).

    A conv weight whose kernels are kept or pruned whole (kernel-granular
    pruning) is coded as the positions of its kept kernels when that is cheaper.
    """
    kept = np.asarray(kept, dtype=bool)
    if not kept.any():
        return 0
    candidates = [kept]
    ks = pruning.kernel_size(kept.shape)
    if ks > 1:
        kernels = kept.reshape(-1, ks)
        whole = kernels.all(axis=1)
        if np.array_equal(whole, kernels.any(axis=1)):
            candidates.append(whole)
    return min(sparse_positions.encode_gaps(m, g).size * g for m in candidates for g in range(1, 17))


def stage_bytes(arrays: Mapping[str, np.ndarray], policy: Policy, shared: bool) -> int:
    """Storage of a state_dict as in Han et al.'s stages, without Huffman coding or header.

    Tensors the policy stores raw: their storage width.  Tensors it shares:
    values in fp32 (``shared=False``) or ``bits``-bit indices plus an fp32
    codebook of the distinct values (``shared=True``); a tensor with at
    least a quarter zeros stores only its non-zero values and their
    relative positions at the best fixed width.
    """
    total = 0
    for name, a in arrays.items():
        a = np.asarray(a)
        rule = policy.rule_for(name, a.shape)
        is_float = np.issubdtype(a.dtype, np.floating)
        if rule.bits is None or not is_float or a.size == 0:
            width = (16 if rule.storage == "fp16" else 32) if is_float else 8 * a.dtype.itemsize
            total += a.size * width
            continue
        nz = a != 0
        kept = int(nz.sum())
        value_bits = rule.bits if shared else 32
        book = 32 * int(np.unique(a[nz]).size) if shared else 0
        if (a.size - kept) * 4 >= a.size:
            total += kept * value_bits + position_bits(nz) + book
        else:
            total += a.size * value_bits + book
    return (total + 7) // 8


def fp32_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return 4 * sum(int(np.asarray(a).size) for a in arrays.values())


# ---------------------------------------------------------------- helpers
def _numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in zoo.strip_derived(state).items()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepCompError(f"cannot read {path}: {exc}") from None


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(evaluation._clean(obj), indent=1) + "\n").encode())


class Pipeline:
    """One run of the pipeline in an output folder; :meth:`run` does the stages still to do."""

    def __init__(self, checkpoint: str | Path, out: str | Path, cfg: PipelineConfig, data: str | Path,
                 eval_data: str | Path | None = None, eval_limit: int | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, checkpoint_every: int | None = None):
        self.checkpoint = Path(checkpoint)
        self.out = Path(out)
        self.data_folder = Path(data)
        self.eval_data = Path(eval_data) if eval_data is not None else None
        self.eval_limit = eval_limit
        self.progress = progress
        self.log = log
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._data: TrainData | None = None
        self.base_state = read_state_dict(self.checkpoint)
        ck = checkpoint_config(self.checkpoint)
        cfg.arch = cfg.arch or ck.get("arch")
        cfg.quality = cfg.quality or ck.get("quality")
        if cfg.widths is None and isinstance(ck.get("widths"), dict):
            cfg.widths = {str(k): int(v) for k, v in ck["widths"].items()}
        if cfg.arch is None or cfg.quality is None:
            raise DeepCompError(f"{self.checkpoint} does not say which model it holds: pass --arch and --quality")
        if cfg.lmbda is None:
            cfg.lmbda = zoo.config_lambda(ck, cfg.quality)
        cfg.policy = Policy.from_json(cfg.policy, "policy").to_json() if cfg.policy is not None else Policy().to_json()
        cfg.check()
        self.cfg = cfg
        self.checkpoint_every = checkpoint_every if checkpoint_every is not None else cfg.val_every
        zoo.model_from_state_dict(cfg.arch, cfg.quality, self.base_state, str(self.checkpoint), widths=cfg.widths)  # fails clearly if it does not fit
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "pipeline.json"
        self.record = self._open_record()

    # ------------------------------------------------------------ bookkeeping
    def _open_record(self) -> dict:
        ck = {"path": str(self.checkpoint), "bytes": self.checkpoint.stat().st_size, "sha256": sha256_file(self.checkpoint)}
        config = self.cfg.to_json()
        if self.state_path.exists():
            rec = _read_json(self.state_path)
            if rec.get("format") != FORMAT:
                raise DeepCompError(f"{self.state_path} is not a deepcomp pipeline record")
            if rec["checkpoint"]["sha256"] != ck["sha256"]:
                raise DeepCompError(f"{self.out} holds a pipeline run of another checkpoint ({rec['checkpoint']['path']}); use a new output folder")
            old = rec.get("config", {})
            # a setting added after the run was recorded had its default there
            old = {**PipelineConfig().to_json(), **old}
            diff = [k for k in config if json.dumps(old.get(k)) != json.dumps(config[k])]
            if diff:
                changes = ", ".join(f"{k}: {old.get(k)!r} -> {config[k]!r}" for k in diff)
                first = _first_stage_changed(diff, old, config)
                if first is None:
                    raise DeepCompError(f"{self.out} holds a pipeline run with other settings ({changes}); use a new output folder or the same settings")
                self._redo_from(rec, first)
                rec["config"] = config
                _write_json(self.state_path, rec)
                self.log(f"settings of the later stages changed ({changes}): the stages from {first} on are done again")
            self.log(f"resuming the pipeline in {self.out}: done {', '.join(s for s in STAGES if rec['stages'].get(s, {}).get('done')) or 'nothing yet'}")
            return rec
        rec = {"format": FORMAT, "checkpoint": ck, "config": config, "stages": {}}
        _write_json(self.state_path, rec)
        return rec

    def _redo_from(self, rec: dict, first: str) -> None:
        """Forget the stages from ``first`` on: their records, files (a training checkpoint would resume) and val rows."""
        files = {key: [name] for key, _, name, _ in ROWS if name} | {"evaluate": ["stages.md", "stages.csv", "stages.json"]}
        for stage in STAGES[STAGES.index(first):]:
            rec["stages"].pop(stage, None)
            rec.get("val", {}).pop(stage, None)
            for name in files.get(stage, []):  # gone before the record is written: a rerun after a crash redoes them
                (self.out / name).unlink(missing_ok=True)

    def _done(self, stage: str) -> bool:
        return bool(self.record["stages"].get(stage, {}).get("done"))

    def _finish(self, stage: str, **info) -> None:
        self.record["stages"][stage] = {"done": True, **info}
        _write_json(self.state_path, self.record)

    @property
    def data(self) -> TrainData:
        if self._data is None:
            c = self.cfg
            self._data = TrainData.from_folder(self.data_folder, c.patch_size, c.val_fraction, c.val_patch, c.seed)
        return self._data

    def _model(self, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        model = zoo.build(self.cfg.arch, self.cfg.quality, init_weights=False, widths=self.cfg.widths)
        zoo.assign_weights(model, state, "pipeline")
        return model.to(self.device)

    @contextmanager
    def _distiller(self, student: torch.nn.Module):
        """The layer-wise distiller from the baseline for ``student`` (None when ``distill`` is 0)."""
        if not self.cfg.distill:
            yield None
            return
        d = LayerDistiller(student, self._model(self.base_state), self.cfg.distill)
        self.log(f"distilling {len(d.layers)} layers from the baseline, weight {self.cfg.distill:g}")
        try:
            yield d
        finally:
            d.close()

    def _save_model(self, path: Path, state: Mapping[str, torch.Tensor], **extra) -> None:
        cfg = {"arch": self.cfg.arch, "quality": self.cfg.quality, "lmbda": self.cfg.lmbda}
        if self.cfg.widths:
            cfg["widths"] = dict(self.cfg.widths)
        write_checkpoint(path, {"state_dict": zoo.strip_derived({k: v.detach().cpu() for k, v in state.items()}), "config": cfg, **extra})

    @property
    def policy(self) -> Policy:
        return Policy.from_json(_read_json(self.out / "policy.json")["policy"], str(self.out / "policy.json"))

    def _base_policy(self) -> Policy:
        return Policy.from_json(self.cfg.policy, "policy")

    # ------------------------------------------------------------ stages
    def stage_sensitivity(self) -> None:
        c = self.cfg
        path = self.out / "sensitivity.json"
        table = SensitivityTable.load(path) if path.exists() else None
        model = self._model(self.base_state)
        self.log(f"[sensitivity] {len(self.data.val_crops)} validation crops, mode {c.sens_mode}, ratios {list(c.sens_ratios)}, bits {list(c.sens_bits)}")
        table = analyze(model, self.data.val_crops, c.lmbda, self._base_policy(), c.sens_ratios, c.sens_bits, c.sens_mode, table=table,
                        on_update=lambda t: t.save(path), progress=self.progress, meta={"arch": c.arch, "quality": c.quality})
        plot_sensitivity(table, self.out / "sensitivity.png")
        self._finish("sensitivity", file="sensitivity.json", plot="sensitivity.png")

    def stage_policy(self) -> None:
        c = self.cfg
        base = self._base_policy()
        doc: dict = {}
        if c.target_ratio is not None or c.target_loss is not None:
            table = SensitivityTable.load(self.out / "sensitivity.json")
            target_bytes = int(table.fp32_bytes / c.target_ratio) if c.target_ratio is not None else None
            alloc = allocate(table, target_bytes=target_bytes, target_loss=c.target_loss)
            policy = alloc.policy(base)
            doc["allocation"] = alloc.to_json()
            self.log(f"[policy] allocated for {'%.1fx (%s bytes)' % (c.target_ratio, f'{target_bytes:,}') if target_bytes else f'a loss increase of {c.target_loss:g}'}: "
                     f"predicted {alloc.bytes:,} bytes ({table.fp32_bytes / alloc.bytes:.1f}x), loss +{alloc.delta:.4f} before retraining")
            for name, (r, b) in alloc.choices.items():
                self.log(f"  {name}: prune {r:.2f}, {b} bits")
        else:
            policy = base
        doc["policy"] = policy.to_json()
        _write_json(self.out / "policy.json", doc)
        self._finish("policy", file="policy.json")

    def stage_prune(self) -> None:
        policy = self.policy
        arrays = _numpy(self.base_state)
        plans = codec.plan_tensors(arrays, policy)
        masks = {n: p.mask for n, p in plans.items() if p.mask is not None}
        model = self._model(self.base_state)
        apply_pruning(model, masks)
        self._save_model(self.out / "prune.pth.tar", model.state_dict(), masks={n: torch.from_numpy(m) for n, m in masks.items()})
        self.log(f"[prune] {len(masks)} tensors pruned by magnitude (no retraining) -> prune.pth.tar")
        self._finish("prune", file="prune.pth.tar")

    def stage_retrain(self) -> None:
        c = self.cfg
        path = self.out / "retrain.pth.tar"
        policy = self.policy
        prunes = any(policy.rule_for(n, a.shape).prunes for n, a in _numpy(self.base_state).items())
        if not prunes or c.retrain_steps == 0:
            why = "nothing is pruned" if not prunes else "no retraining steps"
            self.log(f"[retrain] skipped ({why}): the pruned weights go on unchanged")
            prune = read_training_checkpoint(self.out / "prune.pth.tar")
            self._save_model(path, prune["state_dict"], done=True)
            self._finish("retrain", file="retrain.pth.tar", skipped=why)
            return
        state = None
        if path.exists():
            ck = read_training_checkpoint(path)
            model, state = self._model(ck["state_dict"]), dict(ck.get("train_state") or {})
            self.log(f"[retrain] resuming at step {state.get('step', 0)} of {c.retrain_steps}")
        else:
            model = self._model(self.base_state)
            self.log(f"[retrain] {c.prune_rounds} {c.schedule} pruning rounds over {c.retrain_steps} steps, lr {c.lr:g}, lambda {c.lmbda:g}, device {self.device}")

        def save(payload: dict) -> None:
            self._save_model(path, payload["state_dict"], train_state=payload["train_state"], done=False)

        tc = c.train_config(c.retrain_steps, c.lr)
        data = self.data
        data.sampler.rng = np.random.default_rng([c.seed, 1, (state or {}).get("step", 0)])
        with self._distiller(model) as distiller:
            gradual_prune_retrain(model, policy, tc, data, c.prune_rounds, c.schedule, state=state, on_checkpoint=save,
                                  checkpoint_every=self.checkpoint_every, progress=self.progress, log=self.log,
                                  anneal_steps=c.anneal_steps, anneal_lr=c.centroid_lr, distiller=distiller)
        ck = read_training_checkpoint(path)
        self._save_model(path, model.state_dict(), train_state=ck.get("train_state"), done=True)
        self._finish("retrain", file="retrain.pth.tar")

    def stage_share(self) -> None:
        from .model_file import compress_state_dict

        state = read_training_checkpoint(self.out / "retrain.pth.tar")["state_dict"]
        c = compress_state_dict(state, storage_policy(self.policy), self.cfg.arch, self.cfg.quality, reference_bytes=self.checkpoint.stat().st_size,
                                widths=self.cfg.widths, reference_sha256=self.record["checkpoint"]["sha256"])
        size = container.write(self.out / "share.dcmp", c)
        self.log(f"[share] k-means shared -> share.dcmp ({size:,} bytes with Huffman coding)")
        self._finish("share", file="share.dcmp", file_bytes=size)

    def stage_centroids(self) -> None:
        from .model_file import load, load_arrays

        c = self.cfg
        path = self.out / "centroids.pth.tar"
        policy = storage_policy(self.policy)
        if c.centroid_steps == 0:
            self.log("[centroids] skipped (no fine-tuning steps): the shared weights go on unchanged")
            self._save_model(path, load(self.out / "share.dcmp"), done=True)
            self._finish("centroids", file="centroids.pth.tar", skipped="no fine-tuning steps")
            return
        nearest = c.centroid_mode == "nearest"
        state, extra = None, {}
        if path.exists():
            ck = read_training_checkpoint(path)
            model, state = self._model(ck["state_dict"]), dict(ck.get("train_state") or {})
            extra = {k: ck[k] for k in ("indices", "codebooks") if k in ck}
            self.log(f"[centroids] resuming at step {state.get('step', 0)} of {c.centroid_steps}")
        elif nearest:  # latent weights: the retrained ones; codebooks: the share stage's
            model = self._model(read_training_checkpoint(self.out / "retrain.pth.tar")["state_dict"])
            extra = {"codebooks": shared_codebooks(load_arrays(self.out / "share.dcmp"), policy)}
            self.log(f"[centroids] quantization-aware fine-tuning (clusters may change), {c.centroid_steps} steps, lr {c.centroid_lr:g}, device {self.device}")
        else:
            model = self._model(load(self.out / "share.dcmp"))
            self.log(f"[centroids] trained quantization, {c.centroid_steps} steps, lr {c.centroid_lr:g}, device {self.device}")

        def save(payload: dict) -> None:
            self._save_model(path, payload["state_dict"], **{k: payload[k] for k in ("indices", "codebooks") if k in payload},
                             train_state=payload["train_state"], done=False)

        data = self.data
        data.sampler.rng = np.random.default_rng([c.seed, 2, (state or {}).get("step", 0)])
        tc = c.train_config(c.centroid_steps, c.centroid_lr)
        with self._distiller(model) as distiller:
            if nearest:
                state = train_nearest(model, policy, tc, data, extra["codebooks"], state=state, train_raw=c.train_raw, on_checkpoint=save,
                                      checkpoint_every=self.checkpoint_every, progress=self.progress, log=self.log, distiller=distiller)
            else:
                train_centroids(model, policy, tc, data, state=state, indices=extra.get("indices"), train_raw=c.train_raw,
                                on_checkpoint=save, checkpoint_every=self.checkpoint_every, progress=self.progress, log=self.log, distiller=distiller)
        ck = read_training_checkpoint(path)
        self._save_model(path, model.state_dict(), **({} if nearest else {"indices": ck.get("indices")}), train_state=ck.get("train_state"), done=True)
        self._finish("centroids", file="centroids.pth.tar", **({"changed": state.get("changed")} if nearest else {}))

    def stage_huffman(self) -> None:
        state = read_training_checkpoint(self.out / "centroids.pth.tar")["state_dict"]
        size = write_exact(self.out / "final.dcmp", state, self.policy, self.cfg.arch, self.cfg.quality, reference_bytes=self.checkpoint.stat().st_size,
                           widths=self.cfg.widths, reference_sha256=self.record["checkpoint"]["sha256"])
        self.log(f"[huffman] the fine-tuned weights, stored exactly -> final.dcmp ({size:,} bytes)")
        alloc = _read_json(self.out / "policy.json").get("allocation")
        if alloc:
            self.log(f"[huffman] the allocator predicted {alloc['bytes']:,} bytes from the baseline's weights "
                     f"(target {alloc['target_bytes'] or 'none'}); the file is {size / alloc['bytes']:.3f}x that")
        self._finish("huffman", file="final.dcmp", file_bytes=size)

    # ------------------------------------------------------------ evaluation and the table
    def _stage_arrays(self, key: str) -> dict[str, np.ndarray]:
        from .model_file import load_arrays

        if key == "baseline":
            return _numpy(self.base_state)
        file = dict((k, f) for k, _, f, _ in ROWS)[key]
        if file.endswith(".dcmp"):
            return dict(load_arrays(self.out / file))
        return _numpy(read_training_checkpoint(self.out / file)["state_dict"])

    def _stage_path(self, key: str) -> Path:
        if key == "baseline":
            return self.checkpoint
        if key == "centroids":  # identical weights (write_exact checked it): evaluate the real file once
            return self.out / "final.dcmp"
        return self.out / dict((k, f) for k, _, f, _ in ROWS)[key]

    def stage_evaluate(self) -> dict:
        if self.eval_data is None:
            raise DeepCompError("the evaluate stage needs the evaluation images (--eval-data)")
        images = [str(p) for p in evaluation.image_list(self.eval_data, self.eval_limit)]
        results_dir = self.out / "results"
        policy = self.policy
        val = self.record.setdefault("val", {})
        docs: dict[str, dict] = {}
        for key, label, _, _ in ROWS:
            path = self._stage_path(key)
            stem = "centroids-huffman" if key in ("centroids", "huffman") else key
            jpath = results_dir / f"{stem}.json"
            doc = evaluation.reusable_results(jpath, path, self.eval_data, len(images))
            if doc is None:
                if stem in docs:
                    doc = docs[stem]
                else:
                    self.log(f"[evaluate] {label}: {path.name} on {len(images)} images")
                    evaluation.run_one(str(path), stem, images, str(self.eval_data), str(results_dir), self.cfg.arch, self.cfg.quality,
                                       "pipeline", True, self.progress)
                    doc = evaluation.read_results(jpath)
            docs[stem] = doc
            if key == "huffman" and "centroids" in val:
                val[key] = val["centroids"]  # the same weights
            if key not in val:
                model, _ = evaluation.open_model(path, self.cfg.arch, self.cfg.quality)
                val[key] = evaluate_rd(model.to(self.device), self.data.val_crops, self.cfg.lmbda)
                _write_json(self.state_path, self.record)
        rows = []
        fp32 = fp32_bytes(_numpy(self.base_state))
        for key, label, file, stored in ROWS:
            stem = "centroids-huffman" if key in ("centroids", "huffman") else key
            doc = docs[stem]
            if key == "baseline":
                size = fp32
            elif key == "huffman":
                size = (self.out / "final.dcmp").stat().st_size
            else:
                size = stage_bytes(self._stage_arrays(key), policy, shared=key in ("share", "centroids"))
            m = doc["mean"]
            rows.append({
                "stage": key, "label": label, "file": file or str(self.checkpoint), "stored_as": stored, "bytes": int(size),
                "ratio": fp32 / size if size else math.nan, "density": doc["model"].get("density"),
                "val_loss": val[key]["loss"], "val_bpp": val[key]["bpp"], "val_psnr": val[key]["psnr"],
                "bpp": m.get("bpp"), "psnr": m.get("psnr"), "ssim": m.get("ssim"), "ms_ssim": m.get("ms_ssim"), "images": m.get("images"),
            })
        table = {"rows": rows, "fp32_bytes": fp32, "data": str(self.eval_data), "images": len(images), "lmbda": self.cfg.lmbda}
        _write_json(self.out / "stages.json", table)
        atomic_write_bytes(self.out / "stages.csv", stages_csv(rows).encode())
        atomic_write_bytes(self.out / "stages.md", stages_markdown(table).encode())
        self._finish("evaluate", table="stages.md")
        return table

    # ------------------------------------------------------------ driver
    def run(self, stop_after: str | None = None) -> dict:
        """Run the stages not yet done (up to ``stop_after``); returns the record."""
        if stop_after is not None and stop_after not in STAGES:
            raise DeepCompError(f"unknown stage {stop_after!r}; stages: {', '.join(STAGES)}")
        if (stop_after is None or stop_after == "evaluate") and self.eval_data is not None:
            evaluation.image_list(self.eval_data, self.eval_limit)  # missing images fail before any training
        allocating = self.cfg.target_ratio is not None or self.cfg.target_loss is not None
        for stage in STAGES:
            if stage == "sensitivity" and not allocating:
                pass
            elif stage == "evaluate" and self.eval_data is None:
                self.log("[evaluate] skipped: no evaluation images given")
            elif not self._done(stage):
                getattr(self, f"stage_{stage}")()
            if stage == stop_after:
                break
        if self._done("evaluate"):
            self.log("")
            self.log((self.out / "stages.md").read_text())
        return self.record


def run_pipeline(checkpoint: str | Path, out: str | Path, cfg: PipelineConfig, data: str | Path, eval_data: str | Path | None = None,
                 eval_limit: int | None = None, stop_after: str | None = None, progress: bool = True, log: Callable[[str], None] = print,
                 checkpoint_every: int | None = None) -> dict:
    """Run (or resume) the pipeline of ``checkpoint`` in the folder ``out``."""
    return Pipeline(checkpoint, out, cfg, data, eval_data, eval_limit, progress, log, checkpoint_every).run(stop_after)


# ---------------------------------------------------------------- the table
TABLE_FIELDS = ("stage", "label", "stored_as", "bytes", "ratio", "density", "val_loss", "val_bpp", "val_psnr", "bpp", "psnr", "ssim", "ms_ssim", "images", "file")


def stages_csv(rows) -> str:
    from .report import csv_text

    return csv_text(rows, TABLE_FIELDS)


def stages_markdown(table: Mapping) -> str:
    from .report import human_bytes

    def f(v, fmt):
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    head = ["Stage", "Size", "Ratio vs fp32", "Density", "Val RD loss", "bpp", "PSNR (dB)", "SSIM", "MS-SSIM", "Size counted as"]
    lines = ["# Deep Compression pipeline", "",
             f"Evaluation: {table['data']} ({table['images']} images, real bitstreams). Val RD loss: lambda {table['lmbda']:g} "
             "on the validation split of the training photos. Ratio: fp32 state_dict / size.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for r in table["rows"]:
        lines.append("| " + " | ".join([
            r["label"], human_bytes(r["bytes"]), f(r["ratio"], ".1f") + "x", f(r["density"], ".4f"), f(r["val_loss"], ".4f"),
            f(r["bpp"], ".4f"), f(r["psnr"], ".2f"), f(r["ssim"], ".4f"), f(r["ms_ssim"], ".4f"), r["stored_as"],
        ]) + " |")
    return "\n".join(lines) + "\n"
