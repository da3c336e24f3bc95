"""Rate-distortion training of CompressAI models (CompressAI's recipe).

Loss ``lambda * 255^2 * MSE + bpp``; Adam (1e-4) on the network, a separate
Adam (1e-3) on the entropy bottleneck ``quantiles`` minimising ``aux_loss()``;
gradient clipping at 1.0; random crops with flips; a validation split carved
out of the training photos; learning-rate decay on the validation loss.

``masks`` (name -> 0/1 tensor) hold pruned weights at exactly zero, so the
same loop serves masked retraining after pruning.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import zoo
from .checkpoints import write_checkpoint
from .errors import DeepCompError
from .images import list_images, read_rgb

TRAIN_HINT = "pass the folder of training photos with --data"


@dataclass
class TrainConfig:
    arch: str = "bmshj2018-factorized"
    quality: int = 3
    lmbda: float | None = None  # None: CompressAI's lambda for the quality
    steps: int = 1000
    batch_size: int = 8
    patch_size: int = 256
    lr: float = 1e-4
    aux_lr: float = 1e-3
    scratch_lr: float | None = None  # lr of the modules an --init-matching run starts from scratch (None: lr)
    clip_max_norm: float = 1.0
    val_every: int = 500
    val_fraction: float = 0.1
    lr_patience: int = 4  # validations without improvement before lr /= 2
    min_lr: float = 1e-6
    seed: int = 0
    threads: int | None = None
    precision: str = "fp32"  # "bf16": the transforms' forward and backward under bf16 autocast (zoo.mixed_precision)
    compile: bool = False  # torch.compile the transforms (zoo.compile_transforms)
    extra: dict = field(default_factory=dict)

    def resolved_lambda(self) -> float:
        return self.lmbda if self.lmbda is not None else zoo.mse_lambda(self.quality)


#: ``TrainConfig.precision`` -> the autocast dtype of the transforms (fp32: no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- data
def split_photos(folder: str | Path, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """A deterministic train/validation split: every k-th photo is validation."""
    files = list_images(folder, hint=TRAIN_HINT)
    if len(files) < 2:
        raise DeepCompError(f"need at least two training photos in {folder}")
    k = max(2, round(1 / val_fraction)) if val_fraction > 0 else len(files) + 1
    val = [f for i, f in enumerate(files) if i % k == k - 1]
    train = [f for f in files if f not in val]
    return train, val


class CropSampler:
    """Random crops with horizontal/vertical flips from photos held in memory."""

    def __init__(self, files: list[Path], patch: int, seed: int = 0):
        self.images = [read_rgb(f) for f in files]
        small = [f for f, im in zip(files, self.images) if min(im.shape[:2]) < patch]
        if small:
            raise DeepCompError(f"image {small[0]} is smaller than the {patch}px crop")
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> torch.Tensor:
        out = np.empty((n, self.patch, self.patch, 3), dtype=np.uint8)
        for i in range(n):
            im = self.images[self.rng.integers(len(self.images))]
            y = self.rng.integers(im.shape[0] - self.patch + 1)
            x = self.rng.integers(im.shape[1] - self.patch + 1)
            crop = im[y : y + self.patch, x : x + self.patch]
            if self.rng.random() < 0.5:
                crop = crop[:, ::-1]
            if self.rng.random() < 0.5:
                crop = crop[::-1]
            out[i] = crop
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def validation_crops(files: list[Path], patch: int) -> torch.Tensor:
    """Fixed crops (the four corners and the centre) of each validation photo."""
    crops = []
    for f in files:
        im = read_rgb(f)
        h, w = im.shape[:2]
        if min(h, w) < patch:
            raise DeepCompError(f"validation photo {f} is smaller than the {patch}px crop")
        for y, x in ((0, 0), (0, w - patch), (h - patch, 0), (h - patch, w - patch), ((h - patch) // 2, (w - patch) // 2)):
            crops.append(im[y : y + patch, x : x + patch])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)


# ---------------------------------------------------------------- loss
def likelihood_bits(out: dict) -> torch.Tensor:
    """The rate a CompressAI ``forward()`` output promises, in bits: ``-log2`` of all its likelihoods, summed."""
    return sum(torch.log(l).sum() for l in out["likelihoods"].values()) / -math.log(2)


def rd_loss(out: dict, x: torch.Tensor, lmbda: float) -> dict:
    """CompressAI's RateDistortionLoss (MSE): lambda * 255^2 * mse + bpp."""
    n, _, h, w = x.shape
    bpp = likelihood_bits(out) / (n * h * w)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return {"loss": lmbda * 255**2 * mse + bpp, "bpp": bpp, "mse": mse}


def psnr_from_mse(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate_rd(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], lmbda: float, batch: int = 8) -> dict:
    """Mean RD loss, bpp (likelihood estimate) and PSNR, eval mode, weighted by pixels: over fixed crops (an
    NxCxHxW tensor, ``batch`` at a time) or over a sequence of images of any sizes (1xCxHxW each)."""
    was_training = model.training
    model.eval()
    tot = {"loss": 0.0, "bpp": 0.0, "mse": 0.0}
    pixels = 0
    device = next(model.parameters()).device
    for x in images.split(batch) if torch.is_tensor(images) else images:
        x = x.to(device)
        r = rd_loss(model(x), x, lmbda)
        n = x.shape[0] * x.shape[-2] * x.shape[-1]
        for k in tot:
            tot[k] += float(r[k]) * n
        pixels += n
    model.train(was_training)
    res = {k: v / pixels for k, v in tot.items()}
    res["psnr"] = psnr_from_mse(res["mse"])
    return res


# ---------------------------------------------------------------- optimisation
def configure_optimizers(model: nn.Module, lr: float, aux_lr: float, scratch: Sequence[str] = (), scratch_lr: float | None = None):
    """Adam on the network, a second Adam on the entropy bottlenecks' quantiles.

    With ``scratch`` (top-level module names, e.g. ``h_a``) the network's Adam
    has a second parameter group for those modules at ``scratch_lr`` (default
    ``lr``): a model seeded in part by ``--init-matching`` trains its new parts
    faster than the seeded ones.  The groups depend only on ``scratch``, so a
    resumed run rebuilds the same ones."""
    named = [(n, p) for n, p in model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    scratch = set(scratch)
    new = [p for n, p in named if n.split(".")[0] in scratch]
    if new:
        old = [p for n, p in named if n.split(".")[0] not in scratch]
        opt = torch.optim.Adam([{"params": old, "lr": lr}, {"params": new, "lr": scratch_lr or lr}], lr=lr)
    else:
        opt = torch.optim.Adam([p for _, p in named], lr=lr)
    aux_opt = torch.optim.Adam(aux, lr=aux_lr) if aux else None
    return opt, aux_opt


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> None:
    if not masks:
        return
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            params[name].mul_(mask)


def train_steps(
    model: nn.Module,
    sampler: CropSampler,
    cfg: TrainConfig,
    state: dict,
    val_crops: torch.Tensor | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    time_limit: float | None = None,
    set_lr: float | None = None,
    distiller=None,
) -> dict:
    """Run training from ``state["step"]`` up to ``cfg.steps``.

    ``state`` holds the optimisers' and scheduler's states and the history;
    it is updated in place and returned, so a caller can checkpoint and resume.
    ``time_limit`` (seconds) ends the run early, after a validation and a
    checkpoint, at the first step past it; a later call continues from there.
    ``set_lr`` replaces the learning rate a resumed state carries and restarts the plateau count.
    ``distiller`` (a :class:`~deepcomp.distillation.LayerDistiller`) adds its layer-matching
    loss to the RD loss that is minimised (the logged and validated losses stay RD losses).
    """
    from tqdm import tqdm

    device = next(model.parameters()).device
    lmbda = cfg.resolved_lambda()
    init = state.get("init") or {}
    # a run that started with a scratch lr keeps its two parameter groups (and their lrs) when resumed
    scratch = init.get("kept", ()) if init.get("scratch_lr") else ()
    opt, aux_opt = configure_optimizers(model, cfg.lr, cfg.aux_lr, scratch=scratch, scratch_lr=init.get("scratch_lr"))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=cfg.lr_patience, min_lr=cfg.min_lr)
    if state.get("optimizer"):
        opt.load_state_dict(state["optimizer"])
    if aux_opt is not None and state.get("aux_optimizer"):
        aux_opt.load_state_dict(state["aux_optimizer"])
    if state.get("scheduler"):
        # the checkpoint brings the plateau state (best loss, bad validations, last rates); its state_dict also
        # carries the settings it was written with, but the halving factor, patience and floor are this run's
        settings = {k: getattr(sched, k) for k in ("factor", "patience", "min_lrs")}
        sched.load_state_dict(state["scheduler"])
        sched.__dict__.update(settings)
        # a committed baseline carries the scheduler but not the Adam moments:
        # the learning rate it had reached still applies
        last = state["scheduler"].get("_last_lr")
        if last and not state.get("optimizer"):
            for group, lr in zip(opt.param_groups, last):
                group["lr"] = lr
    if set_lr is not None:
        for group in opt.param_groups:
            group["lr"] = set_lr
        sched._last_lr = [set_lr] * len(opt.param_groups)
        # a new learning rate starts a new plateau count: the best loss of the old phase (an annealed
        # baseline's, say) would otherwise halve the new rate after lr_patience validations
        sched._reset()
    state.setdefault("step", 0)
    state.setdefault("history", [])
    device_masks = {k: v.to(device) for k, v in masks.items()} if masks else None
    apply_masks(model, device_masks)
    model.train()
    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not progress, desc=f"train {cfg.arch} q{cfg.quality}", unit="step", dynamic_ncols=True)
    t0 = time.time()
    deadline = time.monotonic() + time_limit if time_limit is not None else None
    run = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
    while state["step"] < cfg.steps:
        x = sampler.batch(cfg.batch_size).to(device)
        opt.zero_grad(set_to_none=True)
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
        if cfg.precision == "fp32":
            out = model(x)
        else:
            with zoo.mixed_precision(model, PRECISIONS[cfg.precision], device.type):
                out = model(x)
            out["x_hat"] = out["x_hat"].float()
        r = rd_loss(out, x, lmbda)
        (r["loss"] + distiller.loss(x) if distiller is not None else r["loss"]).backward()
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_max_norm)
        opt.step()
        if aux_opt is not None:
            aux = model.aux_loss()
            aux.backward()
            aux_opt.step()
        apply_masks(model, device_masks)
        state["step"] += 1
        for k in ("loss", "bpp", "mse"):
            run[k] += r[k].item()
        run["n"] += 1
        bar.update(1)
        if run["n"] and state["step"] % 20 == 0:
            bar.set_postfix(loss=f"{run['loss'] / run['n']:.3f}", bpp=f"{run['bpp'] / run['n']:.3f}", psnr=f"{psnr_from_mse(run['mse'] / run['n']):.2f}")
        out_of_time = deadline is not None and time.monotonic() >= deadline
        done = state["step"] >= cfg.steps or out_of_time
        if val_crops is not None and (state["step"] % cfg.val_every == 0 or done):
            v = evaluate_rd(model, val_crops, lmbda)
            sched.step(v["loss"])
            entry = {
                "step": state["step"],
                "train_loss": run["loss"] / max(run["n"], 1),
                "train_bpp": run["bpp"] / max(run["n"], 1),
                "train_psnr": psnr_from_mse(run["mse"] / max(run["n"], 1)),
                "val_loss": v["loss"], "val_bpp": v["bpp"], "val_psnr": v["psnr"],
                "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0 + state.get("seconds", 0.0),
                "patch": cfg.patch_size,  # a resumed run may change its crop size; the model card lists the phases
            }
            state["history"].append(entry)
            log(
                f"step {entry['step']}: train loss {entry['train_loss']:.4f} bpp {entry['train_bpp']:.4f} psnr {entry['train_psnr']:.2f} | "
                f"val loss {v['loss']:.4f} bpp {v['bpp']:.4f} psnr {v['psnr']:.2f} | lr {entry['lr']:.2e}"
            )
            run = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
        if on_checkpoint is not None and ((checkpoint_every and state["step"] % checkpoint_every == 0) or done):
            state["optimizer"] = opt.state_dict()
            state["aux_optimizer"] = aux_opt.state_dict() if aux_opt is not None else None
            state["scheduler"] = sched.state_dict()
            state["seconds"] = state.get("seconds", 0.0) + time.time() - t0
            t0 = time.time()
            on_checkpoint(state)
        if out_of_time:
            log(f"time limit reached at step {state['step']} of {cfg.steps}; a rerun continues from the checkpoint")
            break
    bar.close()
    return state


# ---------------------------------------------------------------- the command
def read_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict with a ``state_dict`` (and maybe ``train_state``, ``config``)."""
    from .checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DeepCompError(f"{path} is not a deepcomp training checkpoint (no state_dict)")
    return ckpt


def init_provenance(path: str | Path) -> dict:
    """What a run seeded with ``--init`` started from: the file and, when it is
    a deepcomp checkpoint, its architecture, quality, lambda and step."""
    from .checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    st = ckpt.get("train_state") if isinstance(ckpt.get("train_state"), dict) else {}
    return {"path": str(path), "arch": cfg.get("arch"), "quality": cfg.get("quality"), "lmbda": cfg.get("lmbda"),
            "step": st.get("step"), "seconds": st.get("seconds")}


def train(
    cfg: TrainConfig,
    data: str | Path,
    out: str | Path,
    init: str | Path | None = None,
    resume: str | Path | None = None,
    init_matching: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    time_limit: float | None = None,
    override_lr: bool = False,
) -> Path:
    """Train (or resume) a CompressAI model; checkpoints go to ``out``.

    ``out`` is a resumable training checkpoint: a dict with ``state_dict``
    (CompressAI-loadable), the optimisers, the step and the history.  If it
    exists, training resumes from it.  ``resume`` continues another run's
    checkpoint (e.g. a committed baseline, whose step, history and learning
    rate it carries); ``init`` seeds a new run with another checkpoint's
    weights only (e.g. a long quality-3 run for other lambdas); with
    ``init_matching`` only the tensors whose names and shapes match (e.g. a
    factorized model's transforms for a hyperprior), the rest as built.
    A resumed run keeps the learning rate it had reached unless ``override_lr``
    (then ``cfg.lr`` replaces it); ``time_limit`` (seconds) stops it early
    with a checkpoint (see :func:`train_steps`).
    """
    from .checkpoints import read_state_dict

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    model = zoo.build(cfg.arch, cfg.quality)
    state: dict = {}
    source = out if out.exists() else (Path(resume) if resume is not None else None)
    if source is not None:
        ckpt = read_training_checkpoint(source)
        zoo.assign_weights(model, ckpt["state_dict"], str(source))
        state = dict(ckpt.get("train_state") or {})
        log(f"resuming {source} at step {state.get('step', 0)}")
    elif init is not None:
        state["init"] = init_provenance(init)
        if init_matching:
            parts = zoo.assign_matching_weights(model, read_state_dict(init), str(init))
            params = {n for n, _ in model.named_parameters()}  # constant buffers (LowerBound.bound) say nothing
            state["init"]["copied"] = sorted({k.split(".")[0] for k in parts["copied"] if k in params})
            state["init"]["kept"] = sorted({k.split(".")[0] for k in parts["kept"] if k in params})
            if cfg.scratch_lr is not None:
                state["init"]["scratch_lr"] = cfg.scratch_lr
            log(f"initialised {', '.join(state['init']['copied'])} from {init} ({len(parts['copied'])} tensors); "
                f"{', '.join(state['init']['kept']) or 'nothing'} as built")
        else:
            zoo.assign_weights(model, read_state_dict(init), str(init))
            log(f"initialised from {init}")
    # channels-last: the same arithmetic in the layout oneDNN's (and cuDNN's) convolutions prefer; on the 2-core CPU
    # about 1.2x a step in fp32 and 1.4x more with bf16 (tools/bench_training.py). Saved weights are made contiguous.
    model.to(device=device, memory_format=torch.channels_last)
    if cfg.compile:
        log(f"compiling {', '.join(zoo.compile_transforms(model))} (the first step and the first validation take seconds more)")
    train_files, val_files = split_photos(data, cfg.val_fraction)
    log(f"{len(train_files)} training photos, {len(val_files)} validation photos ({', '.join(f.name for f in val_files)}), device {device}")
    sampler = CropSampler(train_files, cfg.patch_size, seed=cfg.seed + state.get("step", 0))
    val = validation_crops(val_files, min(256, cfg.patch_size * 2))

    def save(st: dict) -> None:
        cpu_sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_checkpoint(out, {"state_dict": cpu_sd, "train_state": st, "config": asdict(cfg), "device": str(device)})

    train_steps(model, sampler, cfg, state, val_crops=val, on_checkpoint=save, checkpoint_every=cfg.val_every, progress=progress, log=log,
                time_limit=time_limit, set_lr=cfg.lr if override_lr else None)
    return out


def export_baseline(train_checkpoint: str | Path, out: str | Path) -> dict:
    """Write a CompressAI-loadable baseline from a training checkpoint.

    ``{"state_dict": ..., "train_state": ..., "config": ...}``: fp32 weights
    with ``update(force=True)`` applied, plus the step, history, scheduler and
    learning rate (not the optimiser moments, to keep the file small), so that
    ``deepcomp train --resume`` continues the run.
    """
    ckpt = read_training_checkpoint(Path(train_checkpoint))
    cfg = ckpt.get("config") or {}
    model = zoo.model_from_state_dict(cfg.get("arch", "bmshj2018-factorized"), int(cfg.get("quality", 3)), ckpt["state_dict"], str(train_checkpoint))
    state = {k: v for k, v in (ckpt.get("train_state") or {}).items() if k not in ("optimizer", "aux_optimizer")}
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "train_state": state, "config": cfg, "device": ckpt.get("device")}
    write_checkpoint(out, payload)
    return payload
