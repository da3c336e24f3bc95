"""Structured (channel) pruning: groups, exactness of the thinner model, files, allocation, CLI."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcomp import channel_pruning as cp
from deepcomp import cli, container, model_file, structured, zoo
from deepcomp.errors import DeepCompError
from deepcomp.policy import Policy

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean")
SMALL = 16  # channels of the small test models (latents 24, mbt2018-mean's h_s 24/36)


def small_widths(arch: str) -> dict:
    groups = zoo.channel_groups(zoo.build(arch, 1, init_weights=False))
    return {g.name: (24 if g.name == "y" or g.name.startswith("h_s") and arch == "mbt2018-mean" else SMALL) for g in groups}


def small_model(arch="bmshj2018-factorized", seed=0, latent_gain=50.0):
    """A seeded random model, thinned to a few channels per group, whose latents depend on the image."""
    torch.manual_seed(seed)
    model = zoo.build(arch, 1, widths=small_widths(arch))
    with torch.no_grad():
        model.g_a[-1].weight.mul_(latent_gain)
        model.g_a[-1].bias.mul_(latent_gain)
    model.update(force=True)
    return model.eval()


def _image(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 3) % 256], -1)
    Image.fromarray(np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A small factorized checkpoint that records its widths, as `channel-prune` writes them."""
    model = small_model()
    path = tmp_path_factory.mktemp("small") / "small.pth.tar"
    torch.save({"state_dict": model.state_dict(),
                "config": {"arch": "bmshj2018-factorized", "quality": 1, "widths": small_widths("bmshj2018-factorized")}}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four small training photos (two for validation with --val-fraction 0.5) and one evaluation image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "train").mkdir()
    (root / "eval").mkdir()
    for i in range(4):
        _image(root / "train" / f"{i}.png", 64, 64, seed=i)
    _image(root / "eval" / "e.png", 64, 64, seed=9)
    return root


# ---------------------------------------------------------------- groups
@pytest.mark.parametrize("arch", ARCHS)
def test_groups_cover_every_conv_gdn_and_entropy_bottleneck(arch):
    from compressai.layers import GDN

    model = zoo.build(arch, 1, init_weights=False)
    groups = zoo.channel_groups(model)
    slots = {(s.key, s.axis, s.role) for g in groups for s in g.slots}
    covered = {(s.key, s.axis) for g in groups for s in g.slots}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            out_axis, in_axis = (1, 0) if isinstance(m, torch.nn.ConvTranspose2d) else (0, 1)
            if name != "g_s.6":  # the image channels
                assert (f"{name}.weight", out_axis) in covered, name
                assert (f"{name}.bias", 0) in covered, name
            if name != "g_a.0":
                assert (f"{name}.weight", in_axis, "consumer") in slots, name
        if isinstance(m, GDN):
            assert {(f"{name}.beta", 0), (f"{name}.gamma", 0), (f"{name}.gamma", 1)} <= covered
    for name, _ in model.entropy_bottleneck.named_parameters():
        assert (f"entropy_bottleneck.{name}", 0) in covered
    # each (tensor, axis) belongs to one group only, and every group is consistent
    pairs = [(s.key, s.axis) for g in groups for s in g.slots]
    assert len(pairs) == len(set(pairs))
    assert cp.widths(cp.shapes_of(model.state_dict()), groups)["y"] == 192
    if arch == "mbt2018-mean":  # h_s's last conv predicts scales and means: two blocks per latent channel
        y = next(g for g in groups if g.name == "y")
        assert {s.blocks for s in y.slots if s.key.startswith("h_s.4")} == {2}


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(DeepCompError, match="channel pruning supports"):
        zoo.channel_groups(zoo.build("mbt2018", 1, init_weights=False))


# ---------------------------------------------------------------- the pure functions
def test_ratio_zero_is_identity():
    model = small_model()
    state = zoo.strip_derived(model.state_dict())
    groups = zoo.channel_groups(model)
    new, kept = cp.prune_channels(state, groups, cp.uniform_ratios(groups, 0.0))
    assert list(new) == list(state) and all(torch.equal(new[k], state[k]) for k in state)
    assert all(len(kept[g.name]) == cp.group_size(state, g) for g in groups)


def test_selection_keeps_the_largest_and_is_deterministic():
    g = cp.ChannelGroup("c", (("w", 0, "producer"), ("b", 0, "producer"), ("next", 1, "consumer")))
    w = np.array([[3.0, 0.0], [0.1, 0.1], [-2.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    state = {"w": w, "b": np.zeros(5), "next": np.arange(10.0).reshape(2, 5)}
    assert cp.select_channels(state, g, 0.4).tolist() == [0, 2, 4]  # L1: 3, 0.2, 4, 0, 2
    assert cp.select_channels(state, g, 0.4, scores=np.ones(5)).tolist() == [0, 1, 2]  # ties: the later ones go
    new, kept = cp.prune_channels(state, [g], {"c": 0.4})
    assert new["w"].shape == (3, 2) and new["next"].tolist() == [[0, 2, 4], [5, 7, 9]]
    assert state["w"].shape == (5, 2)  # the input is not modified
    assert cp.kept_count(5, 0.99) == 1 and cp.kept_count(128, 0.5) == 64


def test_blocks_and_inconsistent_widths():
    g = cp.ChannelGroup("y", (("p", 0, "producer"), ("sm", 0, "param", 2)))
    state = {"p": np.arange(3.0)[:, None] + 1, "sm": np.arange(6.0)}
    new = cp.index_channels(state, [g], {"y": np.array([0, 2])})
    assert new["sm"].tolist() == [0, 2, 3, 5]  # scales 0, 2 and means 0, 2
    with pytest.raises(DeepCompError, match="inconsistent widths"):
        cp.group_size({"p": np.zeros((3, 1)), "sm": np.zeros(8)}, g)
    with pytest.raises(DeepCompError, match="unknown channel group"):
        cp.prune_channels(state, [g], {"nope": 0.5})
    with pytest.raises(DeepCompError, match=r"\[0, 1\)"):
        cp.prune_channels(state, [g], {"y": 1.0})


def test_cost_counts_params_and_macs():
    model = zoo.build("bmshj2018-factorized", 3, init_weights=False)
    shapes = cp.shapes_of(zoo.strip_derived(model.state_dict()))
    assert cp.cost(shapes) == sum(p.numel() for p in zoo.strip_derived(model.state_dict()).values())
    macs = zoo.mac_weights("bmshj2018-factorized", 3)
    # stride-2 convs: g_a.0 runs at 1/4 of the pixels; the last deconv reads the 1/4-resolution map
    assert macs["encode"]["g_a.0.weight"] == 0.25 and macs["decode"]["g_s.6.weight"] == 0.25
    assert macs["encode"]["g_a.6.weight"] == 1 / 256 and macs["encode"]["g_a.1.gamma"] == 0.25
    assert cp.cost(shapes, macs["encode"]) == pytest.approx(
        128 * 3 * 25 / 4 + 128 * 128 * 25 / 16 + 128 * 128 * 25 / 64 + 192 * 128 * 25 / 256 + 128 * 128 * (1 / 4 + 1 / 16 + 1 / 64))


# ---------------------------------------------------------------- exactness of the thinner model
@pytest.mark.parametrize("arch", ARCHS)
def test_thinner_model_equals_full_model_with_zeroed_channels(arch):
    """Channels whose producing filter and bias are zero contribute nothing (GDN included): removing them changes no output."""
    model = small_model(arch, seed=1).double()
    groups = zoo.channel_groups(model)
    rng = np.random.default_rng(0)
    ratios, zeroed = {}, {}
    with torch.no_grad():
        state = model.state_dict()
        for g in groups:
            size = cp.group_size(state, g)
            n = size - cp.kept_count(size, 0.25)
            dead = rng.choice(size, n, replace=False)
            zeroed[g.name] = dead
            ratios[g.name] = 0.25
            for s in g.by_role("producer"):
                state[s.key].index_fill_(s.axis, torch.as_tensor(dead), 0.0)
            for s in g.slots:  # mbt2018-mean: the predicted means of a dead latent are 0 too, so it decodes to 0
                if s.blocks > 1:
                    rows = np.concatenate([b * size + dead for b in range(s.blocks)])
                    state[s.key].index_fill_(s.axis, torch.as_tensor(rows), 0.0)
            if g.name in ("y", "z") and any(s.key.startswith("entropy_bottleneck") for s in g.slots):
                model.entropy_bottleneck.quantiles[dead, 0, 1] = 0.0  # median 0: the zero latent quantises to 0
    new_state, kept = cp.prune_channels(zoo.strip_derived(model.state_dict()), groups, ratios)  # L1: the zeroed ones go
    for g in groups:
        assert set(kept[g.name]).isdisjoint(zeroed[g.name])
    widths = cp.widths(cp.shapes_of(new_state), groups)
    thin = zoo.build(arch, 1, init_weights=False, widths=widths)
    zoo.load_weights(thin, new_state)
    thin.double().eval()
    model.eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, small = model(x), thin(x)
    assert full["x_hat"].std() > 1e-3  # not a constant output
    assert torch.allclose(full["x_hat"], small["x_hat"], atol=1e-9, rtol=0)
    y = full["likelihoods"]["y"][:, torch.as_tensor(kept["y"])]
    assert torch.allclose(y, small["likelihoods"]["y"], atol=1e-9)
    if "z" in kept:
        z = full["likelihoods"]["z"][:, torch.as_tensor(kept["z"])]
        assert torch.allclose(z, small["likelihoods"]["z"], atol=1e-9)
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- files
@pytest.mark.parametrize("arch", ("bmshj2018-factorized", "bmshj2018-hyperprior"))
def test_thinner_model_round_trips_through_dcmp_and_codes_an_image(arch, tmp_path):
    model = small_model(arch, seed=2)
    widths = zoo.channel_widths(model)
    state = model.state_dict()
    c = model_file.compress_state_dict(state, Policy().with_weight_rule(bits=6), arch, 1, widths=widths)
    path = tmp_path / "thin.dcmp"
    container.write(path, c)
    assert model_file.file_info(path)["widths"] == widths
    back = model_file.load_model(path)
    assert zoo.channel_widths(back) == widths
    stored = model_file.load(path)
    assert all(torch.equal(back.state_dict()[k], stored[k]) for k in stored)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        enc = back.compress(x)
        dec = back.decompress(enc["strings"], enc["shape"])
        again = model_file.load_model(path).compress(x)
    assert dec["x_hat"].shape == x.shape and sum(len(s[0]) for s in enc["strings"]) > 0
    assert again["strings"] == enc["strings"]


def test_thinner_state_dict_without_widths_is_refused(tmp_path):
    model = small_model()
    with pytest.raises(DeepCompError, match="does not fit.*channel-pruned"):
        zoo.model_from_state_dict("bmshj2018-factorized", 1, model.state_dict())
    with pytest.raises(DeepCompError, match="unknown channel group"):
        zoo.build("bmshj2018-factorized", 1, widths={"g_a.9": 4})
    with pytest.raises(DeepCompError, match="not in 1..128"):
        zoo.build("bmshj2018-factorized", 1, widths={"g_a.0": 200})
    wrong = dict(small_widths("bmshj2018-factorized"), **{"g_a.0": 8})
    with pytest.raises(DeepCompError, match="does not fit"):
        zoo.model_from_state_dict("bmshj2018-factorized", 1, model.state_dict(), widths=wrong)


def test_cli_compress_evaluate_decompress_a_thinner_checkpoint(small_ckpt, photos, tmp_path, capsys):
    dcmp = tmp_path / "small.dcmp"
    assert cli.main(["compress", str(small_ckpt), "-o", str(dcmp), "--arch", "bmshj2018-factorized", "--quality", "1", "--bits", "6", "--quiet"]) == 0
    back = tmp_path / "back.pth.tar"
    assert cli.main(["decompress", str(dcmp), "-o", str(back)]) == 0
    assert torch.load(back, weights_only=True)["config"]["widths"] == small_widths("bmshj2018-factorized")
    capsys.readouterr()
    code = cli.main(["evaluate", str(small_ckpt), str(dcmp), str(back), "--data", str(photos / "eval"), "-o", str(tmp_path / "ev"),
                     "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("1 images: bpp") == 3
    docs = [json.loads((tmp_path / "ev" / f"{s}.json").read_text()) for s in ("small", "small.dcmp", "back")]
    assert docs[0]["model"]["widths"] == small_widths("bmshj2018-factorized")
    assert docs[1]["mean"]["bpp"] == docs[2]["mean"]["bpp"]  # the decompressed checkpoint holds the file's weights


# ---------------------------------------------------------------- allocation
def _table(deltas: dict, ratios=(0.25, 0.5, 0.75)) -> structured.ChannelSensitivity:
    return structured.ChannelSensitivity(
        base={"loss": 1.0}, ratios=list(ratios), importance="l1",
        groups={g: {"size": 8, "entries": [{"ratio": r, "kept": 0, "loss": 1.0 + d * r} for r in ratios]} for g, d in deltas.items()})


def _chain():
    """a -> b -> c: three groups of 8 channels in a chain of 4 layers."""
    groups = [cp.ChannelGroup(n, ((f"{n}.w", 0, "producer"), (f"{nxt}.w", 1, "consumer"))) for n, nxt in (("a", "b"), ("b", "c"), ("c", "d"))]
    shapes = {"a.w": (8, 3), "b.w": (8, 8), "c.w": (8, 8), "d.w": (3, 8)}
    return groups, shapes


def test_allocation_meets_the_target_where_it_costs_least():
    groups, shapes = _chain()
    table = _table({"a": 10.0, "b": 0.1, "c": 5.0})
    alloc = structured.allocate_channels(table, shapes, groups, None, target_removed=0.2, kind="params")
    assert alloc.removed >= 0.2 and alloc.ratios["b"] > 0 and alloc.ratios["a"] == 0
    assert alloc.cost == cp.cost(cp.pruned_shapes(shapes, groups, alloc.widths))
    assert alloc.delta == pytest.approx(sum(table.delta(g, r) for g, r in alloc.ratios.items()))
    by_loss = structured.allocate_channels(table, shapes, groups, None, target_loss=0.2, kind="params")
    assert by_loss.delta <= 0.2 + 1e-12 and by_loss.removed > 0
    uni = structured.uniform_allocation(shapes, groups, None, 0.3, kind="params")
    assert uni.removed >= 0.3 and len(set(uni.ratios.values())) == 1
    only = structured.allocate_channels(table, shapes, groups, None, target_removed=0.2, kind="params", only=["c"])
    assert only.ratios["a"] == only.ratios["b"] == 0
    with pytest.raises(DeepCompError, match="removes at most"):
        structured.allocate_channels(table, shapes, groups, None, target_removed=0.95, kind="params")


def test_sensitivity_and_pruning_of_a_small_model(photos):
    from deepcomp.finetune import TrainData

    torch.set_num_threads(1)
    data = TrainData.from_folder(photos / "train", 32, 0.5, 32)
    model = small_model()
    source = structured.Source(model, "bmshj2018-factorized", 1, 0.0018, zoo.channel_widths(model))
    table = structured.analyze_channels(source, data.val_crops, (0.5,), "activation", progress=False)
    assert table.complete() and set(table.groups) == set(source.widths)
    again = structured.ChannelSensitivity.from_json(json.loads(json.dumps(table.to_json())))
    assert again.delta("y", 0.5) == table.delta("y", 0.5)
    thin, widths, _ = structured.thin_model(source, {"y": 0.5}, method="l1")
    assert widths["y"] == 12 and zoo.channel_widths(thin) == widths


# ---------------------------------------------------------------- the command
def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_channel_prune_ratio_and_finetune(small_ckpt, photos, tmp_path, capsys):
    out = tmp_path / "p.pth.tar"
    code, _, err = _run(capsys, "channel-prune", small_ckpt, "-o", out, "--ratio", 0.5, "--groups", "g_a.2", "y", "--finetune-steps", 2,
                        "--data", photos / "train", "--val-fraction", 0.5, "--val-patch", 32, "--patch-size", 32, "--batch-size", 2,
                        "--threads", 1, "--quiet")
    assert code == 0, err
    ck = torch.load(out, weights_only=True)
    cfg = ck["config"]
    assert cfg["arch"] == "bmshj2018-factorized" and cfg["quality"] == 1 and cfg["lmbda"] == zoo.mse_lambda(1)
    assert cfg["widths"] == dict(small_widths("bmshj2018-factorized"), **{"g_a.2": 8, "y": 12})
    rec = cfg["channel_pruning"]
    assert rec["finetune"]["steps"] == 2 and set(rec["val"]) == {"source", "pruned", "finetuned"}
    assert rec["costs"]["pruned"]["params"] < rec["costs"]["source"]["params"]
    assert ck["state_dict"]["entropy_bottleneck._quantized_cdf"].shape[0] == 12  # update(force=True) applied
    # the l1 path needs no photos
    code, _, err = _run(capsys, "channel-prune", out, "-o", tmp_path / "q.pth.tar", "--ratios", '{"g_s.4": 0.25}', "--importance", "l1",
                        "--data", tmp_path / "nowhere", "--quiet")
    assert code == 0, err
    assert torch.load(tmp_path / "q.pth.tar", weights_only=True)["config"]["widths"]["g_s.4"] == 12


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}", "-o", "{out}", "--ratio", "0.5", "--importance", "l1"], "checkpoint not found"),
        (["{ckpt}", "-o", "{out}", "--ratios", "{{nope", "--importance", "l1"], "not valid JSON"),
        (["{ckpt}", "-o", "{out}", "--ratios", '{{"g_a.9": 0.5}}', "--importance", "l1"], "unknown channel group"),
        (["{ckpt}", "-o", "{out}", "--ratios", '{{"y": 1.5}}', "--importance", "l1"], "fraction in [0, 1)"),
        (["{ckpt}", "-o", "{out}", "--ratio", "0.5", "--groups", "nope", "--importance", "l1"], "unknown channel group"),
        (["{ckpt}", "-o", "{tmp}/no/such/dir/x.pth.tar", "--ratio", "0.5"], "output folder does not exist"),
        (["{ckpt}", "-o", "{out}", "--ratio", "0.5", "--arch", "bmshj2018-hyperprior"], "records arch"),
        (["{bare}", "-o", "{out}", "--ratio", "0.5", "--importance", "l1"], "pass --arch and --quality"),
        (["{ckpt}", "-o", "{out}", "--ratio", "0.5", "--data", "{tmp}/nowhere"], "nowhere"),
        (["{ckpt}", "-o", "{out}", "--target-macs", "0.5", "--importance", "l1", "--data", "{tmp}/nowhere"], "nowhere"),
    ],
)
def test_cli_channel_prune_errors_are_one_line(argv, message, small_ckpt, tmp_path, capsys):
    bare = tmp_path / "bare.pth.tar"
    torch.save({"state_dict": torch.load(small_ckpt, weights_only=True)["state_dict"]}, bare)
    subst = dict(missing=tmp_path / "missing.pth", ckpt=small_ckpt, out=tmp_path / "out.pth.tar", tmp=tmp_path, bare=bare)
    code, _, err = _run(capsys, "channel-prune", *[a.format(**subst) for a in argv])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.pth.tar").exists() and not list(tmp_path.glob(".out.pth.tar.*"))


def test_cli_channel_prune_bad_option_values(capsys):
    for argv in (["channel-prune", "x", "-o", "y", "--ratio", "1.0"], ["channel-prune", "x", "-o", "y"],
                 ["channel-prune", "x", "-o", "y", "--ratio", "0.5", "--target-macs", "0.5"], ["channel-prune", "x", "-o", "y", "--target-macs", "0"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_structured_pruning_tool_tiny_run(small_ckpt, photos, tmp_path):
    """tools/structured_pruning.py end to end with tiny settings: every output, and a rerun that reuses them."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import structured_pruning as tool
    finally:
        sys.path.remove(str(ROOT / "tools"))
    torch.set_num_threads(1)
    out = tmp_path / "structured"
    argv = [str(small_ckpt), "-o", str(out), "--targets", "0.3", "--uniform", "--sens-ratios", "0.25", "0.5", "--finetune-steps", "2",
            "--batch-size", "2", "--patch-size", "32", "--val-patch", "32", "--val-fraction", "0.5", "--data", str(photos / "train"),
            "--eval-data", str(photos / "eval"), "--limit", "1", "--bits", "6", "--quiet"]
    res = tool.run(tool.parse_args(argv), log=lambda s: None)
    for name in ("sensitivity.json", "sensitivity.png", "structured.md", "structured.csv", "structured.json", "structured.png",
                 "models/alloc-macs0.30.pth.tar", "models/alloc-macs0.30.dcmp", "models/uniform-macs0.30.dcmp", "models/baseline.dcmp"):
        assert (out / name).is_file(), name
    rows = {(r["model"], r["storage"]): r for r in res["rows"]}
    assert len(rows) == 6
    base = rows[("baseline", "pth")]
    for kind in ("alloc", "uniform"):
        r = rows[(f"{kind}-macs0.30", "dcmp")]
        assert r["removed_macs"] >= 0.3 - 1e-9 and r["params"] < base["params"] and r["dcmp_bytes"] < r["pth_bytes"]
        assert r["encode_s"] > 0 and math.isfinite(r["decode_speedup"]) and r["val_loss_finetuned"] is not None
    assert "alloc-macs0.30" in (out / "structured.md").read_text()
    stamp = (out / "models" / "alloc-macs0.30.pth.tar").stat().st_mtime_ns
    logs = []
    tool.run(tool.parse_args(argv), log=logs.append)
    assert (out / "models" / "alloc-macs0.30.pth.tar").stat().st_mtime_ns == stamp and any("done before" in s for s in logs)

    # --control: the unpruned baseline fine-tuned the same way, as a row of its own; the rest is reused
    res = tool.run(tool.parse_args(argv + ["--control"]), log=lambda s: None)
    rows = {(r["model"], r["storage"]): r for r in res["rows"]}
    assert len(rows) == 8 and (out / "models" / "alloc-macs0.30.pth.tar").stat().st_mtime_ns == stamp
    ctrl = rows[("control", "pth")]
    assert ctrl["params"] == base["params"] and ctrl["removed_macs"] == pytest.approx(0.0) and ctrl["val_loss_finetuned"] is not None
    from deepcomp.checkpoints import read_state_dict
    trained, before = read_state_dict(out / "models" / "control.pth.tar"), read_state_dict(small_ckpt)
    assert not torch.equal(trained["g_a.0.weight"], before["g_a.0.weight"])  # fine-tuned, not a copy


def test_pipeline_takes_a_thinner_checkpoint(small_ckpt, photos, tmp_path):
    """Deep Compression after channel pruning: every stage rebuilds the thinner model, the final file records its widths."""
    from deepcomp.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(policy=Policy().with_weight_rule(prune=0.5, bits=4).to_json(), retrain_steps=2, prune_rounds=1, centroid_steps=1,
                         batch_size=2, patch_size=32, val_every=2, val_fraction=0.5, val_patch=32)
    out = tmp_path / "run"
    run_pipeline(small_ckpt, out, cfg, photos / "train", photos / "eval", progress=False, log=lambda *_: None)
    widths = small_widths("bmshj2018-factorized")
    assert model_file.file_info(out / "final.dcmp")["widths"] == widths
    model = model_file.load_model(out / "final.dcmp")
    assert zoo.channel_widths(model) == widths
    table = json.loads((out / "stages.json").read_text())
    assert all(r["psnr"] > 0 for r in table["rows"])
    assert torch.load(out / "retrain.pth.tar", weights_only=True)["config"]["widths"] == widths
