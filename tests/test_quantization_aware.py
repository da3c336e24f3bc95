"""Quantization-aware fine-tuning (weights may change cluster) and `deepcomp finetune` on a deepcomp file."""

import numpy as np
import pytest
import torch
from torch import nn

from deepcomp import container, zoo
from deepcomp.cli import main
from deepcomp.errors import DeepCompError
from deepcomp.file_finetune import FinetuneConfig, finetune_file
from deepcomp.finetune import codebook_indices, storage_policy, write_exact
from deepcomp.model_file import compress_state_dict, load, load_arrays
from deepcomp.policy import Policy, Rule
from deepcomp.quantization_aware import NearestCentroid, attach_nearest, detach_nearest, shared_codebooks, train_nearest

from .test_finetune import ARCH, POLICY, cfg, data, kmeans_tensors_checked, load_container, model, quiet, same_partition  # noqa: F401  (data is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lloyd_step_moves_each_centroid_to_the_mean_of_its_weights():
    latent = torch.tensor([-1.2, -0.8, 0.0, 0.9, 1.3, 0.2])
    mask = latent != 0
    p = NearestCentroid(torch.tensor([1.0, -1.0, 5.0]), mask)  # sorted on the way in; 5.0 gets no weight
    assert torch.equal(p.codebook, torch.tensor([-1.0, 1.0, 5.0]))
    p.lloyd_step(latent)
    assert torch.allclose(p.codebook, torch.tensor([-1.0, (0.2 + 0.9 + 1.3) / 3, 5.0]))  # the empty cluster keeps its value
    p.eval()
    w = p(latent)
    assert torch.equal(w[2], torch.tensor(0.0))  # pruned: exactly zero
    assert set(w[mask].tolist()) <= set(p.codebook.tolist())


def test_forward_uses_the_nearest_centroid_and_the_gradient_goes_straight_through():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight[0, 0] = 0.0  # a pruned kernel
    latent = conv.weight.detach().clone()
    book = torch.tensor([-0.2, -0.05, 0.05, 0.2])
    policy = Policy(rules=(Rule(kind="weight", bits=2), Rule()))
    handles = attach_nearest(conv, policy, {"weight": book.numpy()})
    assert handles == {"weight": "nearest"}
    conv.eval()  # no Lloyd step: the given codebook
    mids = (book[1:] + book[:-1]) / 2
    expected = torch.where(latent != 0, book[torch.bucketize(latent, mids)], torch.zeros(()))
    assert torch.equal(conv.weight, expected)
    ref = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        ref.weight.copy_(expected)
        ref.bias.copy_(conv.bias)
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    (conv(x) ** 2).mean().backward()
    (ref(x) ** 2).mean().backward()
    grad = conv.parametrizations.weight.original.grad
    assert torch.allclose(grad, ref.weight.grad * (latent != 0), rtol=1e-5, atol=1e-8)  # straight through, masked
    assert torch.all(grad[0, 0] == 0)
    detach_nearest(conv, handles)
    assert [n for n, _ in conv.named_parameters()] == ["weight", "bias"] and torch.equal(conv.weight, expected)


def shared_model(seed=5):
    base = zoo.strip_derived(model().state_dict())
    shared = load_container(compress_state_dict(base, POLICY, ARCH, 1))
    net = model(seed=seed)
    zoo.assign_weights(net, shared)
    return net, shared


def test_weights_change_cluster_and_the_result_is_stored_exactly(data, tmp_path):  # noqa: F811
    net, shared = shared_model()
    policy = storage_policy(POLICY)
    books = shared_codebooks({k: v.numpy() for k, v in shared.items()}, policy)
    assert "g_s.6.weight" not in books  # uniform-shared: not a k-means codebook
    state = train_nearest(net, policy, cfg(4, lr=1e-2), data, books, progress=False, log=quiet)
    assert state["changed"] > 0  # the assignment itself was trained
    after = zoo.strip_derived(net.state_dict())
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in model().named_parameters()]  # parametrizations removed
    reassigned = 0
    for _, _, ia, ib in kmeans_tensors_checked(shared, after):
        pairs = set(zip(ia.ravel().tolist(), ib.ravel().tolist()))
        reassigned += len(pairs) > len(set(ia.ravel().tolist()))  # some cluster was split between centroids
    assert reassigned >= 1
    assert not torch.equal(after["g_a.2.bias"], shared["g_a.2.bias"])  # raw parameters trained
    assert torch.equal(after["g_a.0.bias"], after["g_a.0.bias"].half().float())  # fp16-stored: rounded
    path = tmp_path / "qat.dcmp"
    write_exact(path, net.state_dict(), POLICY, ARCH, 1)
    back = load(path)
    assert all(torch.equal(back[k], after[k]) for k in after)


def test_attach_refuses_a_missing_or_too_large_codebook():
    net, shared = shared_model()
    policy = storage_policy(POLICY)
    books = shared_codebooks({k: v.numpy() for k, v in shared.items()}, policy)
    names = [n for n, _ in net.named_parameters()]
    with pytest.raises(DeepCompError, match="no starting codebook"):
        attach_nearest(net, policy, {k: v for k, v in books.items() if k != "g_a.2.weight"})
    with pytest.raises(DeepCompError, match="3 bits allow"):
        attach_nearest(net, policy, {**books, "g_a.2.weight": np.arange(9, dtype=np.float32)})
    assert [n for n, _ in net.named_parameters()] == names  # undone


@pytest.fixture
def shared_file(tmp_path):
    base = zoo.strip_derived(model().state_dict())
    path = tmp_path / "model.dcmp"
    container.write(path, compress_state_dict(base, POLICY, ARCH, 1))
    return path


def test_finetune_file_writes_a_file_with_the_same_masks_and_resumes(shared_file, synthetic_photos, tmp_path, monkeypatch):
    out = tmp_path / "ft.dcmp"
    ft = FinetuneConfig(steps=3, lr=1e-2, batch_size=2, patch_size=32, val_every=2, val_fraction=0.5, val_patch=64)
    import deepcomp.file_finetune as ff

    def crash(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(ff, "write_exact", crash)
    with pytest.raises(RuntimeError):
        finetune_file(shared_file, out, synthetic_photos, ft, progress=False, log=quiet)
    partial = tmp_path / "ft.dcmp.partial.pth.tar"
    assert partial.exists() and not out.exists()
    monkeypatch.undo()
    with pytest.raises(DeepCompError, match="other settings"):
        finetune_file(shared_file, out, synthetic_photos, FinetuneConfig(**{**ft.__dict__, "lr": 1e-3}), progress=False, log=quiet)
    lines = []
    summary = finetune_file(shared_file, out, synthetic_photos, ft, progress=False, log=lines.append)
    assert any("resuming the fine-tuning at step 3" in line for line in lines)
    assert out.exists() and not partial.exists() and summary["bytes"] == out.stat().st_size
    a, b = load_arrays(shared_file), load_arrays(out)
    assert set(a) == set(b)
    assert np.array_equal(a["g_a.2.weight"] == 0, b["g_a.2.weight"] == 0) and not np.array_equal(a["g_a.2.weight"], b["g_a.2.weight"])
    # stored as the source was, without its pruning rules (the zeros are in the weights)
    assert container.read(out).header["policy"] == storage_policy(Policy.from_json(container.read(shared_file).header["policy"])).to_json()


def test_finetune_cli_fixed_mode_and_bad_input(shared_file, synthetic_photos, tmp_path, capsys):
    out = tmp_path / "fixed.dcmp"
    args = ["finetune", str(shared_file), "-o", str(out), "--mode", "fixed", "--steps", "2", "--lr", "1e-2", "--batch-size", "2",
            "--patch-size", "32", "--val-fraction", "0.5", "--val-patch", "64", "--data", str(synthetic_photos), "--quiet",
            "--summary", str(tmp_path / "s.json")]
    assert main(args) == 0
    a, b = load_arrays(shared_file), load_arrays(out)
    ia, ib = codebook_indices(a["g_a.2.weight"])[1], codebook_indices(b["g_a.2.weight"])[1]
    assert same_partition(ia, ib)  # fixed: every weight keeps its cluster (centroids may swap places)
    assert (tmp_path / "s.json").exists()
    assert main(["finetune", str(shared_file), "-o", str(shared_file), "--data", str(synthetic_photos)]) == 2
    assert "must not overwrite" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "missing.dcmp"), "-o", str(out), "--data", str(synthetic_photos)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepcomp: error:") and err.count("\n") == 1


def test_finetune_family_tool_reports_both_families_against_the_baselines(synthetic_photos, kodak_two, tmp_path, load_tool, capsys):
    tool = load_tool("finetune_family")
    baselines, files = [], []
    for q in (1, 2):
        net = model(seed=q)
        ckpt = tmp_path / f"b{q}.pth.tar"
        torch.save({"state_dict": net.state_dict(), "config": {"arch": ARCH, "quality": q}}, ckpt)
        f = tmp_path / f"f{q}.dcmp"
        container.write(f, compress_state_dict(zoo.strip_derived(net.state_dict()), POLICY, ARCH, q))
        baselines += ["--baseline", str(ckpt)]
        files += ["--file", str(f)]
    out, work = tmp_path / "out", tmp_path / "work"
    args = [*baselines, *files, "--steps", "2", "--lr", "1e-2", "--batch-size", "2", "--patch-size", "32", "--val-fraction", "0.5",
            "--val-patch", "64", "--data", str(synthetic_photos), "--eval-data", str(kodak_two), "--eval-limit", "1", "--work", str(work),
            "-o", str(out), "--quiet", "--keep"]
    assert tool.main(args) == 0
    md = (out / "README.md").read_text()
    assert "| as given |" in md and "| + nearest fine-tuning |" in md and (out / "rd.png").exists()
    assert {p.name for p in (out / "models").iterdir()} == {"q1.dcmp", "q2.dcmp"}
    import json

    doc = json.loads((out / "results.json").read_text())
    fams = {r["family"] for r in doc["rows"]}
    assert fams == {"baseline", "files as given", "+ nearest fine-tuning, 2 steps"} and all(r["images"] == 1 for r in doc["rows"])
    # a rerun reuses the fine-tuned files; other settings in the same work folder are refused
    assert tool.main(args) == 0 and "fine-tuned already" in capsys.readouterr().out
    assert tool.main([a if a != "1e-2" else "1e-3" for a in args]) == 2
    assert "other settings" in capsys.readouterr().err
    assert tool.main([*baselines, "--file", files[1], "--work", str(work), "-o", str(out)]) == 2
    # controls (as tools/headline.py --control records them): finished, trained from these baselines, same images
    from deepcomp.checkpoints import sha256_file

    controls = tmp_path / "controls"
    for q, psnr in ((1, 30.0), (2, 33.0)):
        (controls / f"q{q}").mkdir(parents=True)
        rec = {"done": True, "settings": {"sha256": sha256_file(tmp_path / f"b{q}.pth.tar"), "steps": 7}, "images": 1,
               "bpp": 0.5 * q, "psnr": psnr, "ssim": 0.9, "ms_ssim": 0.95 + 0.01 * q, "val_loss": 1.0}
        (controls / f"q{q}" / "record.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert tool.main([*args, "--controls", str(controls)]) == 0
    md = (out / "README.md").read_text()
    assert "Against the controls" in md and "unpruned, for 7 steps" in md and "| 2 | 1.0000 / 33.00 dB | 1.0000 |" in md
    doc = json.loads((out / "results.json").read_text())
    assert {r["family"] for r in doc["controls"]} == {"control"} and len(doc["bd_vs_controls"]) == 2
    rec["settings"]["sha256"] = "0" * 64  # a control of another baseline is refused, in one line
    (controls / "q2" / "record.json").write_text(json.dumps(rec))
    assert tool.main([*args, "--controls", str(controls)]) == 2
    err = capsys.readouterr().err
    assert "was not trained from" in err and err.count("\n") == 1
    assert tool.main([*args, "--controls", str(tmp_path / "nowhere")]) == 2
    assert "no finished control of quality 1" in capsys.readouterr().err


def test_finetune_cli_defaults_are_the_configs():
    from deepcomp.cli import build_parser

    args, defaults = build_parser().parse_args(["finetune", "x.dcmp", "-o", "y.dcmp"]), FinetuneConfig()
    for name in ("mode", "steps", "lr", "lmbda", "batch_size", "patch_size", "val_every", "val_fraction", "val_patch", "seed"):
        assert getattr(args, name) == getattr(defaults, name), name
    assert args.freeze_raw is not defaults.train_raw
