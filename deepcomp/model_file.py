"""The torch edge of the codec: checkpoints in, deepcomp files out, and back.

``compress_state_dict`` / ``compress_checkpoint`` write a deepcomp file;
``load`` returns its state_dict; ``load_model`` rebuilds a CompressAI model
ready for ``compress()``/``decompress()``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from . import __version__, codec, container, zoo
from .checkpoints import checkpoint_config, read_state_dict, sha256_file
from .errors import DeepCompError
from .policy import Policy


def _to_numpy(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in state_dict.items())


def compress_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    policy: Policy | None = None,
    arch: str | None = None,
    quality: int | None = None,
    reference_bytes: int | None = None,
    progress=None,
    widths: Mapping[str, int] | None = None,
    reference_sha256: str | None = None,
) -> container.Container:
    """Encode a state_dict.  With ``arch``/``quality`` (a CompressAI model) the
    weights are checked against the architecture and derived buffers dropped.
    ``widths`` (a channel-pruned model's channels per group) is checked the
    same way and recorded in the header, from which ``load_model`` rebuilds
    the thinner model.  ``reference_bytes`` / ``reference_sha256``: the size
    and SHA-256 of the checkpoint the weights come from (recorded in the
    header, so that a result can be traced to its baseline)."""
    channel_axes = {}
    if widths and arch is None:
        raise DeepCompError("channel widths need --arch and --quality")
    if arch is not None:
        if quality is None:
            raise DeepCompError("--quality is needed with --arch")
        model = zoo.build(arch, quality, widths=widths)
        state_dict = zoo.canonical_state_dict(model, state_dict)
        zoo.assign_weights(model, state_dict, "checkpoint")  # fails clearly if it does not fit
        state_dict = zoo.strip_derived(state_dict)
        channel_axes = zoo.output_channel_axes(model)
    arrays = _to_numpy(state_dict)
    meta = {
        "deepcomp_version": __version__,
        "arch": arch,
        "quality": quality,
        "reference": {
            "fp32_bytes": int(sum(a.size for a in arrays.values()) * 4),
            "checkpoint_bytes": reference_bytes,
        },
    }
    if reference_sha256:
        meta["reference"]["checkpoint_sha256"] = reference_sha256
    if widths:
        meta["widths"] = {k: int(v) for k, v in widths.items()}
    return codec.encode_arrays(arrays, policy, meta, channel_axes=channel_axes, progress=progress)


def compress_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    policy: Policy | None = None,
    arch: str | None = None,
    quality: int | None = None,
    progress=None,
) -> int:
    """Compress a checkpoint file into a deepcomp file; returns its size in bytes.

    A checkpoint that records its architecture and quality (``config``, as
    deepcomp's baselines do) needs neither argument; a channel-pruned
    checkpoint's widths (its ``config["widths"]``) go with it.
    """
    state_dict = read_state_dict(checkpoint)
    cfg = checkpoint_config(checkpoint)
    if arch is None and quality is None and isinstance(cfg.get("arch"), str) and isinstance(cfg.get("quality"), int):
        arch, quality = cfg["arch"], cfg["quality"]
    widths = cfg.get("widths") if arch is not None else None
    c = compress_state_dict(state_dict, policy, arch, quality, reference_bytes=Path(checkpoint).stat().st_size, progress=progress,
                            widths=widths, reference_sha256=sha256_file(checkpoint))
    return container.write(out, c)


def load_arrays(path: str | os.PathLike) -> "OrderedDict[str, np.ndarray]":
    return codec.decode_arrays(container.read(path), source=str(path))


def load(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict stored in a deepcomp file (derived buffers not included)."""
    return OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in load_arrays(path).items())


def file_info(path: str | os.PathLike) -> dict:
    """The header of a deepcomp file (arch, quality, policy, tensors, records)."""
    return container.read(path).header


def load_model(path: str | os.PathLike, arch: str | None = None, quality: int | None = None) -> nn.Module:
    """A CompressAI model rebuilt from a deepcomp file, in eval mode, entropy coders updated.

    A channel-pruned model is rebuilt with the widths its header records.
    """
    c = container.read(path)
    arch = arch or c.header.get("arch")
    quality = quality or c.header.get("quality")
    if arch is None or quality is None:
        raise DeepCompError(f"{path} does not name its architecture; pass --arch and --quality")
    state = OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in codec.decode_arrays(c, str(path)).items())
    return zoo.model_from_state_dict(arch, int(quality), state, source=str(path), widths=c.header.get("widths"))
