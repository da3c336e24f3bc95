"""Latent storage (deepcomp.latent_storage): LZMA over the quantized latents against the range coder."""

import math

import numpy as np
import pytest
import torch

from deepcomp import latent_storage as ls
from deepcomp import zoo
from deepcomp.checkpoints import read_state_dict
from deepcomp.errors import DeepCompError
from deepcomp.images import read_rgb, to_tensor

ARCH, Q = "bmshj2018-factorized", 3


@pytest.fixture(scope="module")
def model(random_checkpoint):
    return zoo.model_from_state_dict(ARCH, Q, read_state_dict(random_checkpoint))


@pytest.fixture(scope="module")
def lively(random_checkpoint):
    """The random model with larger latents and off-centre medians: symbols far from 0, some
    outside the CDF tables (the range coder's escape path), so the comparison is not trivial."""
    state = read_state_dict(random_checkpoint)
    state["g_a.6.weight"] = state["g_a.6.weight"] * 1000
    q = state["entropy_bottleneck.quantiles"].clone()
    q[:, 0, 1] = torch.empty(q.shape[0]).uniform_(-3, 3, generator=torch.Generator().manual_seed(1))
    state["entropy_bottleneck.quantiles"] = q
    return zoo.model_from_state_dict(ARCH, Q, state)


@pytest.fixture(scope="module")
def kodim23(kodak_two):
    return to_tensor(read_rgb(kodak_two / "kodim23.png"))  # 768x512: a multiple of 64


def _range_coder(model, x):
    with torch.no_grad():
        enc = model.compress(x)
        return enc, model.decompress(enc["strings"], enc["shape"])["x_hat"]


def test_lzma_latents_decode_to_the_range_coders_y_hat_and_image(lively, kodim23):
    enc, x_rc = _range_coder(lively, kodim23)
    y_rc = lively.entropy_bottleneck.decompress(enc["strings"][0], enc["shape"])
    data = ls.lzma_compress(lively, kodim23)
    symbols = ls.unpack_latents(data)
    assert list(symbols) == ["y"] and symbols["y"].shape == tuple(y_rc.shape)
    assert np.abs(symbols["y"]).max() > 127  # far outside the CDF tables, and stored as int16
    assert data[8] == 2  # dtype width of y in the header
    y_lz = ls.latents_to_y_hat(lively, symbols)
    assert torch.equal(y_lz, y_rc)
    assert torch.equal(ls.lzma_decompress(lively, data), x_rc)


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_hyperprior_models_match_the_range_coder(arch, kodim23):
    torch.manual_seed(0)
    m = zoo.build(arch, 1)
    m.update(force=True)
    m.eval()
    x = kodim23[..., :128, :192].contiguous()
    enc, x_rc = _range_coder(m, x)
    data = ls.lzma_compress(m, x)
    assert set(ls.unpack_latents(data)) == ({"z", "y"} if arch == "mbt2018-mean" else {"y"})
    assert torch.equal(ls.lzma_decompress(m, data), x_rc)


def test_autoregressive_models_are_refused():
    m = zoo.build("mbt2018", 1)
    assert not ls.supports(m)
    with pytest.raises(DeepCompError, match="autoregressive"):
        ls.latent_symbols(m, torch.zeros(1, 3, 64, 64))
    assert not ls.supports(torch.nn.Conv2d(3, 3, 1))


def test_payload_round_trip_picks_the_narrowest_integers():
    rng = np.random.default_rng(0)
    arrays = {"z": rng.integers(-100, 100, (1, 8, 4, 6)).astype(np.int32),
              "y": rng.integers(-30000, 30000, (1, 16, 8, 12)).astype(np.int64),
              "w": np.array([[-(2**31), 2**31 - 1]], dtype=np.int64)}
    data = ls.pack_latents(arrays)
    back = ls.unpack_latents(data)
    assert list(back) == ["z", "y", "w"]
    for k in arrays:
        assert back[k].dtype == np.int32 and np.array_equal(back[k], arrays[k])
    # header: magic, version, count, then name, width, ndim, dims of each
    assert data[:4] == ls.MAGIC and data[6:10] == b"\x01z\x01\x04"
    zeros = ls.pack_latents({"y": np.zeros((1, 192, 8, 12), dtype=np.int32)})
    assert len(zeros) < 100  # a 26-byte header and next to nothing for 18k zero symbols
    with pytest.raises(DeepCompError, match="int32"):
        ls.pack_latents({"y": np.array([2**40])})
    with pytest.raises(DeepCompError, match="not an integer"):
        ls.pack_latents({"y": np.zeros(3, dtype=np.float32)})


def test_corrupt_payloads_are_clear_errors():
    good = ls.pack_latents({"y": np.arange(100, dtype=np.int32).reshape(1, 4, 5, 5)})
    for bad in (b"XXXX" + good[4:], good[:12], good[:-3], good[:4] + b"\x09" + good[5:]):
        with pytest.raises(DeepCompError, match="corrupt"):
            ls.unpack_latents(bad)


def test_tar_xz_round_trip(kodak_two):
    paths = sorted(kodak_two.glob("*.png"))
    back = ls.untar_xz(ls.tar_xz(paths))
    assert list(back) == [p.name for p in paths]
    assert all(back[p.name] == p.read_bytes() for p in paths)
    r = ls.png_tar_xz(paths)
    assert r["images"] == 2 and r["pixels"] == 2 * 768 * 512 and math.isinf(r["psnr"])
    assert r["bpp"] == pytest.approx(r["bytes"] * 8 / r["pixels"])


def test_compare_on_two_kodak_images(model, kodak_two):
    paths = sorted(kodak_two.glob("*.png"))
    res = ls.compare_latent_storage(model, paths, progress=False)
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == list(ls.METHODS)
    rc, lz, png = rows["range coder"], rows["lzma"], rows["png tar+xz"]
    assert rc["images"] == lz["images"] == png["images"] == 2
    assert lz["psnr"] == rc["psnr"] and lz["ms_ssim"] == rc["ms_ssim"]  # the same reconstructions
    assert lz["bytes"] > 0 and rc["bytes"] > 0 and png["bytes"] > 0
    for r in rows.values():
        assert r["total_s"] == pytest.approx(r["compress_s"] + r["decompress_s"]) and r["total_s"] > 0
        assert set(ls.FIELDS) <= set(r)
    assert [p["image"] for p in res["per_image"]] == [p.name for p in paths]
