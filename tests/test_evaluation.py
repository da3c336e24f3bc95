"""Evaluation with real bitstreams: agreement with CompressAI's eval_model, files, errors."""

import os
import glob
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcomp import cli, evaluation, zoo
from deepcomp.checkpoints import sha256_file
from deepcomp.errors import DeepCompError
from deepcomp.evaluation import (
    evaluate_model, open_model, pad_image, psnr_8bit, read_results, results_csv, results_document, ssim_metrics,
    string_bytes, summarize, write_results,
)
from deepcomp.images import KODAK_HINT

ARCH = "bmshj2018-factorized"
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def _kodak(n):
    files = sorted(KODAK.glob("kodim*.png"))[:n] if KODAK.is_dir() else []
    if len(files) < n:
        pytest.skip(f"Kodak not found at {KODAK}")
    return files


def random_model(quality=3, seed=0, latent_gain=50.0):
    """A seeded random-initialised factorized model whose latents depend on the image.

    At initialisation the analysis transform's output is ~0.04, so every latent
    quantises to 0 and the bitstream is the same for every image; scaling the
    last analysis layer spreads the latents over several integers.
    """
    torch.manual_seed(seed)
    model = zoo.build(ARCH, quality)
    with torch.no_grad():
        model.g_a[-1].weight.mul_(latent_gain)
        model.g_a[-1].bias.mul_(latent_gain)
    model.update(force=True)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pth.tar"
    torch.save({"state_dict": random_model().state_dict()}, path)
    return path


def _small_png(path, h, w, seed=0, mode="png"):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 3) % 256], -1)
    img = np.clip(base + rng.integers(-12, 13, size=(h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, **({"quality": 90} if mode == "jpeg" else {}))
    return path


# ---------------------------------------------------------------- agreement with CompressAI
def test_agrees_with_compressai_eval_model(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for f in _kodak(2):
        shutil.copy(f, images / f.name)
    cai_out = tmp_path / "cai"
    proc = subprocess.run(
        [sys.executable, "-m", "compressai.utils.eval_model", "checkpoint", str(images), "-a", ARCH, "-p", str(checkpoint),
         "--per-image", "-d", str(cai_out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = {}
    for f in sorted(images.iterdir()):
        (jf,) = glob.glob(str(cai_out / f"{f.stem}-*.json"))
        ref[f.name] = json.loads(Path(jf).read_text())["results"]
    ref_mean = json.loads(proc.stdout)["results"]

    model, info = open_model(checkpoint, ARCH, 3)
    assert info["kind"] == "checkpoint" and info["arch"] == ARCH and info["quality"] == 3
    paths = sorted(images.iterdir())
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as eval_model
    try:
        exact = evaluate_model(model, paths, progress=False, channels_last=False)
        fast = evaluate_model(model, paths, progress=False)  # the default, channels_last
    finally:
        torch.set_num_threads(old)
    assert len({r["bytes"] for r in exact}) == 2, "the test model should give image-dependent bitstreams"
    for r in exact:  # PyTorch's default layout: the same bitstreams as eval_model
        c = ref[r["image"]]
        assert r["bpp"] == c["bpp"]
        assert abs(r["psnr"] - c["psnr-rgb"]) < 1e-4
        assert abs(r["ms_ssim"] - c["ms-ssim-rgb"]) < 1e-5
    for r in fast:  # channels_last: last-bit float differences only
        c = ref[r["image"]]
        assert abs(r["bpp"] - c["bpp"]) <= 1e-3 * c["bpp"]
        assert abs(r["psnr"] - c["psnr-rgb"]) < 1e-2
        assert abs(r["ms_ssim"] - c["ms-ssim-rgb"]) < 1e-4
    mean = summarize(exact)
    assert mean["bpp"] == pytest.approx(ref_mean["bpp"][0], rel=1e-12)
    assert mean["psnr"] == pytest.approx(ref_mean["psnr-rgb"][0], abs=1e-4)
    assert mean["ms_ssim"] == pytest.approx(ref_mean["ms-ssim-rgb"][0], abs=1e-5)
    assert all(r["encode_s"] > 0 and r["decode_s"] > 0 for r in exact)


# ---------------------------------------------------------------- metrics
def test_padding_is_compressai_s():
    from compressai.ops import compute_padding

    for h, w in [(512, 768), (65, 64), (1, 1), (100, 257)]:
        x = torch.rand(1, 3, h, w)
        xp, unpad = pad_image(x)
        assert xp.shape[-2] % 64 == 0 and xp.shape[-1] % 64 == 0
        assert xp.shape[-2] - h < 64 and xp.shape[-1] - w < 64
        assert unpad == compute_padding(h, w, min_div=64)[1]
        assert torch.equal(torch.nn.functional.pad(xp, unpad), x)


def test_psnr_facts():
    a = torch.randint(0, 255, (1, 3, 8, 8)).float()
    assert psnr_8bit(a, a) == math.inf
    assert psnr_8bit(a, a + 1) == pytest.approx(20 * math.log10(255))  # MSE 1
    assert psnr_8bit(a, a + 2) == pytest.approx(20 * math.log10(255) - 10 * math.log10(4))


def test_ssim_metrics_equal_pytorch_msssim():
    from pytorch_msssim import ms_ssim as ms_ssim_mt
    from pytorch_msssim import ssim as ssim_mt

    def ssim(*a, **k):  # single-threaded: pytorch-msssim is slow multi-threaded on a busy machine
        with evaluation.torch_threads(1):
            return ssim_mt(*a, **k)

    def ms_ssim(*a, **k):
        with evaluation.torch_threads(1):
            return ms_ssim_mt(*a, **k)

    g = torch.Generator().manual_seed(1)
    for h, w in [(200, 240), (171, 333)]:
        a = torch.randint(0, 256, (1, 3, h, w), generator=g).float()
        b = (a + torch.randint(-30, 31, a.shape, generator=g)).clamp(0, 255)
        s, m = ssim_metrics(a, b)
        assert s == pytest.approx(float(ssim(a / 255, b / 255, data_range=1.0)), abs=1e-7)
        assert m == pytest.approx(float(ms_ssim(a / 255, b / 255, data_range=1.0)), abs=1e-7)
        # data range 1 on [0,1] is data range 255 on 0..255
        assert m == pytest.approx(float(ms_ssim(a, b, data_range=255)), abs=1e-5)
    a = torch.randint(0, 256, (1, 3, 100, 120), generator=g).float()
    s, m = ssim_metrics(a, a)
    assert s == pytest.approx(1.0) and math.isnan(m)  # too small for MS-SSIM's 4 downsamplings


def test_string_bytes_and_summary():
    assert string_bytes([[b"abc"], [b"", b"de"]]) == 5
    rows = [{"bytes": 10, "bpp": 1.0, "psnr": 30.0, "ssim": 0.9, "ms_ssim": math.nan, "encode_s": 1.0, "decode_s": 2.0},
            {"bytes": 30, "bpp": 3.0, "psnr": 40.0, "ssim": 0.7, "ms_ssim": 0.5, "encode_s": 3.0, "decode_s": 4.0}]
    s = summarize(rows)
    assert s["bpp"] == 2.0 and s["psnr"] == 35.0 and s["ssim"] == pytest.approx(0.8)
    assert s["ms_ssim"] == 0.5 and s["images"] == 2 and s["bytes"] == 40 and s["seconds"] == 10.0
    with pytest.raises(DeepCompError):
        summarize([])


# ---------------------------------------------------------------- files and folders
def test_any_folder_png_and_jpeg_through_the_cli(checkpoint, tmp_path, capsys):
    data = tmp_path / "photos"
    data.mkdir()
    _small_png(data / "a.png", 200, 180, seed=1)
    _small_png(data / "b.jpg", 70, 100, seed=2, mode="jpeg")
    (data / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = cli.main(["evaluate", str(checkpoint), "--arch", ARCH, "--quality", "3", "--data", str(data), "-o", str(out), "--quiet"])
    assert rc == 0
    doc = read_results(out / "model.json")
    assert [r["image"] for r in doc["per_image"]] == ["a.png", "b.jpg"]
    a, b = doc["per_image"]
    assert (a["width"], a["height"], b["width"], b["height"]) == (180, 200, 100, 70)
    assert b["ms_ssim"] is None and a["ms_ssim"] is not None  # 70 px is too small for MS-SSIM
    for r in (a, b):
        assert r["bpp"] == pytest.approx(r["bytes"] * 8 / (r["width"] * r["height"]))
        assert r["bytes"] > 0 and math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1
    assert doc["model"]["params"] == sum(p.numel() for p in zoo.build(ARCH, 3).parameters())
    assert doc["model"]["file_bytes"] == checkpoint.stat().st_size
    assert 0 < doc["model"]["density"] <= 1
    assert doc["mean"]["bpp"] == pytest.approx((a["bpp"] + b["bpp"]) / 2)
    lines = (out / "model.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[-1].split(",")[10] == "mean"
    assert "model.json" in capsys.readouterr().out


def test_results_files_round_trip(tmp_path):
    per_image = [{"image": "x.png", "width": 64, "height": 64, "bytes": 100, "bpp": 100 * 8 / 4096, "psnr": math.inf,
                  "ssim": 1.0, "ms_ssim": math.nan, "encode_s": 0.1, "decode_s": 0.2}]
    info = {"path": "m.pth", "name": "m.pth", "kind": "checkpoint", "arch": ARCH, "quality": 2, "file_bytes": 10,
            "fp32_bytes": 40, "params": 10, "nonzero_params": 5, "density": 0.5}
    doc = results_document(info, per_image, "folder")
    assert doc["model"]["family"] == "baseline"
    jpath, cpath = write_results(doc, tmp_path / "new" / "dir", "m")
    back = read_results(jpath)
    assert back["per_image"][0]["psnr"] is None and back["per_image"][0]["ms_ssim"] is None  # strict JSON
    assert back["mean"]["bpp"] == per_image[0]["bpp"]
    assert cpath.read_text() == results_csv(doc)
    assert not list((tmp_path / "new" / "dir").glob(".*tmp"))
    with pytest.raises(DeepCompError, match="not a deepcomp evaluation"):
        (tmp_path / "other.json").write_text("{}")
        read_results(tmp_path / "other.json")


def test_results_are_reused_only_for_the_same_file_on_the_same_images(tmp_path):
    model = tmp_path / "m.pth.tar"
    torch.save({"state_dict": random_model(quality=2).state_dict(), "config": {"arch": ARCH, "quality": 2}}, model)
    _, info = open_model(model)
    assert info["sha256"] == sha256_file(model)
    per_image = [{"image": "x.png", "width": 64, "height": 64, "bytes": 100, "bpp": 0.2, "psnr": 30.0,
                  "ssim": 0.9, "ms_ssim": 0.95, "encode_s": 0.1, "decode_s": 0.2}]
    jpath, _ = write_results(results_document(info, per_image, "folder"), tmp_path, "m")
    assert evaluation.reusable_results(jpath, model, "folder", 1)["mean"]["psnr"] == 30.0
    assert evaluation.reusable_results(jpath, model, "folder", 2) is None      # other images
    assert evaluation.reusable_results(jpath, model, "other", 1) is None       # another folder
    assert evaluation.reusable_results(tmp_path / "none.json", model, "folder", 1) is None
    assert evaluation.reusable_results(jpath, tmp_path / "gone.pth.tar", "folder", 1) is None  # no file to compare with
    # a retrained model written over the same path (same name, maybe the same size) is evaluated again
    torch.save({"state_dict": random_model(quality=2, seed=1).state_dict(), "config": {"arch": ARCH, "quality": 2}}, model)
    assert evaluation.reusable_results(jpath, model, "folder", 1) is None


def test_output_stems_are_distinct():
    stems = evaluation.output_stems([Path("a/m.pth.tar"), Path("b/m.pth.tar"), Path("m.dcmp"), Path("x.pth")])
    assert stems == ["m", "m-2", "m.dcmp", "x"]


def test_checkpoint_recording_arch_and_quality(tmp_path):
    path = tmp_path / "trained.pth.tar"
    torch.save({"state_dict": random_model(quality=2).state_dict(), "config": {"arch": ARCH, "quality": 2}}, path)
    _, info = open_model(path)  # no --arch/--quality needed
    assert (info["arch"], info["quality"]) == (ARCH, 2)
    with pytest.raises(DeepCompError, match="quality"):
        open_model(path, ARCH, 4)


def test_deepcomp_file(checkpoint, tmp_path):
    model_file = pytest.importorskip("deepcomp.model_file")
    if not hasattr(model_file, "compress_checkpoint"):
        pytest.skip("deepcomp.model_file cannot write files yet")
    from deepcomp.policy import Policy

    out = tmp_path / "m.dcmp"
    model_file.compress_checkpoint(checkpoint, out, Policy().with_weight_rule(prune=0.5, bits=6), ARCH, 3)
    model, info = open_model(out)
    _, base = open_model(checkpoint, ARCH, 3)
    assert info["kind"] == "deepcomp" and (info["arch"], info["quality"]) == (ARCH, 3)
    assert info["file_bytes"] == out.stat().st_size < base["file_bytes"]
    assert info["params"] == base["params"] and info["fp32_bytes"] == base["fp32_bytes"]
    assert info["density"] < 0.75 * base["density"]
    assert not model.training
    img = _small_png(tmp_path / "p.png", 64, 96)
    (r,) = evaluate_model(model, [img], progress=False)
    assert r["bytes"] > 0 and math.isfinite(r["psnr"])
    with pytest.raises(DeepCompError, match="architecture"):
        open_model(out, "bmshj2018-hyperprior", None)


# ---------------------------------------------------------------- errors: one line, no traceback, exit 2
def _error_line(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("deepcomp: error: "), err
    return lines[0]


def test_missing_empty_and_unreadable_folders(checkpoint, tmp_path, capsys):
    assert "https://" in KODAK_HINT  # the messages say where Kodak can be downloaded
    base = ["evaluate", str(checkpoint), "--arch", ARCH, "--quality", "3", "-o", str(tmp_path / "out"), "--quiet", "--data"]
    line = _error_line(capsys, base + [str(tmp_path / "nowhere")])
    assert "not found" in line and KODAK_HINT in line
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    line = _error_line(capsys, base + [str(empty)])
    assert "no images" in line and KODAK_HINT in line
    bad = tmp_path / "bad"
    bad.mkdir()
    _small_png(bad / "good.png", 32, 32)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png\n" * 3)
    line = _error_line(capsys, base + [str(bad)])
    assert "broken.png" in line and KODAK_HINT in line
    assert not (tmp_path / "out" / "model.json").exists()


def test_truncated_image_is_a_one_line_error(checkpoint, tmp_path, capsys):
    data = tmp_path / "trunc"
    data.mkdir()
    src = _small_png(tmp_path / "full.png", 128, 128)
    (data / "cut.png").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    line = _error_line(capsys, ["evaluate", str(checkpoint), "--arch", ARCH, "--quality", "3", "--data", str(data),
                                "-o", str(tmp_path / "out"), "--quiet"])
    assert "cut.png" in line and KODAK_HINT in line


def test_model_errors(checkpoint, tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    _small_png(data / "x.png", 64, 64)
    common = ["--data", str(data), "-o", str(tmp_path / "out"), "--quiet"]
    line = _error_line(capsys, ["evaluate", str(checkpoint), "--arch", "bmshj2018-hyperprior", "--quality", "3"] + common)
    assert "does not fit" in line  # zoo's message for a checkpoint of another architecture
    line = _error_line(capsys, ["evaluate", str(checkpoint), "--arch", ARCH, "--quality", "7"] + common)
    assert "does not fit" in line  # quality 7 has wider layers
    line = _error_line(capsys, ["evaluate", str(checkpoint)] + common)
    assert "--arch" in line and "--quality" in line
    line = _error_line(capsys, ["evaluate", str(checkpoint), "--arch", "no-such-net", "--quality", "3"] + common)
    assert "unknown architecture" in line
    line = _error_line(capsys, ["evaluate", str(tmp_path / "missing.pth"), "--arch", ARCH, "--quality", "3"] + common)
    assert "not found" in line
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    line = _error_line(capsys, ["evaluate", str(garbage), "--arch", ARCH, "--quality", "3"] + common)
    assert "garbage.pth" in line


def test_parallel_jobs(tmp_path):
    """--jobs 2: models in spawned workers give the in-process numbers."""
    data = tmp_path / "d"
    data.mkdir()
    _small_png(data / "x.png", 64, 80)
    paths = []
    for q, seed in ((1, 3), (2, 4)):
        p = tmp_path / f"q{q}.pth.tar"
        torch.save({"state_dict": random_model(quality=q, seed=seed).state_dict(), "config": {"arch": ARCH, "quality": q}}, p)
        paths.append(p)
    done = evaluation.evaluate_paths(paths, data, tmp_path / "par", jobs=2, progress=False)
    assert [Path(d["json"]).name for d in done] == ["q1.json", "q2.json"]
    assert [d["info"]["quality"] for d in done] == [1, 2]
    for d, p in zip(done, paths):
        model, _ = open_model(p)
        (r,) = evaluate_model(model, [data / "x.png"], progress=False)
        (w,) = read_results(d["json"])["per_image"]
        assert w["bytes"] == r["bytes"] and w["psnr"] == pytest.approx(r["psnr"], abs=1e-3)


@pytest.mark.slow
def test_parallel_worker_error_is_one_deepcomp_error(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    _small_png(data / "x.png", 64, 64)
    bare = tmp_path / "bare.pth.tar"
    torch.save({"state_dict": random_model(quality=1).state_dict()}, bare)
    with pytest.raises(DeepCompError, match="does not fit"):
        evaluation.evaluate_paths([bare, bare], data, tmp_path / "bad", arch="bmshj2018-hyperprior", quality=1, jobs=2, progress=False)


def test_busy_cores_sees_a_spinning_thread_and_forgets_it():
    """The thread default reads the cores busy now, not a 1-minute average."""
    import threading

    from deepcomp.evaluation import busy_cores, default_threads

    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        during = busy_cores(0.5)
    finally:
        stop.set()
        t.join()
    cores = os.cpu_count() or 1
    assert 0.6 <= during <= cores + 0.01
    assert 1 <= default_threads() <= cores
