"""Evaluating models on an image folder (Kodak) with the real entropy coders.

The conventions follow CompressAI's ``compressai.utils.eval_model`` so that the
numbers agree with it for an uncompressed checkpoint:

* each image is read as 8-bit RGB and scaled to [0, 1];
* it is padded (zeros, centred) to a multiple of 64 with
  ``compressai.ops.compute_padding``;
* ``model.compress()`` produces the byte strings, ``model.decompress()``
  decodes them; the reconstruction is cropped back and rounded to 8 bits;
* bpp = 8 * (bytes of all strings) / (height * width of the original image);
* PSNR on the 8-bit values (peak 255), mean over the images;
* SSIM and MS-SSIM from pytorch-msssim with ``data_range=1.0`` on the
  8-bit values divided by 255 (identical to data_range 255 on 0..255).

Encode and decode times are wall-clock seconds (``time.perf_counter``) of the
``compress()`` and ``decompress()`` calls alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import zoo
from .checkpoints import atomic_write_bytes, read_json, read_state_dict, sha256_file
from .errors import DeepCompError
from .images import KODAK_HINT, list_images, read_rgb

#: Format tag of the results JSON written by :func:`write_results`.
RESULTS_FORMAT = "deepcomp-eval/1"

#: Images are padded to a multiple of this (6 strides of 2, as CompressAI).
PAD_MULTIPLE = 64

#: Per-image metrics, in CSV column order.
IMAGE_FIELDS = ("image", "width", "height", "bytes", "bpp", "psnr", "ssim", "ms_ssim", "encode_s", "decode_s")

#: Metrics averaged over the images by :func:`summarize`.
MEAN_FIELDS = ("bpp", "psnr", "ssim", "ms_ssim", "encode_s", "decode_s")

#: Model-level fields repeated on every CSV row.
MODEL_FIELDS = ("model", "family", "kind", "arch", "quality", "file_bytes", "fp32_bytes", "params", "nonzero_params", "density")


# ---------------------------------------------------------------- models
def _checkpoint_meta(path: Path) -> dict:
    """arch/quality recorded in a checkpoint (``deepcomp train`` writes ``config``), if any.

    Memory-mapped and weights-only, so it costs little; any failure is left to
    :func:`read_state_dict`, which reports it properly.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    meta: dict = {}
    if isinstance(obj, dict):
        for src in (obj.get("config"), obj):
            if isinstance(src, dict):
                if isinstance(src.get("arch"), str) and "arch" not in meta:
                    meta["arch"] = src["arch"]
                q = src.get("quality")
                if isinstance(q, int) and not isinstance(q, bool) and "quality" not in meta:
                    meta["quality"] = q
                if isinstance(src.get("widths"), dict) and "widths" not in meta:
                    meta["widths"] = src["widths"]  # a channel-pruned model's channels per group
    return meta


def _is_deepcomp_file(path: Path) -> bool:
    try:
        from .container import is_deepcomp_file
    except ImportError:  # the container module is not there (yet): plain checkpoints only
        return False
    return bool(is_deepcomp_file(path))


def _deepcomp_loader(path: Path):
    """The module that decodes deepcomp files (``load_model``, ``file_info``)."""
    import importlib

    for name in ("model_file", "codec"):
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            continue
        if hasattr(mod, "load_model") and hasattr(mod, "file_info"):
            return mod
    raise DeepCompError(f"{path} is a deepcomp file but this installation cannot decode it")


def fp32_checkpoint_bytes(model: nn.Module) -> int:
    """Size of the model as a plain fp32 checkpoint: 4 bytes per stored value.

    Parameters and stored buffers, without the buffers ``update()`` rebuilds
    (the same count as the deepcomp header's ``reference.fp32_bytes``); the
    few kilobytes of pickle framing of a real ``torch.save`` file are left out.
    """
    return 4 * sum(v.numel() for v in zoo.strip_derived(model.state_dict()).values())


def parameter_stats(model: nn.Module) -> dict:
    """Parameter count, non-zero count and density (non-zero fraction) over all parameters."""
    total = 0
    nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return {"params": total, "nonzero_params": nonzero, "density": nonzero / total if total else 0.0}


def _check_choice(name: str, from_file, given):
    if given is not None and from_file is not None and given != from_file:
        raise DeepCompError(f"{name}: the file says {from_file!r} but {given!r} was given")
    return from_file if from_file is not None else given


def open_model(path: str | os.PathLike, arch: str | None = None, quality: int | None = None) -> tuple[nn.Module, dict]:
    """Load a deepcomp file or a CompressAI checkpoint, ready for ``compress()``.

    Returns ``(model, info)``; ``info`` holds ``path``, ``name``, ``kind``
    (``"deepcomp"`` or ``"checkpoint"``), ``arch``, ``quality``,
    ``file_bytes`` (size of the file), ``fp32_bytes`` (size of the equivalent
    fp32 state_dict file), ``params``, ``nonzero_params`` and ``density``.

    A checkpoint that does not record its architecture and quality needs
    ``arch`` and ``quality``; a deepcomp file records them (``arch`` /
    ``quality`` given as well must agree).  The model is in ``eval()`` mode
    with ``update(force=True)`` done.
    """
    path = Path(path)
    if not path.is_file():
        raise DeepCompError(f"model file not found: {path}")
    extra: dict = {}
    if _is_deepcomp_file(path):
        loader = _deepcomp_loader(path)
        meta = loader.file_info(path)
        arch = _check_choice("architecture", meta.get("arch"), arch)
        quality = _check_choice("quality", meta.get("quality"), quality)
        if arch is None or quality is None:
            raise DeepCompError(f"{path} does not say which model it holds: pass --arch and --quality")
        model = loader.load_model(path, arch, quality)
        ref = meta.get("reference") if isinstance(meta.get("reference"), dict) else {}
        if ref.get("checkpoint_bytes"):
            extra["source_checkpoint_bytes"] = int(ref["checkpoint_bytes"])
        kind = "deepcomp"
    else:
        meta = _checkpoint_meta(path)
        arch = _check_choice("architecture", meta.get("arch"), arch)
        quality = _check_choice("quality", meta.get("quality"), quality)
        if arch is None or quality is None:
            missing = " and ".join(n for n, v in (("--arch", arch), ("--quality", quality)) if v is None)
            raise DeepCompError(f"{path} does not say which model it holds: pass {missing}")
        state = read_state_dict(path)
        model = zoo.model_from_state_dict(arch, quality, state, source=str(path), widths=meta.get("widths"))
        kind = "checkpoint"
    model = model.cpu().float()
    model.update(force=True)
    model.eval()
    info = {
        "path": str(path),
        "name": path.name,
        "kind": kind,
        "arch": arch,
        "quality": quality,
        "file_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "fp32_bytes": fp32_checkpoint_bytes(model),
    }
    info.update(parameter_stats(model))
    info.update(extra)
    if meta.get("widths"):
        info["widths"] = dict(meta["widths"])
    return model, info


# ---------------------------------------------------------------- metrics
@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, then restore the previous number."""
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)


def pad_image(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> tuple[torch.Tensor, tuple]:
    """Zero-pad (centred) to a multiple of ``multiple``, as CompressAI's eval_model; also the unpad."""
    from compressai.ops import compute_padding

    h, w = x.shape[-2:]
    pad, unpad = compute_padding(h, w, min_div=multiple)
    return F.pad(x, pad, mode="constant", value=0), unpad


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> 0..255 integers (as float), clamped and rounded."""
    return (x * 255.0).clamp(0, 255).round()


def psnr_8bit(org: torch.Tensor, rec: torch.Tensor) -> float:
    """PSNR in dB of two 8-bit images (values 0..255), peak 255; inf if identical."""
    mse = float(torch.mean((org.double() - rec.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim_metrics(org: torch.Tensor, rec: torch.Tensor) -> tuple[float, float]:
    """(SSIM, MS-SSIM) of two 8-bit images scaled to [0, 1], data range 1.0.

    pytorch-msssim's defaults (11x11 Gaussian window, sigma 1.5, K = 0.01,
    0.03, five MS-SSIM scales).  The first MS-SSIM scale is the SSIM itself,
    so it is computed once and shared (same operations as ``ssim()`` and
    ``ms_ssim()``).  NaN where the image is too small for the metric
    (MS-SSIM needs a smaller side above 160 pixels).
    """
    import warnings

    a, b = org / 255.0, rec / 255.0
    # one thread: pytorch-msssim's depthwise Gaussian filters run slower multi-threaded
    with warnings.catch_warnings(), torch_threads(1):
        warnings.simplefilter("ignore")
        try:
            return _ssim_and_ms_ssim(a, b)
        except ImportError:  # pytorch-msssim without its private helpers: the public calls
            from pytorch_msssim import ms_ssim, ssim

            out = []
            for fn in (ssim, ms_ssim):
                try:
                    out.append(float(fn(a, b, data_range=1.0)))
                except (AssertionError, RuntimeError, ValueError):
                    out.append(math.nan)
            return out[0], out[1]


def _ssim_and_ms_ssim(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``ssim(a, b, data_range=1.0)`` and ``ms_ssim(a, b, data_range=1.0)`` sharing the first scale."""
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    win_size, weights = 11, [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    win = _fspecial_gauss_1d(win_size, 1.5).repeat([a.shape[1], 1, 1, 1])
    try:
        ssim_pc, cs = _ssim(a, b, data_range=1.0, win=win, size_average=False, K=(0.01, 0.03))
    except RuntimeError:
        return math.nan, math.nan
    ssim_val = float(ssim_pc.mean())
    if min(a.shape[-2:]) <= (win_size - 1) * 2**4:
        return ssim_val, math.nan
    w = a.new_tensor(weights)
    mcs = []
    x, y = a, b
    for i in range(len(weights)):
        if i > 0:
            ssim_pc, cs = _ssim(x, y, data_range=1.0, win=win, size_average=False, K=(0.01, 0.03))
        if i < len(weights) - 1:
            mcs.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    stacked = torch.stack(mcs + [torch.relu(ssim_pc)], dim=0)
    return ssim_val, float(torch.prod(stacked ** w.view(-1, 1, 1), dim=0).mean())


def string_bytes(strings) -> int:
    """Total length of the byte strings returned by ``compress()`` (nested lists)."""
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    return sum(string_bytes(s) for s in strings)


@torch.no_grad()
def evaluate_image(model: nn.Module, rgb: np.ndarray, channels_last: bool = False) -> dict:
    """Code one HxWx3 uint8 image through the model's real entropy coders; its metrics.

    ``channels_last`` feeds the image in that memory format (the model must
    have been converted too, see :func:`evaluate_model`).
    """
    org = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float()  # 0..255
    x = org / 255.0
    h, w = x.shape[-2:]
    x_padded, unpad = pad_image(x)
    if channels_last:
        x_padded = x_padded.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    enc = model.compress(x_padded)
    t1 = time.perf_counter()
    dec = model.decompress(enc["strings"], enc["shape"])
    t2 = time.perf_counter()
    x_hat = F.pad(dec["x_hat"], unpad).contiguous()
    rec = to_8bit(x_hat)
    nbytes = string_bytes(enc["strings"])
    s, ms = ssim_metrics(org, rec)
    return {
        "width": int(w), "height": int(h), "bytes": nbytes,
        "bpp": nbytes * 8.0 / (h * w),
        "psnr": psnr_8bit(org, rec), "ssim": s, "ms_ssim": ms,
        "encode_s": t1 - t0, "decode_s": t2 - t1,
    }


def evaluate_model(
    model: nn.Module,
    image_paths: Sequence[str | os.PathLike],
    progress: bool = True,
    desc: str | None = None,
    on_image: Callable[[dict], None] | None = None,
    channels_last: bool = True,
) -> list[dict]:
    """Per-image results (``IMAGE_FIELDS``) of ``model`` on ``image_paths``.

    The model must be in ``eval()`` mode with ``update(force=True)`` done
    (:func:`open_model` does both).  ``on_image`` is called after each image.

    ``channels_last`` runs the convolutions in that memory format (about 20%
    faster on CPU).  The float results then differ from CompressAI's
    ``eval_model`` in the last bits, which can flip the rounding of a few
    latents (same bpp to a few bytes, PSNR to ~1e-3 dB); ``False`` uses
    PyTorch's default layout, as ``eval_model`` does, for identical
    bitstreams at the same thread count.  The model is put back in the
    default layout afterwards.
    """
    from tqdm import tqdm

    if model.training:
        model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    results = []
    try:
        for path in tqdm(list(image_paths), desc=desc or "images", unit="img", disable=not progress, leave=False, dynamic_ncols=True):
            try:
                rgb = read_rgb(path)
            except DeepCompError as exc:
                raise DeepCompError(f"{exc}; {KODAK_HINT}") from None
            r = {"image": Path(path).name}
            r.update(evaluate_image(model, rgb, channels_last=channels_last))
            results.append(r)
            if on_image is not None:
                on_image(r)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    return results


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else math.nan


def summarize(per_image: Sequence[Mapping]) -> dict:
    """Mean of each metric over the images (NaNs skipped), and the image count.

    As CompressAI, the mean PSNR is the mean of the per-image PSNRs.
    """
    if not per_image:
        raise DeepCompError("no images were evaluated")
    out = {k: _mean(r[k] for r in per_image) for k in MEAN_FIELDS}
    out["images"] = len(per_image)
    out["bytes"] = int(sum(r["bytes"] for r in per_image))
    out["seconds"] = float(sum(r["encode_s"] + r["decode_s"] for r in per_image))
    return out


# ---------------------------------------------------------------- files
def check_images(paths: Sequence[Path], hint: str = KODAK_HINT) -> None:
    """Open every image's header: an unreadable file fails before any model runs."""
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as img:
                img.verify()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeepCompError(f"cannot read image {p}: {first}; {hint}") from None


def image_list(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """The images of ``folder`` (sorted), checked readable; a one-line error otherwise."""
    files = list_images(folder)
    if limit is not None:
        files = files[:limit]
    check_images(files)
    return files


def _clean(value):
    """JSON-safe: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def results_document(info: Mapping, per_image: Sequence[Mapping], data: str | os.PathLike, family: str | None = None,
                     threads: int | None = None, channels_last: bool | None = None) -> dict:
    """The results of one model as one JSON-able dict (format ``RESULTS_FORMAT``)."""
    import compressai

    model = dict(info)
    model["family"] = family or default_family(info)
    return {
        "format": RESULTS_FORMAT,
        "model": model,
        "data": str(data),
        "entropy_coder": compressai.get_entropy_coder(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "channels_last": channels_last,
        "mean": summarize(per_image),
        "per_image": [dict(r) for r in per_image],
    }


def default_family(info: Mapping) -> str:
    """``baseline`` for a plain checkpoint, ``deepcomp`` for a deepcomp file."""
    return "baseline" if info.get("kind") == "checkpoint" else "deepcomp"


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return "" if v is None else str(v)


def results_csv(doc: Mapping) -> str:
    """Per-image rows and a final ``mean`` row, with the model's fields on each row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MODEL_FIELDS + IMAGE_FIELDS)
    m = doc["model"]
    head = [m.get("name") if k == "model" else m.get(k) for k in MODEL_FIELDS]
    for r in doc["per_image"]:
        w.writerow([_fmt(v) for v in head + [r.get(k) for k in IMAGE_FIELDS]])
    mean = doc["mean"]
    row = {"image": "mean", "bytes": mean["bytes"], **{k: mean[k] for k in MEAN_FIELDS}}
    w.writerow([_fmt(v) for v in head + [row.get(k) for k in IMAGE_FIELDS]])
    return buf.getvalue()


def write_results(doc: Mapping, out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """Write ``stem.json`` and ``stem.csv`` atomically into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    atomic_write_bytes(jpath, (json.dumps(_clean(doc), indent=2) + "\n").encode())
    atomic_write_bytes(cpath, results_csv(doc).encode())
    return jpath, cpath


def read_results(path: str | os.PathLike) -> dict:
    """A results JSON written by :func:`write_results`."""
    doc = read_json(path, "results file")
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise DeepCompError(f"{path} is not a deepcomp evaluation result (no format {RESULTS_FORMAT!r})")
    return doc


def reusable_results(jpath: str | os.PathLike, model_path: str | os.PathLike, data: str | os.PathLike,
                     images: int) -> dict | None:
    """The results at ``jpath`` if they are of the same file (by SHA-256, not by name) on the same ``images`` of
    ``data``; None when they are missing, unreadable or of something else (a retrained file at the same path)."""
    jpath = Path(jpath)
    if not jpath.is_file() or not Path(model_path).is_file():
        return None
    try:
        doc = read_results(jpath)
    except DeepCompError:
        return None
    same = (doc.get("data") == str(data) and doc.get("mean", {}).get("images") == images
            and doc.get("model", {}).get("sha256") == sha256_file(model_path))
    return doc if same else None


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Distinct file stems for the results of ``paths`` (a suffix where two names clash)."""
    stems, seen = [], {}
    for p in paths:
        base = Path(p).name
        for suffix in (".tar.pth", ".pth.tar", ".pth", ".pt", ".ckpt", ".tar"):
            if base.endswith(suffix) and len(base) > len(suffix):
                base = base[: -len(suffix)]
                break
        n = seen.get(base, 0)
        seen[base] = n + 1
        stems.append(base if n == 0 else f"{base}-{n + 1}")
    return stems


# ---------------------------------------------------------------- running several models
def busy_cores(interval: float = 0.3) -> float:
    """Cores in use right now, from two ``/proc/stat`` samples ``interval`` s apart.

    Unlike the 1-minute load average, this does not remember a job that
    ended seconds ago (such as this program's previous evaluation).  Falls
    back to the load average where ``/proc/stat`` does not exist.
    """
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (OSError, AttributeError):
            return 0.0
    dt = total1 - total0
    if dt <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / dt)


def default_threads(jobs: int = 1) -> int:
    """Torch threads per model: the idle cores shared among the jobs.

    The cores not busy right now (:func:`busy_cores`) divided among the
    jobs, at least one: on a machine that runs something else, more threads
    than free cores slow PyTorch down (its threads wait on each other).  The
    thread count changes the results only in the last float bits.
    """
    cores = os.cpu_count() or 1
    jobs = max(1, jobs)
    per_job = max(1, cores // jobs)
    idle = int(cores - busy_cores() + 0.5)
    return max(1, min(per_job, idle // jobs))


def run_one(path: str, stem: str, images: Sequence[str], data: str, out_dir: str, arch: str | None, quality: int | None,
            family: str | None, channels_last: bool, progress: bool, on_image: Callable[[dict], None] | None = None) -> dict:
    """Open, evaluate and write the results of one model; returns the summary line."""
    model, info = open_model(path, arch, quality)
    per_image = evaluate_model(model, images, progress=progress, desc=Path(path).name, on_image=on_image, channels_last=channels_last)
    doc = results_document(info, per_image, data, family, channels_last=channels_last)
    jpath, cpath = write_results(doc, out_dir, stem)
    return {"model": path, "json": str(jpath), "csv": str(cpath), "mean": doc["mean"], "info": doc["model"]}


_worker_queue = None


def _worker_init(threads: int, queue) -> None:
    global _worker_queue
    torch.set_num_threads(threads)
    _worker_queue = queue


def _worker_run(kwargs: dict) -> dict:
    q = _worker_queue
    name = kwargs["path"]
    return run_one(**kwargs, progress=False, on_image=(lambda r: q.put((name, r["image"]))) if q is not None else None)


def evaluate_paths(
    model_paths: Sequence[str | os.PathLike],
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    arch: str | None = None,
    quality: int | None = None,
    family: str | None = None,
    jobs: int = 1,
    threads: int | None = None,
    limit: int | None = None,
    channels_last: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Evaluate each model on the images of ``data``; results JSON + CSV per model in ``out_dir``.

    With ``jobs > 1`` the models run in that many worker processes (spawn),
    each with ``threads`` torch threads (default: the cores shared out).
    Returns one summary per model, in the order given.
    """
    from tqdm import tqdm

    if jobs < 1:
        raise DeepCompError("--jobs must be at least 1")
    images = [str(p) for p in image_list(data, limit)]
    paths = [Path(p) for p in model_paths]
    for p in paths:
        if not p.is_file():
            raise DeepCompError(f"model file not found: {p}")
    stems = output_stems(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = min(jobs, len(paths))
    threads = threads or default_threads(jobs)
    tasks = [dict(path=str(p), stem=s, images=images, data=str(data), out_dir=str(out_dir), arch=arch, quality=quality, family=family,
                  channels_last=channels_last)
             for p, s in zip(paths, stems)]
    if jobs == 1:
        torch.set_num_threads(threads)
        out = []
        bar = tqdm(tasks, desc="models", unit="model", disable=not progress or len(tasks) < 2, dynamic_ncols=True)
        for t in bar:
            out.append(run_one(**t, progress=progress))
        return out

    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor, wait, FIRST_COMPLETED

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    results: dict[int, dict] = {}
    bar = tqdm(total=len(tasks) * len(images), desc=f"{len(tasks)} models x {len(images)} images, {jobs} jobs", unit="img", disable=not progress, dynamic_ncols=True)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads, q)) as pool:
        futures = {pool.submit(_worker_run, t): i for i, t in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        q.get_nowait()
                    except queue_mod.Empty:
                        break
                    bar.update(1)
                for f in done:
                    results[futures[f]] = f.result()  # re-raises a worker's DeepCompError
            while True:  # the last images' messages
                try:
                    q.get(timeout=0.05)
                except queue_mod.Empty:
                    break
                bar.update(1)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()
    return [results[i] for i in range(len(tasks))]
