"""Fine-tune the shared weights of a deepcomp file and write a new one.

    deepcomp finetune MODEL.dcmp -o OUT.dcmp --steps N [--mode nearest|fixed] ...

The pruning masks and bit widths stay those of the file; what changes are
the shared values (``fixed``: Han et al.'s trained quantization, codebooks
only, :func:`deepcomp.finetune.train_centroids`; ``nearest``: quantization-
aware fine-tuning, where a weight may change cluster,
:mod:`deepcomp.quantization_aware`) and the raw tensors.  Training uses the
training photos only, on the RD loss with the model's lambda.  A checkpoint
``OUT.partial.pth.tar`` is written every ``val_every`` steps; a rerun with the
same settings resumes from it and deletes it once ``OUT`` is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import container, zoo
from .checkpoints import check_output_path, sha256_file, write_checkpoint
from .errors import DeepCompError
from .finetune import TrainData, storage_policy, train_centroids, write_exact
from .model_file import load_arrays
from .policy import Policy
from .quantization_aware import CENTROID_MODES, shared_codebooks, train_nearest
from .training import TrainConfig, evaluate_rd, read_training_checkpoint


@dataclass
class FinetuneConfig:
    mode: str = "nearest"
    steps: int = 600
    lr: float = 3e-5  # chosen on the validation loss: 1e-4 ended worse on the 20x quality-3 file (artifacts/quantization-aware/)
    lmbda: float | None = None  # None: CompressAI's MSE lambda for the file's quality
    batch_size: int = 8
    patch_size: int = 128
    aux_lr: float = 1e-3
    val_every: int = 150
    val_fraction: float = 0.1
    val_patch: int = 256
    train_raw: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.mode not in CENTROID_MODES:
            raise DeepCompError(f"unknown fine-tuning mode {self.mode!r}; choose one of {', '.join(CENTROID_MODES)}")
        if self.steps < 1:
            raise DeepCompError("the number of fine-tuning steps must be at least 1")


def finetune_file(src: str | Path, out: str | Path, data: str | Path, cfg: FinetuneConfig, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``src`` (a deepcomp file) for ``cfg.steps`` steps and write ``out``; returns a summary (JSON-able)."""
    cfg.check()
    src, out = Path(src), check_output_path(out)
    if src.resolve() == out.resolve():
        raise DeepCompError("the output must not overwrite the input file")
    c = container.read(src)
    header = c.header
    arch, quality, widths = header.get("arch"), header.get("quality"), header.get("widths")
    if arch is None or quality is None:
        raise DeepCompError(f"{src} does not name its CompressAI architecture and quality: it cannot be fine-tuned")
    policy = storage_policy(Policy.from_json(header["policy"], str(src)))
    lmbda = cfg.lmbda if cfg.lmbda is not None else zoo.mse_lambda(int(quality))
    arrays = load_arrays(src)
    src_sha = sha256_file(src)
    settings = {"source_sha256": src_sha, **asdict(cfg), "lmbda": lmbda}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def model_of(state) -> torch.nn.Module:
        model = zoo.build(arch, int(quality), init_weights=False, widths=widths)
        zoo.assign_weights(model, state, str(src))
        return model.to(device)

    tc = TrainConfig(arch=arch, quality=int(quality), lmbda=lmbda, steps=cfg.steps, batch_size=cfg.batch_size, patch_size=cfg.patch_size,
                     lr=cfg.lr, aux_lr=cfg.aux_lr, val_every=cfg.val_every, val_fraction=cfg.val_fraction, seed=cfg.seed)
    train_data = TrainData.from_folder(data, cfg.patch_size, cfg.val_fraction, cfg.val_patch, cfg.seed)
    partial = out.with_name(out.name + ".partial.pth.tar")
    source = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    state_dict, train_state, extra = source, None, {}
    if partial.exists():
        ck = read_training_checkpoint(partial)
        if ck.get("settings") != settings:
            raise DeepCompError(f"{partial} is a fine-tuning run with other settings or of another file; delete it or use the same settings")
        state_dict, train_state = ck["state_dict"], dict(ck.get("train_state") or {})
        extra = {k: ck[k] for k in ("codebooks", "indices") if k in ck}
        log(f"resuming the fine-tuning at step {train_state.get('step', 0)} of {cfg.steps} from {partial}")
    model = model_of(state_dict)
    before = evaluate_rd(model_of(source), train_data.val_crops, lmbda)
    log(f"{src}: val RD loss {before['loss']:.4f} ({before['bpp']:.4f} bpp, {before['psnr']:.2f} dB); "
        f"{cfg.mode} fine-tuning, {cfg.steps} steps, lr {cfg.lr:g}, lambda {lmbda:g}, device {device}")

    def save(payload: dict) -> None:
        write_checkpoint(partial, {**payload, "settings": settings})

    train_data.sampler.rng = np.random.default_rng([cfg.seed, 3, (train_state or {}).get("step", 0)])
    if cfg.mode == "nearest":
        books = extra.get("codebooks") or shared_codebooks(arrays, policy)
        train_state = train_nearest(model, policy, tc, train_data, books, state=train_state, train_raw=cfg.train_raw, on_checkpoint=save,
                                    checkpoint_every=cfg.val_every, progress=progress, log=log)
    else:
        train_state = train_centroids(model, policy, tc, train_data, state=train_state, indices=extra.get("indices"), train_raw=cfg.train_raw,
                                      on_checkpoint=save, checkpoint_every=cfg.val_every, progress=progress, log=log)
    after = evaluate_rd(model, train_data.val_crops, lmbda)
    ref = header.get("reference") or {}
    size = write_exact(out, model.state_dict(), policy, arch, int(quality), reference_bytes=ref.get("checkpoint_bytes"), widths=widths,
                       reference_sha256=ref.get("checkpoint_sha256"))
    partial.unlink(missing_ok=True)
    log(f"{out}: {size:,} bytes (was {src.stat().st_size:,}); val RD loss {before['loss']:.4f} -> {after['loss']:.4f} "
        f"({after['bpp']:.4f} bpp, {after['psnr']:.2f} dB)")
    return {"source": str(src), "out": str(out), "bytes": size, "source_bytes": src.stat().st_size, "settings": settings,
            "val_before": before, "val_after": after, "changed": train_state.get("changed"), "history": train_state.get("history", [])}
