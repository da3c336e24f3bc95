"""Storing an image's latents: the range coder against LZMA, and the PNG folder through tar + xz.

A seed study replaced CompressAI's arithmetic (range) coding with pickle +
LZMA over the quantized latents.  This module measures that choice on the
same model and images, without pickle:

* ``range coder``: CompressAI's ``compress()`` / ``decompress()`` (the
  bitstream :func:`deepcomp.evaluation.evaluate_image` measures);
* ``lzma``: the integer symbols of the quantized latents (``y_hat`` minus
  the entropy model's offsets: medians, or predicted means) as the smallest of
  int8/int16/int32 in C order, after a tiny header of names, dtypes and
  shapes, compressed by LZMA2 (raw stream, preset 9 extreme).  Decoding gives
  the very ``y_hat`` (and reconstruction) of the range coder path;
* ``png tar+xz``: the image files of the folder in one tar, through xz
  (preset 9 extreme): lossless, for scale.

Sizes: bpp = 8 x bytes / (height x width of the original image).  The range
coder's count is CompressAI's (its strings; the latent shape is side
information it does not count); the LZMA count includes its whole header.
Times are wall-clock seconds: compress = analysis transform (and hyper
analysis) + quantization + entropy coding; decompress = entropy decoding +
synthesis transform.  Quality comes from :mod:`deepcomp.evaluation`'s metrics.

Models: the factorized prior (``bmshj2018-factorized``, ``-relu``), the scale
hyperprior (``bmshj2018-hyperprior``) and the mean-scale hyperprior
(``mbt2018-mean``).  Autoregressive context models (``mbt2018``,
``cheng2020-*``) are refused: their latents are decoded serially through the
context model, which LZMA storage does not replace.
"""

from __future__ import annotations

import io
import lzma
import math
import os
import struct
import tarfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeepCompError

#: Magic of an LZMA latent payload, then a format version byte.
MAGIC = b"DCLT"
VERSION = 1

#: LZMA2 filter chain of the payload (raw stream: the header above replaces xz's).
LZMA_FILTERS = ({"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME},)

#: xz preset of the PNG tar.
XZ_PRESET = 9 | lzma.PRESET_EXTREME

_DTYPES = {1: np.dtype("<i1"), 2: np.dtype("<i2"), 4: np.dtype("<i4")}

#: Rows of :func:`compare_latent_storage`, in table order.
METHODS = ("range coder", "lzma", "png tar+xz")

#: Per-method fields of the comparison (CSV column order).
FIELDS = ("method", "images", "bytes", "bpp", "psnr", "ssim", "ms_ssim", "compress_s", "decompress_s", "total_s")


# ---------------------------------------------------------------- the latents of a model
def _kind(model: nn.Module) -> str:
    from compressai.models.google import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior

    if hasattr(model, "context_prediction"):
        raise DeepCompError(f"{type(model).__name__} decodes its latents through an autoregressive context model; "
                            "LZMA latent storage supports the factorized and (mean-)scale hyperprior models")
    if isinstance(model, MeanScaleHyperprior):
        return "mean-scale"
    if isinstance(model, ScaleHyperprior):
        return "scale"
    if isinstance(model, FactorizedPrior):
        return "factorized"
    raise DeepCompError(f"LZMA latent storage does not know {type(model).__name__}; "
                        "it supports the factorized and (mean-)scale hyperprior models")


def supports(model: nn.Module) -> bool:
    """True if :func:`latent_symbols` can store this model's latents."""
    try:
        _kind(model)
    except DeepCompError:
        return False
    return True


def _medians(model: nn.Module, ndim: int = 4) -> torch.Tensor:
    med = model.entropy_bottleneck._get_medians().detach()  # (C, 1, 1)
    return med.reshape(1, -1, *([1] * (ndim - 2)))


def _bottleneck_symbols(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
    # as EntropyBottleneck.compress: round(t - medians)
    return model.entropy_bottleneck.quantize(t, "symbols", _medians(model, t.dim()))


def _bottleneck_values(model: nn.Module, symbols: torch.Tensor) -> torch.Tensor:
    # as EntropyBottleneck.decompress: symbols + medians
    return model.entropy_bottleneck.dequantize(symbols, _medians(model, symbols.dim()))


@torch.no_grad()
def latent_symbols(model: nn.Module, x: torch.Tensor) -> "OrderedDict[str, np.ndarray]":
    """The integer symbols ``compress()`` would entropy-code for ``x`` (padded, 1x3xHxW in [0, 1]).

    Factorized: ``{"y": round(y - medians)}``; scale hyperprior:
    ``{"y": round(y)}`` (the hyper-latent only parametrises the range coder,
    LZMA needs none); mean-scale: ``{"z": ..., "y": round(y - means)}``.
    """
    kind = _kind(model)
    y = model.g_a(x)
    if kind == "factorized":
        out = [("y", _bottleneck_symbols(model, y))]
    elif kind == "scale":
        out = [("y", model.gaussian_conditional.quantize(y, "symbols"))]
    else:
        z = model.h_a(y)
        z_sym = _bottleneck_symbols(model, z)
        _, means = model.h_s(_bottleneck_values(model, z_sym)).chunk(2, 1)
        out = [("z", z_sym), ("y", model.gaussian_conditional.quantize(y, "symbols", means))]
    return OrderedDict((k, v.cpu().numpy().astype(np.int32)) for k, v in out)


@torch.no_grad()
def latents_to_y_hat(model: nn.Module, symbols: Mapping[str, np.ndarray]) -> torch.Tensor:
    """``y_hat`` from the symbols of :func:`latent_symbols`, as ``decompress()`` computes it."""
    kind = _kind(model)
    if "y" not in symbols or (kind == "mean-scale" and "z" not in symbols):
        raise DeepCompError(f"latents of a {kind} model need {'z and y' if kind == 'mean-scale' else 'y'}; got {', '.join(symbols) or 'none'}")
    y_sym = torch.from_numpy(np.ascontiguousarray(symbols["y"], dtype=np.int32))
    if kind == "factorized":
        return _bottleneck_values(model, y_sym)
    if kind == "scale":
        return model.gaussian_conditional.dequantize(y_sym)
    z_sym = torch.from_numpy(np.ascontiguousarray(symbols["z"], dtype=np.int32))
    _, means = model.h_s(_bottleneck_values(model, z_sym)).chunk(2, 1)
    return model.gaussian_conditional.dequantize(y_sym, means)


# ---------------------------------------------------------------- the payload (no pickle)
def _narrowest(a: np.ndarray) -> np.dtype:
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for width in (1, 2, 4):
        info = np.iinfo(_DTYPES[width])
        if info.min <= lo and hi <= info.max:
            return _DTYPES[width]
    raise DeepCompError(f"latent symbols out of the int32 range ({lo}..{hi})")


def pack_latents(symbols: Mapping[str, np.ndarray]) -> bytes:
    """Integer arrays -> ``MAGIC``, version, count, then per array (name, dtype width,
    ndim, uint32 dims), then one raw LZMA2 stream of their little-endian bytes."""
    head = bytearray(MAGIC) + struct.pack("<BB", VERSION, len(symbols))
    body = bytearray()
    for name, a in symbols.items():
        a = np.asarray(a)
        if a.dtype.kind not in "iu":
            raise DeepCompError(f"latent {name!r} is not an integer array ({a.dtype})")
        raw = name.encode("ascii")
        if not 0 < len(raw) < 256 or a.ndim > 255:
            raise DeepCompError(f"latent {name!r}: name or rank out of range")
        dt = _narrowest(a)
        head += struct.pack("<B", len(raw)) + raw + struct.pack("<BB", dt.itemsize, a.ndim)
        head += struct.pack(f"<{a.ndim}I", *a.shape)
        body += np.ascontiguousarray(a, dtype=dt).tobytes()
    return bytes(head) + lzma.compress(bytes(body), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)


def unpack_latents(data: bytes) -> "OrderedDict[str, np.ndarray]":
    """The arrays of :func:`pack_latents` (as int32)."""
    try:
        if data[:4] != MAGIC:
            raise ValueError("not an LZMA latent payload (bad magic)")
        version, count = struct.unpack_from("<BB", data, 4)
        if version != VERSION:
            raise ValueError(f"unknown version {version}")
        pos, specs = 6, []
        for _ in range(count):
            (n,) = struct.unpack_from("<B", data, pos)
            name = data[pos + 1: pos + 1 + n].decode("ascii")
            pos += 1 + n
            width, ndim = struct.unpack_from("<BB", data, pos)
            pos += 2
            shape = struct.unpack_from(f"<{ndim}I", data, pos)
            pos += 4 * ndim
            if width not in _DTYPES:
                raise ValueError(f"bad dtype width {width}")
            specs.append((name, _DTYPES[width], shape))
        body = lzma.decompress(data[pos:], format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
        out, off = OrderedDict(), 0
        for name, dt, shape in specs:
            size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if off + size > len(body):
                raise ValueError("truncated")
            out[name] = np.frombuffer(body, dtype=dt, count=size // dt.itemsize, offset=off).reshape(shape).astype(np.int32)
            off += size
        if off != len(body):
            raise ValueError("trailing bytes")
        return out
    except (ValueError, struct.error, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise DeepCompError(f"corrupt LZMA latent payload: {exc}") from None


@torch.no_grad()
def lzma_compress(model: nn.Module, x: torch.Tensor) -> bytes:
    """``x`` (padded, 1x3xHxW in [0, 1]) -> the LZMA payload of its quantized latents."""
    return pack_latents(latent_symbols(model, x))


@torch.no_grad()
def lzma_decompress(model: nn.Module, data: bytes) -> torch.Tensor:
    """The padded reconstruction from an LZMA payload (clamped to [0, 1], as ``decompress()``)."""
    return model.g_s(latents_to_y_hat(model, unpack_latents(data))).clamp_(0, 1)


# ---------------------------------------------------------------- one image
def _image_tensor(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    org = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float()  # 0..255
    return org, org / 255.0


def _quality(org: torch.Tensor, x_hat: torch.Tensor, unpad) -> dict:
    from .evaluation import psnr_8bit, ssim_metrics, to_8bit

    rec = to_8bit(F.pad(x_hat, unpad).contiguous())
    s, ms = ssim_metrics(org, rec)
    return {"psnr": psnr_8bit(org, rec), "ssim": s, "ms_ssim": ms}


@torch.no_grad()
def range_coder_image(model: nn.Module, rgb: np.ndarray) -> dict:
    """CompressAI's bitstream for one image: :func:`deepcomp.evaluation.evaluate_image` (default memory layout)."""
    from .evaluation import evaluate_image

    r = evaluate_image(model, rgb, channels_last=False)
    return {"bytes": r["bytes"], "bpp": r["bpp"], "psnr": r["psnr"], "ssim": r["ssim"], "ms_ssim": r["ms_ssim"],
            "compress_s": r["encode_s"], "decompress_s": r["decode_s"], "pixels": r["width"] * r["height"]}


@torch.no_grad()
def lzma_image(model: nn.Module, rgb: np.ndarray) -> dict:
    """The LZMA latent payload for one image: its size, quality and times."""
    from .evaluation import pad_image

    org, x = _image_tensor(rgb)
    h, w = x.shape[-2:]
    x_padded, unpad = pad_image(x)
    t0 = time.perf_counter()
    data = lzma_compress(model, x_padded)
    t1 = time.perf_counter()
    x_hat = lzma_decompress(model, data)
    t2 = time.perf_counter()
    out = {"bytes": len(data), "bpp": len(data) * 8.0 / (h * w)}
    out.update(_quality(org, x_hat, unpad))
    out.update(compress_s=t1 - t0, decompress_s=t2 - t1, pixels=int(h * w))
    return out


# ---------------------------------------------------------------- the image folder
def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as img:
        return img.width * img.height


def tar_xz(paths: Sequence[str | os.PathLike]) -> bytes:
    """The files in one (uncompressed, deterministic) tar, through xz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in map(Path, paths):
            data = p.read_bytes()
            info = tarfile.TarInfo(p.name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, preset=XZ_PRESET)


def untar_xz(data: bytes) -> "OrderedDict[str, bytes]":
    """The files of a :func:`tar_xz` archive, by name."""
    out = OrderedDict()
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r:") as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = tar.extractfile(m).read()
    return out


def png_tar_xz(paths: Sequence[str | os.PathLike]) -> dict:
    """The image files through tar + xz: bytes, bpp over all pixels, times; checked to come back intact."""
    paths = [Path(p) for p in paths]
    t0 = time.perf_counter()
    data = tar_xz(paths)
    t1 = time.perf_counter()
    back = untar_xz(data)
    t2 = time.perf_counter()
    for p in paths:
        if back.get(p.name) != p.read_bytes():
            raise DeepCompError(f"tar+xz round trip changed {p.name}")
    pixels = sum(_pixels(p) for p in paths)
    files = sum(p.stat().st_size for p in paths)
    return {"bytes": len(data), "bpp": len(data) * 8.0 / pixels, "file_bytes": files, "file_bpp": files * 8.0 / pixels,
            "psnr": math.inf, "ssim": 1.0, "ms_ssim": 1.0, "compress_s": t1 - t0, "decompress_s": t2 - t1,
            "pixels": pixels, "images": len(paths)}


# ---------------------------------------------------------------- the comparison
def _summary(method: str, per_image: Sequence[Mapping]) -> dict:
    from .evaluation import _mean

    pixels = sum(r["pixels"] for r in per_image)
    nbytes = sum(r["bytes"] for r in per_image)
    comp = sum(r["compress_s"] for r in per_image)
    dec = sum(r["decompress_s"] for r in per_image)
    return {"method": method, "images": len(per_image), "bytes": int(nbytes),
            "bpp": _mean(r["bpp"] for r in per_image),  # mean of the per-image bpp, as evaluation.summarize
            "psnr": _mean(r["psnr"] for r in per_image), "ssim": _mean(r["ssim"] for r in per_image),
            "ms_ssim": _mean(r["ms_ssim"] for r in per_image),
            "compress_s": comp, "decompress_s": dec, "total_s": comp + dec, "pixels": pixels}


def compare_latent_storage(model: nn.Module, image_paths: Sequence[str | os.PathLike], progress: bool = True,
                           check: bool = True, on_image: Callable[[str], None] | None = None) -> dict:
    """The three ways to store the images, one summary row each (``FIELDS``), plus the per-image rows.

    ``check`` asserts, per image, that the LZMA path decodes to the range
    coder path's reconstruction (same 8-bit pixels).  Times are totals over
    the images.
    """
    from tqdm import tqdm

    from .images import read_rgb

    if not supports(model):
        _kind(model)  # raises the reason
    model.eval()
    rc, lz, per_image = [], [], []
    for path in tqdm(list(image_paths), desc="latents", unit="img", disable=not progress, leave=False, dynamic_ncols=True):
        rgb = read_rgb(path)
        a = range_coder_image(model, rgb)
        b = lzma_image(model, rgb)
        if check and not (a["psnr"] == b["psnr"] or (math.isinf(a["psnr"]) and math.isinf(b["psnr"]))):
            raise DeepCompError(f"{Path(path).name}: the LZMA latents did not decode to the range coder's reconstruction "
                                f"(PSNR {b['psnr']:.4f} vs {a['psnr']:.4f} dB)")
        rc.append(a)
        lz.append(b)
        per_image.append({"image": Path(path).name, "range_coder": a, "lzma": b})
        if on_image is not None:
            on_image(Path(path).name)
    png = png_tar_xz(image_paths)
    rows = [_summary("range coder", rc), _summary("lzma", lz), dict(png, method="png tar+xz")]
    rows[2]["total_s"] = png["compress_s"] + png["decompress_s"]
    return {"rows": rows, "per_image": per_image, "png_files_bpp": png["file_bpp"]}
