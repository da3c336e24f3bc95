"""Other weight formats (deepcomp.weight_formats): round trips, sizes, runnable models."""

import gzip

import numpy as np
import pytest
import torch

from deepcomp import weight_formats as wf
from deepcomp import zoo
from deepcomp.errors import DeepCompError

ARCH, Q = "bmshj2018-factorized", 3


@pytest.fixture(scope="module")
def ref(random_checkpoint):
    return wf.reference_state_dict(random_checkpoint, ARCH, Q)


@pytest.fixture(scope="module")
def fp32_file(ref, tmp_path_factory):
    return wf.write(ref, "fp32", tmp_path_factory.mktemp("fp32") / "m.pth.tar", ARCH, Q)


def test_reference_is_the_stored_tensors_in_float32(ref, random_checkpoint):
    original = torch.load(random_checkpoint, weights_only=True)["state_dict"]
    assert set(ref) == {k for k in original if not zoo.is_derived(k)}
    assert all(v.dtype == torch.float32 for v in ref.values())
    assert torch.equal(ref["g_s.6.weight"], original["g_s.6.weight"])


@pytest.mark.parametrize("fmt", ["fp32", "gzip", "xz", "zstd"])
def test_lossless_formats_give_back_every_tensor_bit_for_bit(ref, fp32_file, fmt, tmp_path):
    if fmt == "zstd" and not wf.zstd_available()[0]:
        pytest.skip(wf.zstd_available()[1])
    path = tmp_path / f"m{wf.SUFFIXES[fmt]}"
    f = wf.write(ref, fmt, path, ARCH, Q, fp32_bytes=fp32_file.path.read_bytes())
    assert f.lossless and f.file_bytes == path.stat().st_size
    assert wf.detect_format(path) == ("torch" if fmt == "fp32" else fmt)
    assert wf.same_tensors(wf.read(path), ref)
    if fmt != "fp32":
        assert f.file_bytes < fp32_file.file_bytes
        assert f.label == f"fp32+{fmt}"


def test_fp16_gives_back_the_fp16_values_exactly(ref, fp32_file, tmp_path):
    f = wf.write(ref, "fp16", tmp_path / "m.fp16.pth.tar", ARCH, Q)
    back = wf.read(f.path)
    assert all(back[k].dtype == torch.float32 for k in back)
    assert wf.same_tensors(back, {k: v.half().float() for k, v in ref.items()})
    assert not f.lossless
    assert f.file_bytes < 0.51 * fp32_file.file_bytes


def test_int8_is_uniform_per_output_channel_on_every_conv(ref, tmp_path):
    f = wf.write(ref, "int8", tmp_path / "m.int8.dcmp", ARCH, Q)
    assert wf.detect_format(f.path) == "deepcomp"
    back = wf.read(f.path)
    axes = zoo.output_channel_axes(zoo.build(ARCH, Q, init_weights=False))
    assert axes["g_s.0.weight"] == 1  # transposed conv: output channels on axis 1
    plain = 0
    for k, v in ref.items():
        if k in axes:
            w = v.movedim(axes[k], 0).reshape(v.shape[axes[k]], -1).double()
            b = back[k].movedim(axes[k], 0).reshape(v.shape[axes[k]], -1).double()
            step = w.abs().amax(dim=1, keepdim=True) / 127
            assert ((w - b).abs() <= step / 2 + 1e-7).all(), k
            levels = torch.round(b / step)
            assert torch.allclose(levels * step, b, atol=1e-6) and levels.abs().max() <= 127, k
            plain += v.numel() + 4 * v.shape[axes[k]]
        else:
            assert torch.equal(back[k], v), k  # biases, GDN, entropy model: raw fp32
            plain += 4 * v.numel()
    assert f.extra["plain_bytes"] == plain


def test_lossy_formats_give_runnable_models(ref, tmp_path):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for fmt in ("fp16", "int8"):
        f = wf.write(ref, fmt, tmp_path / f"m{wf.SUFFIXES[fmt]}", ARCH, Q)
        model, state, seconds = wf.load_model(f.path, ARCH, Q)
        assert seconds >= 0 and set(state) == set(ref)
        with torch.no_grad():
            enc = model.compress(x)
            assert model.decompress(enc["strings"], enc["shape"])["x_hat"].shape == x.shape


def test_nnc_round_trip(ref, tmp_path):
    ok, why = wf.nnc_available()
    if not ok:
        pytest.skip(why)
    coarse = wf.write(ref, "nnc", tmp_path / "c.nnc", ARCH, Q, qp=-32)
    fine = wf.write(ref, "nnc", tmp_path / "f.nnc", ARCH, Q, qp=-40)
    assert coarse.label == "nnc-qp-32" and coarse.extra["qp"] == -32
    assert coarse.file_bytes < fine.file_bytes < 0.5 * 4 * sum(v.numel() for v in ref.values())
    assert wf.detect_format(fine.path) == "nnc"
    back = wf.read(fine.path)
    assert list(back) == list(ref) and all(back[k].shape == ref[k].shape for k in ref)
    step = 2.0 ** (-40 / 4)
    for k, v in ref.items():
        err = float((back[k] - v).abs().max())
        if "entropy_bottleneck" in k or v.dim() < 2:  # NNC's fine non-weight step (qp -75: ~2.4e-6)
            assert err <= 1e-5 + 1e-6 * float(v.abs().max()), k
        else:
            assert err <= 2 * step, k
    model, _, _ = wf.load_model(fine.path, ARCH, Q)
    assert not model.training


def test_nnc_missing_is_one_line(monkeypatch):
    def broken():
        raise ImportError("No module named 'nncodec'")

    monkeypatch.setattr(wf, "_nnc", broken)
    ok, why = wf.nnc_available()
    assert not ok and "\n" not in why and why.startswith("NNC skipped")
    formats, notes = wf.available_formats()
    assert "nnc" not in formats and any(n.startswith("NNC skipped") for n in notes)
    with pytest.raises(DeepCompError, match="NNC skipped"):
        wf.nnc_encode({"w": torch.zeros(2, 2)}, -32)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(DeepCompError, match="not found"):
        wf.read(tmp_path / "missing.pth.tar")
    (tmp_path / "junk.bin").write_bytes(b"hello world")
    with pytest.raises(DeepCompError, match="unknown model file format"):
        wf.read(tmp_path / "junk.bin")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(b"x" * 1000)[:20])
    with pytest.raises(DeepCompError, match="cannot decompress"):
        wf.read(tmp_path / "cut.gz")
    (tmp_path / "notorch.gz").write_bytes(gzip.compress(b"not a checkpoint"))
    with pytest.raises(DeepCompError, match="notorch.gz"):
        wf.read(tmp_path / "notorch.gz")
    with pytest.raises(DeepCompError, match="unknown weight format"):
        wf.write({"w": torch.zeros(1)}, "bz2", tmp_path / "x", ARCH, Q)
    with pytest.raises(DeepCompError, match="qp"):
        wf.write({"w": torch.zeros(1)}, "nnc", tmp_path / "x.nnc", ARCH, Q)


def test_reference_refuses_the_wrong_architecture(random_checkpoint):
    with pytest.raises(DeepCompError, match="does not fit"):
        wf.reference_state_dict(random_checkpoint, "bmshj2018-factorized", 6)


def test_same_tensors():
    a = {"w": torch.ones(2), "b": torch.zeros(1)}
    assert wf.same_tensors(a, {"w": torch.ones(2), "b": torch.zeros(1)})
    assert not wf.same_tensors(a, {"b": torch.zeros(1), "w": torch.ones(2)})  # order matters
    assert not wf.same_tensors(a, {"w": torch.ones(2, dtype=torch.float64), "b": torch.zeros(1)})
    assert not wf.same_tensors(a, {"w": torch.tensor([1.0, np.nextafter(1, 2)]), "b": torch.zeros(1)})
