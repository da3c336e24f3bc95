"""Other ways to store a model's weights, for comparison with deepcomp files.

From one checkpoint, each function writes a model file and reads it back to a
state_dict that :func:`deepcomp.zoo.model_from_state_dict` turns into a
runnable model:

==========  ===========================================================  ========
format      file                                                         exact?
==========  ===========================================================  ========
``fp32``    ``torch.save`` of the fp32 state_dict (the reference)        yes
``gzip``    the fp32 file through gzip (level 9)                         yes
``xz``      the fp32 file through xz (preset 9 extreme)                  yes
``zstd``    the fp32 file through zstd (level 22; needs ``zstandard``)   yes
``fp16``    ``torch.save`` of the state_dict cast to float16             as fp16
``int8``    uniform 8-bit conv / transposed-conv weights per output      no
            channel, everything else fp32, in deepcomp's own codec
            (``INT8_POLICY``: Huffman-coded indices, per-channel
            codebooks)
``nnc``     ISO/IEC 15938-17 Neural Network Coding (``nncodec``, optional)  no
            at a quantization parameter ``qp``
==========  ===========================================================  ========

All start from :func:`reference_state_dict`: the checkpoint's tensors under
today's CompressAI names, checked against the architecture, without the
buffers ``update()`` rebuilds (deepcomp files do not store them either) and
in float32, so that every format stores the same tensors.  The files record
nothing of the training state (optimizer, history).

NNC codes every tensor: those of two or more dimensions (weights, GDN gamma)
at ``qp``, the one-dimensional ones (biases, GDN beta, constant buffers) at
NNC's fine ``nonweight_qp`` (-75 by default: steps near 2e-6), and, as
deepcomp's default policy keeps entropy models raw, the entropy-model tensors
at ``nonweight_qp`` too (``NNC_FINE_PATTERNS``).  Its step size is about
``2 ** (qp / 4)`` (``qp_density`` 2): qp -32 is a step of 1/256.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import lzma
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from . import zoo
from .checkpoints import atomic_write_bytes, read_state_dict
from .errors import DeepCompError
from .policy import Policy, Rule

#: Every format this module writes, in table order.
FORMATS = ("fp32", "gzip", "xz", "zstd", "fp16", "int8", "nnc")

#: Formats that give back the fp32 state_dict bit for bit.
LOSSLESS = ("fp32", "gzip", "xz", "zstd")

#: File name suffix of each format.
SUFFIXES = {"fp32": ".pth.tar", "gzip": ".pth.tar.gz", "xz": ".pth.tar.xz", "zstd": ".pth.tar.zst",
            "fp16": ".fp16.pth.tar", "int8": ".int8.dcmp", "nnc": ".nnc"}

#: Strongest standard setting of each generic compressor.
GZIP_LEVEL = 9
XZ_PRESET = 9 | lzma.PRESET_EXTREME
ZSTD_LEVEL = 22

#: Int8: uniform 8-bit per output channel for every conv and transposed-conv
#: weight (the output-channel axis comes from ``zoo.output_channel_axes``: 1 for
#: transposed convs); entropy models and every other tensor raw fp32.
INT8_POLICY = Policy(rules=(
    Rule(pattern="*entropy_bottleneck*"),
    Rule(pattern="*gaussian_conditional*"),
    Rule(kind="weight", bits=8, quantizer="uniform", per_channel=True),
    Rule(),
))

#: NNC quantization parameters of a default comparison (step ~ 2**(qp/4)).
NNC_QPS = (-44, -38, -32, -26)

#: NNC's step for non-weight tensors (its own default).
NNC_NONWEIGHT_QP = -75

#: Tensors NNC codes at ``NNC_NONWEIGHT_QP`` whatever their shape (deepcomp keeps them raw).
NNC_FINE_PATTERNS = ("*entropy_bottleneck*", "*gaussian_conditional*")

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


@dataclass
class WeightFile:
    """A model file written by :func:`write`: what it is, its size, and how long writing took."""

    format: str
    path: Path
    file_bytes: int
    encode_s: float
    setting: str = ""
    lossless: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Family name in the tables: ``fp32+gzip``, ``fp16``, ``int8``, ``nnc-qp-32``..."""
        if self.format in ("gzip", "xz", "zstd"):
            return f"fp32+{self.format}"
        if self.format == "nnc":
            return f"nnc-qp{self.extra['qp']}"
        return self.format


# ---------------------------------------------------------------- availability
def zstd_available() -> tuple[bool, str]:
    """(True, "") if the ``zstandard`` package imports, else (False, the reason in one line)."""
    try:
        import zstandard  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build
        return False, f"zstd skipped: the zstandard package does not import ({type(exc).__name__}: {exc}); pip install 'deepcomp[compare]'"
    return True, ""


def nnc_available() -> tuple[bool, str]:
    """(True, "") if ``nncodec`` imports, else (False, the reason in one line)."""
    try:
        _nnc()
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return False, f"NNC skipped: nncodec does not import ({type(exc).__name__}: {msg}); pip install nncodec (optional, builds a C++ extension)"
    return True, ""


def available_formats() -> tuple[list[str], list[str]]:
    """(formats that can run here, one-line notes on those that cannot)."""
    formats, notes = [], []
    for fmt in FORMATS:
        ok, why = zstd_available() if fmt == "zstd" else nnc_available() if fmt == "nnc" else (True, "")
        (formats if ok else notes).append(fmt if ok else why)
    return formats, notes


def _nnc():
    import contextlib

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from nncodec import nnc
    return nnc


# ---------------------------------------------------------------- the reference tensors
def reference_state_dict(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], arch: str, quality: int) -> "OrderedDict[str, torch.Tensor]":
    """The tensors every format stores: today's names, checked against ``arch``/``quality``,
    derived buffers dropped, floating tensors in float32, contiguous on the CPU."""
    state = read_state_dict(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else OrderedDict(checkpoint)
    model = zoo.build(arch, quality, init_weights=False)
    state = zoo.canonical_state_dict(model, state)
    zoo.assign_weights(model, state, str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state_dict")
    out = OrderedDict()
    for k, v in zoo.strip_derived(state).items():
        v = v.detach().cpu()
        out[k] = (v.float() if v.is_floating_point() else v).contiguous()
    return out


def same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """True if ``a`` and ``b`` hold the same names with bit-identical tensors (dtype included)."""
    if list(a) != list(b):
        return False
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- writing
def _torch_bytes(state: Mapping[str, torch.Tensor], arch: str | None, quality: int | None) -> bytes:
    buf = io.BytesIO()
    payload: dict = {"state_dict": dict(state)}
    if arch is not None:
        payload["config"] = {"arch": arch, "quality": quality}  # what evaluation.open_model reads
    torch.save(payload, buf)
    return buf.getvalue()


def _compress(fmt: str, data: bytes) -> bytes:
    if fmt == "gzip":
        return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    if fmt == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=XZ_PRESET)
    if fmt == "zstd":
        ok, why = zstd_available()
        if not ok:
            raise DeepCompError(why)
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    raise DeepCompError(f"unknown compressor {fmt!r}")


def _decompress(fmt: str, data: bytes) -> bytes:
    if fmt == "gzip":
        return gzip.decompress(data)
    if fmt == "xz":
        return lzma.decompress(data)
    if fmt == "zstd":
        ok, why = zstd_available()
        if not ok:
            raise DeepCompError(why)
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise DeepCompError(f"unknown compressor {fmt!r}")


def nnc_encode(state: Mapping[str, torch.Tensor], qp: int, nonweight_qp: int = NNC_NONWEIGHT_QP,
               fine_patterns=NNC_FINE_PATTERNS) -> bytes:
    """The NNC bitstream of a state_dict at ``qp`` (``nncodec``'s ``nnc.compress``; dependent quantization on)."""
    ok, why = nnc_available()
    if not ok:
        raise DeepCompError(why)
    nnc = _nnc()
    arrays, fine = {}, {}
    for k, v in state.items():
        a = v.detach().cpu().numpy()
        arrays[k] = np.array(a, dtype=np.float32 if v.is_floating_point() else np.int32, copy=True)
        if any(fnmatch.fnmatchcase(k, p) for p in fine_patterns):
            fine[k] = int(nonweight_qp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bs = nnc.compress(arrays, bitstream_path=None, qp=int(qp), nonweight_qp=int(nonweight_qp), qp_per_tensor=fine or None,
                          return_bitstream=True, verbose=False)
    return bytes(bs)


def nnc_decode(data: bytes) -> "OrderedDict[str, torch.Tensor]":
    """A state_dict from an NNC bitstream (float32 and int32 tensors)."""
    ok, why = nnc_available()
    if not ok:
        raise DeepCompError(why)
    nnc = _nnc()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = nnc.decompress(bytearray(data), verbose=False)
    except (Exception, SystemExit) as exc:  # nncodec raises SystemExit on bad input
        raise DeepCompError(f"cannot decode the NNC bitstream: {type(exc).__name__}: {exc}") from None
    return OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in params.items())


def int8_plain_bytes(state: Mapping[str, torch.Tensor], arch: str, quality: int) -> int:
    """Bytes of the int8 model laid out plainly: 1 byte per conv weight, one fp32 scale
    per output channel, 4 bytes per other value (no entropy coding, no header)."""
    axes = zoo.output_channel_axes(zoo.build(arch, quality, init_weights=False))
    total = 0
    for k, v in state.items():
        rule = INT8_POLICY.rule_for(k, tuple(v.shape))
        if rule.bits == 8 and k in axes:
            total += v.numel() + 4 * int(v.shape[axes[k] % v.dim()])
        else:
            total += 4 * v.numel()
    return total


def write(state: Mapping[str, torch.Tensor], fmt: str, path: str | os.PathLike, arch: str, quality: int,
          qp: int | None = None, fp32_bytes: bytes | None = None) -> WeightFile:
    """Write ``state`` (from :func:`reference_state_dict`) as ``fmt`` to ``path``.

    ``qp`` is NNC's quantization parameter (needed for ``nnc``);
    ``fp32_bytes``, the fp32 file's bytes, spares serialising it again for
    gzip/xz/zstd.  Returns the file's size and the encoding time (serialising
    + compressing; the int8 and NNC times include their quantization).
    """
    if fmt not in FORMATS:
        raise DeepCompError(f"unknown weight format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    extra: dict = {}
    setting = ""
    t0 = time.perf_counter()
    if fmt == "fp32":
        data = _torch_bytes(state, arch, quality)
    elif fmt in ("gzip", "xz", "zstd"):
        raw = fp32_bytes if fp32_bytes is not None else _torch_bytes(state, arch, quality)
        t0 = time.perf_counter()  # the fp32 file exists already: only its compression counts
        data = _compress(fmt, raw)
        setting = {"gzip": f"level {GZIP_LEVEL}", "xz": "preset 9e", "zstd": f"level {ZSTD_LEVEL}"}[fmt]
    elif fmt == "fp16":
        data = _torch_bytes(OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in state.items()), arch, quality)
    elif fmt == "int8":
        from . import container
        from .model_file import compress_state_dict

        data = container.to_bytes(compress_state_dict(state, INT8_POLICY, arch, quality))
        setting = "uniform 8 bits per output channel"
        extra["plain_bytes"] = int8_plain_bytes(state, arch, quality)
    else:
        if qp is None:
            raise DeepCompError("NNC needs a quantization parameter qp")
        data = nnc_encode(state, qp)
        setting = f"qp {int(qp)}"
        extra["qp"] = int(qp)
    encode_s = time.perf_counter() - t0
    atomic_write_bytes(path, data)
    return WeightFile(fmt, path, len(data), encode_s, setting, fmt in LOSSLESS, extra)


# ---------------------------------------------------------------- reading
def detect_format(path: str | os.PathLike) -> str:
    """The format of a model file, from its first bytes (``.nnc`` files by name: NNC has no magic)."""
    from .container import MAGIC as DCMP_MAGIC

    path = Path(path)
    if not path.is_file():
        raise DeepCompError(f"model file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    if head.startswith(DCMP_MAGIC):
        return "deepcomp"
    if path.name.endswith(".nnc"):
        return "nnc"
    if head.startswith(b"PK"):
        return "torch"  # fp32 or fp16: torch.save's zip
    raise DeepCompError(f"{path}: unknown model file format")


def _state_from_torch_bytes(data: bytes, source: str) -> "OrderedDict[str, torch.Tensor]":
    import tempfile

    # read_state_dict takes a path (it handles wrappers, prefixes and errors)
    with tempfile.NamedTemporaryFile(suffix=".pth.tar") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return read_state_dict(tmp.name)
        except DeepCompError as exc:
            raise DeepCompError(str(exc).replace(tmp.name, source)) from None


def read(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict of a file of any format here (and of deepcomp files); float16 comes back as float32."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "deepcomp":
        from .model_file import load

        return load(path)
    data = path.read_bytes()
    if fmt == "nnc":
        return nnc_decode(data)
    if fmt in ("gzip", "xz", "zstd"):
        try:
            data = _decompress(fmt, data)
        except DeepCompError:
            raise
        except Exception as exc:
            raise DeepCompError(f"cannot decompress {path} ({fmt}): {exc}") from None
    state = _state_from_torch_bytes(data, str(path))
    return OrderedDict((k, v.float() if v.dtype == torch.float16 else v) for k, v in state.items())


def load_model(path: str | os.PathLike, arch: str, quality: int) -> tuple[torch.nn.Module, "OrderedDict[str, torch.Tensor]", float]:
    """(model ready for ``compress()``, the state_dict read, seconds to read and decode the file)."""
    t0 = time.perf_counter()
    state = read(path)
    decode_s = time.perf_counter() - t0
    return zoo.model_from_state_dict(arch, quality, state, source=str(path)), state, decode_s
