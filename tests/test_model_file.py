"""End to end: checkpoint -> deepcomp file -> CompressAI model -> real bitstreams."""

import pytest
import torch

from deepcomp import model_file, zoo
from deepcomp.errors import DeepCompError
from deepcomp.images import read_rgb, to_tensor
from deepcomp.policy import Policy


@pytest.fixture(scope="module")
def compressed(random_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("dcmp") / "m.dcmp"
    size = model_file.compress_checkpoint(random_checkpoint, out, Policy().with_weight_rule(prune=0.7, bits=5), "bmshj2018-factorized", 3)
    assert size == out.stat().st_size
    return out


def test_the_header_records_the_source_checkpoint(compressed, random_checkpoint):
    from deepcomp.checkpoints import sha256_file

    ref = model_file.file_info(compressed)["reference"]
    assert ref["checkpoint_sha256"] == sha256_file(random_checkpoint)
    assert ref["checkpoint_bytes"] == random_checkpoint.stat().st_size


def test_load_gives_pruned_shared_weights_without_derived_buffers(compressed, random_checkpoint):
    sd = model_file.load(compressed)
    original = torch.load(random_checkpoint, weights_only=True)["state_dict"]
    assert not any(zoo.is_derived(k) for k in sd)
    assert set(sd) == {k for k in original if not zoo.is_derived(k)}
    w = sd["g_a.2.weight"]
    assert abs((w == 0).float().mean().item() - 0.7) < 1e-3
    assert len(torch.unique(w[w != 0])) <= 32
    assert torch.equal(sd["g_a.0.bias"], original["g_a.0.bias"])


def test_constant_buffers_come_from_the_architecture_not_the_file(random_checkpoint, tmp_path):
    # fp16 raw storage would turn the likelihood bound (1e-9) and GDN's pedestal (2**-36) into 0,
    # and a likelihood of 0 makes the training loss infinite: constants are never stored
    out = tmp_path / "m.dcmp"
    model_file.compress_checkpoint(random_checkpoint, out, Policy().with_weight_rule(prune=0.5, bits=5).with_raw_storage("fp16"),
                                   "bmshj2018-factorized", 3)
    stored = model_file.load_arrays(out)
    assert not any(k.endswith((".bound", ".pedestal", ".target")) for k in stored)
    assert "g_a.1.beta" in stored and "entropy_bottleneck.quantiles" in stored
    model = model_file.load_model(out)
    assert model.entropy_bottleneck.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
    assert model.g_a[1].beta_reparam.pedestal.item() == pytest.approx(2.0 ** -36)
    # a file or checkpoint that did store them (zeroed) still gets the architecture's values
    sd = torch.load(random_checkpoint, weights_only=True)["state_dict"]
    sd["entropy_bottleneck.likelihood_lower_bound.bound"] = torch.zeros(1)
    sd["g_a.1.beta_reparam.pedestal"] = torch.zeros(1)
    net = zoo.assign_weights(zoo.build("bmshj2018-factorized", 3), sd)
    assert net.entropy_bottleneck.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
    assert net.g_a[1].beta_reparam.pedestal.item() == pytest.approx(2.0 ** -36)


def test_rebuilt_model_codes_a_real_kodak_image(compressed, kodak_two):
    model = model_file.load_model(compressed)
    assert not model.training
    x = to_tensor(read_rgb(kodak_two / "kodim23.png"))
    x = torch.nn.functional.pad(x, (0, 0, 0, 0))  # 768x512: already a multiple of 64
    with torch.no_grad():
        enc = model.compress(x)
        dec = model.decompress(enc["strings"], enc["shape"])
    assert dec["x_hat"].shape == x.shape
    assert sum(len(s[0]) for s in enc["strings"]) > 0
    # decoding is deterministic: the same file gives the same model and bitstream
    again = model_file.load_model(compressed)
    with torch.no_grad():
        assert again.compress(x)["strings"] == enc["strings"]


def test_wrong_architecture_is_a_clear_error(random_checkpoint, tmp_path):
    with pytest.raises(DeepCompError, match="does not fit"):
        model_file.compress_checkpoint(random_checkpoint, tmp_path / "x.dcmp", Policy(), "bmshj2018-hyperprior", 3)
    with pytest.raises(DeepCompError, match="does not fit"):
        model_file.compress_checkpoint(random_checkpoint, tmp_path / "x.dcmp", Policy(), "bmshj2018-factorized", 6)
    assert not (tmp_path / "x.dcmp").exists()


def test_plain_state_dict_without_architecture(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 40))
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # DataParallel prefix
    model_file.compress_checkpoint(path, tmp_path / "plain.dcmp", Policy().with_weight_rule(prune=0.5, bits=4))
    sd = model_file.load(tmp_path / "plain.dcmp")
    assert list(sd) == list(net.state_dict())
    assert sd["2.weight"].shape == (40, 8) and (sd["2.weight"] == 0).sum() == 160
    assert sd["1.num_batches_tracked"].dtype == torch.int64
    net.load_state_dict(sd)


def test_official_style_checkpoint_works_unchanged(random_checkpoint, tmp_path):
    """CompressAI's published checkpoints: a bare state_dict with older key names."""
    sd = torch.load(random_checkpoint, weights_only=True)["state_dict"]
    old = {}
    for k, v in sd.items():
        for new, legacy in (("matrices", "_matrices"), ("biases", "_biases"), ("factors", "_factors")):
            k = k.replace(f"entropy_bottleneck.{new}.", f"entropy_bottleneck.{legacy}.")
        old[k] = v
    assert "entropy_bottleneck._matrices.0" in old
    path = tmp_path / "official.pth.tar"
    torch.save(old, path)
    model_file.compress_checkpoint(path, tmp_path / "o.dcmp", Policy(), "bmshj2018-factorized", 3)
    model = model_file.load_model(tmp_path / "o.dcmp")
    assert torch.equal(model.entropy_bottleneck.matrices[0], sd["entropy_bottleneck.matrices.0"])


def test_int8_per_channel_on_transposed_convs(random_checkpoint, tmp_path):
    """The int8 baseline PyTorch's quantization could not run on transposed convs."""
    from deepcomp.policy import Rule

    policy = Policy(rules=(Rule(pattern="*entropy_bottleneck*"), Rule(kind="weight", bits=8, quantizer="uniform", per_channel=True), Rule()))
    model_file.compress_checkpoint(random_checkpoint, tmp_path / "i8.dcmp", policy, "bmshj2018-factorized", 3)
    header = model_file.file_info(tmp_path / "i8.dcmp")
    g_s = next(e for e in header["tensors"] if e["name"] == "g_s.0.weight")  # ConvTranspose2d: (in, out, k, k)
    assert g_s["channel_axis"] == 1 and g_s["codebook_shape"] == [128, 255]
    sd = model_file.load(tmp_path / "i8.dcmp")
    original = torch.load(random_checkpoint, weights_only=True)["state_dict"]["g_s.0.weight"]
    step = original.abs().amax(dim=(0, 2, 3)) / 127  # per output channel
    assert torch.all((sd["g_s.0.weight"] - original).abs() <= step[None, :, None, None] / 2 + 1e-7)
    model = model_file.load_model(tmp_path / "i8.dcmp")
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64))["x_hat"].shape == (1, 3, 64, 64)


def test_a_checkpoint_that_records_its_model_needs_no_arch(random_checkpoint, tmp_path):
    ck = torch.load(random_checkpoint, weights_only=True)
    ck["config"] = {"arch": "bmshj2018-factorized", "quality": 3}
    path = tmp_path / "with-config.pth.tar"
    torch.save(ck, path)
    out = tmp_path / "auto.dcmp"
    model_file.compress_checkpoint(path, out, Policy().with_weight_rule(bits=6))
    info = model_file.file_info(out)
    assert (info["arch"], info["quality"]) == ("bmshj2018-factorized", 3)
    assert not any(zoo.is_derived(k) for k in model_file.load(out))  # checked against the architecture
    model_file.load_model(out)  # no --arch/--quality needed
