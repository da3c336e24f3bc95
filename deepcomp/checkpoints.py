"""Reading and writing PyTorch checkpoints safely (weights_only, atomic writes)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import DeepCompError

_WRAPPER_KEYS = ("state_dict", "network", "model_state_dict", "model")


def load_checkpoint(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DeepCompError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeepCompError(f"cannot read checkpoint {path}: {first}") from None


def read_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Read a checkpoint file and return its state_dict.

    Accepts ``{"state_dict": ...}`` (CompressAI's training checkpoints), a bare
    state_dict, and keys with a ``module.`` prefix (DataParallel).  Never
    unpickles arbitrary objects: ``torch.load(..., weights_only=True)``.
    """
    path = Path(path)
    obj = load_checkpoint(path)
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise DeepCompError(f"{path} holds no state_dict")
    state = OrderedDict()
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise DeepCompError(f"{path} is not a state_dict: entry {name!r} is not a tensor")
        if name.startswith("module."):
            name = name[len("module."):]
        state[name] = value
    return state


def checkpoint_config(path: str | os.PathLike) -> dict:
    """The ``config`` dict a checkpoint records (arch, quality, lmbda, widths...), or ``{}``.

    Memory-mapped and weights-only, so it costs little; a file that cannot
    be read gives ``{}`` (reading its state_dict reports the problem).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    cfg = obj.get("config") if isinstance(obj, dict) else None
    return dict(cfg) if isinstance(cfg, dict) else {}


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early (before any work) if ``path`` cannot be written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DeepCompError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise DeepCompError(f"output path is a folder: {path}")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = check_output_path(path)
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: str | os.PathLike, what: str):
    """A JSON file's content, with one-line errors naming ``what`` it should be."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DeepCompError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepCompError(f"cannot read {what} {path}: {exc}") from None


def write_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Save a checkpoint dict (tensors, numbers, strings) atomically with torch.save."""
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
