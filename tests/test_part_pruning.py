"""Per-part pruning: which tensors each part prunes, the ratio per tensor, masked retraining, and tools/part_pruning.py end to end."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepcomp import part_pruning, zoo
from deepcomp.errors import DeepCompError
from deepcomp.finetune import TrainData, masked_retrain
from deepcomp.training import CropSampler, TrainConfig

ARCH = "bmshj2018-factorized"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("part_pruning", "part_pruning_tool")


def _shapes(arch):
    torch.manual_seed(0)
    return zoo.build(arch, 3, init_weights=False).state_dict()


class Log(list):
    def __call__(self, line):
        self.append(str(line))

    def text(self):
        return "\n".join(self)


# ---------------------------------------------------------------- the parts
def test_parts_of_the_factorized_model():
    shapes = _shapes(ARCH)
    enc = part_pruning.part_tensors(shapes, ("encoder",))
    dec = part_pruning.part_tensors(shapes, ("decoder",))
    prob = part_pruning.part_tensors(shapes, ("probability",))
    assert enc == ["g_a.0.weight", "g_a.2.weight", "g_a.4.weight", "g_a.6.weight"]
    assert dec == ["g_s.0.weight", "g_s.2.weight", "g_s.4.weight", "g_s.6.weight"]
    assert sorted(prob) == sorted([f"entropy_bottleneck.matrices.{i}" for i in range(5)] + [f"entropy_bottleneck.factors.{i}" for i in range(4)])
    everything = part_pruning.part_tensors(shapes, part_pruning.PARTS)
    assert sorted(everything) == sorted(enc + dec + prob)
    for name in everything:  # never biases, GDN parameters, quantiles or buffers
        assert not name.endswith((".bias", ".beta", ".gamma", "quantiles")) and "biases" not in name and not zoo.is_derived(name)


def test_parts_of_the_hyperprior_model():
    shapes = _shapes("bmshj2018-hyperprior")
    prob = part_pruning.part_tensors(shapes, ("probability",))
    assert {n.split(".")[0] for n in prob} == {"h_a", "h_s", "entropy_bottleneck"}
    assert "h_a.0.weight" in prob and "h_s.4.weight" in prob and not any(n.startswith(("g_a", "g_s")) for n in prob)
    assert all(n.startswith("g_a.") for n in part_pruning.part_tensors(shapes, ("encoder",)))
    assert all(n.startswith("g_s.") for n in part_pruning.part_tensors(shapes, ("decoder",)))


def test_part_names_and_old_entropy_bottleneck_keys():
    assert zoo.part_of("g_a.0.weight") == "encoder" and zoo.part_of("g_s.6.bias") == "decoder"
    assert zoo.part_of("h_s.0.weight") == zoo.part_of("entropy_bottleneck.quantiles") == "probability"
    with pytest.raises(DeepCompError, match="no part"):
        zoo.part_of("mystery.0.weight")
    assert zoo.is_part_weight("entropy_bottleneck._matrices.0", (192, 3, 1))  # older CompressAI names
    assert zoo.is_part_weight("entropy_bottleneck._factors.3", (192, 3, 1))
    for name in ("entropy_bottleneck.quantiles", "entropy_bottleneck._biases.0", "entropy_bottleneck.biases.4", "g_a.1.gamma"):
        assert not zoo.is_part_weight(name, (192, 3, 3))
    assert part_pruning.parse_part_set("decoder+encoder") == ("encoder", "decoder")
    assert part_pruning.parse_part_set("all") == part_pruning.PARTS == ("encoder", "decoder", "probability")
    assert part_pruning.part_set_name(("probability", "encoder")) == "encoder+probability"
    assert part_pruning.part_set_name(part_pruning.PARTS) == "all"
    for bad in ("gs", "all+encoder", "encoder+encoder", ""):
        with pytest.raises(DeepCompError):
            part_pruning.parse_part_set(bad)


# ---------------------------------------------------------------- masks
def test_each_tensor_of_the_part_meets_the_ratio_and_nothing_else_changes():
    torch.manual_seed(0)
    model = zoo.build(ARCH, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = part_pruning.prune_parts(model, ("encoder", "probability"), 0.3)
    assert set(masks) == set(part_pruning.part_tensors(before, ("encoder", "probability")))
    after = model.state_dict()
    for name, m in masks.items():
        assert m.dtype == torch.bool and m.shape == after[name].shape
        assert int((~m).sum()) == round(0.3 * m.numel())
        assert torch.all(after[name][~m] == 0) and torch.equal(after[name][m], before[name][m])
        # the smallest magnitudes went
        assert float(before[name][~m].abs().max()) <= float(before[name][m].abs().min())
    for name, t in after.items():
        if name not in masks:
            assert torch.equal(t, before[name]), name
    enc = [n for n in masks if n.startswith("g_a.")]
    assert part_pruning.density(after, enc) == pytest.approx(0.7, abs=1e-4)
    assert part_pruning.density(after, list(masks)) <= 0.7  # a fresh entropy bottleneck's factors are zeros
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DeepCompError, match="ratios"):
            part_pruning.part_masks(before, ("encoder",), bad)


def test_masked_retraining_keeps_the_pruned_weights_at_exactly_zero(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray((np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)).save(files[-1])
    data = TrainData(CropSampler(files, 32, seed=0), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    model = zoo.build(ARCH, 3)
    masks = part_pruning.prune_parts(model, part_pruning.PARTS, 0.5)
    pruned = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(arch=ARCH, quality=3, steps=2, batch_size=2, patch_size=32, lr=1e-2, val_every=100)
    state = masked_retrain(model, masks, cfg, data, progress=False, log=Log())
    assert state["step"] == 2
    after = model.state_dict()
    for name, m in masks.items():
        assert torch.all(after[name][~m] == 0), name
        assert not torch.equal(after[name][m], pruned[name][m]), name  # the kept weights did train
    assert "entropy_bottleneck.quantiles" not in masks and not any(".bias" in n or "biases" in n for n in masks)


# ---------------------------------------------------------------- the tool
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two small evaluation images (MS-SSIM needs a side above 160 px) and four training photos."""
    root = tmp_path_factory.mktemp("parts-data")
    rng = np.random.default_rng(1)
    (root / "eval").mkdir()
    (root / "train").mkdir()
    for i in range(2):
        im = np.kron(rng.random((12, 11, 3)), np.ones((16, 16, 1))) * 255
        Image.fromarray(im.astype(np.uint8)).save(root / "eval" / f"img{i}.png")  # 192 x 176
    for i in range(4):
        im = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255
        Image.fromarray(im.astype(np.uint8)).save(root / "train" / f"{i:03d}.png")
    return root


def _argv(ckpt, folders, out, work, *extra):
    return [str(ckpt), "-o", str(out), "--work", str(work), "--arch", ARCH, "--quality", "3", "--parts", "encoder", "all",
            "--ratios", "0.5", "--retrain-steps", "2", "--batch-size", "2", "--patch-size", "32", "--val-every", "1",
            "--val-fraction", "0.5", "--val-patch", "48", "--data", str(folders / "train"), "--eval-data", str(folders / "eval"),
            "--threads", "1", "--quiet", *extra]


def test_tool_end_to_end_resumes_and_refuses_other_settings(tool, random_checkpoint, folders, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    log = Log()
    res = tool.run(tool.parse_args(_argv(random_checkpoint, folders, out, work)), log=log)
    for f in ("parts.md", "parts.csv", "parts.json", "parts.png"):
        assert (out / f).is_file(), f
    rows = {r["model"]: r for r in res["rows"]}
    assert list(rows) == ["baseline", "control-retrained", "encoder-0.5-pruned", "encoder-0.5-retrained", "all-0.5-pruned", "all-0.5-retrained"]
    b = rows["baseline"]
    assert b["d_psnr"] == 0 and b["time_vs_base"] == 1 and b["bytes_vs_base"] == 0 and b["part_density"] > 0.999
    for r in rows.values():
        assert r["images"] == 2 and r["bytes_per_image"] > 0 and r["encode_s"] > 0 and r["decode_s"] > 0
        assert r["time_s"] == pytest.approx(r["encode_s"] + r["decode_s"])
        assert 0 < r["ssim"] <= 1 and 0 < r["ms_ssim"] <= 1
    assert rows["encoder-0.5-pruned"]["part_density"] == pytest.approx(0.5, abs=1e-4)
    assert rows["all-0.5-retrained"]["part_density"] == pytest.approx(0.5, abs=1e-3)  # a fresh model's factors are zeros
    assert rows["control-retrained"]["part_density"] > 0.999 and rows["control-retrained"]["retrain_steps"] == 2
    assert rows["encoder-0.5-retrained"]["val_loss"] > 0
    # the results are the real bitstreams' bytes, per image, in OUT/results
    doc = json.loads((out / "results" / "encoder-0.5-pruned.json").read_text())
    assert rows["encoder-0.5-pruned"]["bytes_per_image"] == pytest.approx(sum(r["bytes"] for r in doc["per_image"]) / 2)
    # the models: the encoder-only model leaves g_s and the entropy bottleneck alone; retraining keeps the zeros
    base = torch.load(random_checkpoint, weights_only=True)["state_dict"]
    enc = torch.load(work / "models" / "encoder-0.5-pruned.pth.tar", weights_only=True)
    assert enc["config"]["arch"] == ARCH and enc["config"]["part_pruning"]["done"] is True
    assert set(enc["masks"]) == {"g_a.0.weight", "g_a.2.weight", "g_a.4.weight", "g_a.6.weight"}
    for k, v in base.items():
        if k.startswith(("g_s.", "entropy_bottleneck.")) and not zoo.is_derived(k):
            assert torch.equal(enc["state_dict"][k], v), k
    ret = torch.load(work / "models" / "all-0.5-retrained.pth.tar", weights_only=True)
    assert ret["train_state"]["step"] == 2 and "optimizer" not in ret["train_state"]
    for name, m in ret["masks"].items():
        assert torch.all(ret["state_dict"][name][~m] == 0) and int((~m).sum()) == round(0.5 * m.numel())
    assert not torch.equal(ret["state_dict"]["g_s.0.weight"], base["g_s.0.weight"])  # retrained
    # the tables
    md = (out / "parts.md").read_text()
    assert "| encoder | 0.50 | yes |" in md and "| all | 0.50 | no |" in md and "no speed-up is expected" in md
    assert "Command: `bash tools/run.sh python tools/part_pruning.py " in md and "--retrain-steps 2" in md
    with open(out / "parts.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and tuple(table[0]) == tool.FIELDS
    assert json.loads((out / "parts.json").read_text())["rows"][2]["model"] == "encoder-0.5-pruned"

    # a rerun makes and evaluates nothing again
    stamps = {p.name: p.stat().st_mtime_ns for p in list((work / "models").iterdir()) + list((out / "results").iterdir())}
    log2 = Log()
    tool.run(tool.parse_args(_argv(random_checkpoint, folders, out, work)), log=log2)
    assert "reusing" in log2.text() and "retraining" not in log2.text() and "zeroed" not in log2.text()
    assert stamps == {p.name: p.stat().st_mtime_ns for p in list((work / "models").iterdir()) + list((out / "results").iterdir())}
    # other training settings in the same work folder: refused, one line, exit 2
    capsys.readouterr()
    assert tool.main(_argv(random_checkpoint, folders, out, work) + ["--retrain-steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "other settings" in err and "retrain_steps: 2 -> 3" in err


def test_interrupted_retraining_resumes(tool, random_checkpoint, folders, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(random_checkpoint, folders, out, work, "--no-control")
    argv[argv.index("all")] = "encoder"  # one part set

    class Stop(Exception):
        pass

    def stop_at_step_2(line):
        if str(line).startswith("step 2:"):
            raise Stop

    with pytest.raises(Stop):
        tool.run(tool.parse_args(argv), log=stop_at_step_2)
    ck = torch.load(work / "models" / "encoder-0.5-retrained.pth.tar", weights_only=True)
    assert ck["config"]["part_pruning"]["done"] is False and ck["train_state"]["step"] == 1
    log = Log()
    res = tool.run(tool.parse_args(argv), log=log)
    assert "encoder-0.5-retrained: resuming at step 1 of 2" in log.text()
    assert [r["model"] for r in res["rows"]] == ["baseline", "encoder-0.5-pruned", "encoder-0.5-retrained"]
    ck = torch.load(work / "models" / "encoder-0.5-retrained.pth.tar", weights_only=True)
    assert ck["config"]["part_pruning"]["done"] is True and ck["train_state"]["step"] == 2


@pytest.mark.parametrize("change, message", [
    (("checkpoint", "missing.pth.tar"), "checkpoint not found"),
    (("--ratios", "1.5"), "ratios must be in (0, 1)"),
    (("--parts", "gs"), "unknown part 'gs'"),
    (("--eval-data", "nowhere"), "image folder not found"),
    (("--data", "nowhere"), "image folder not found"),
    (("--retrain-steps", "-1"), "--retrain-steps must be >= 0"),
    (("--arch", "bmshj2018-hyperprior"), "does not fit"),
])
def test_bad_input_is_one_line_and_writes_nothing(tool, random_checkpoint, folders, tmp_path, capsys, change, message):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(random_checkpoint, folders, out, work)
    key, value = change
    if key == "checkpoint":
        argv[0] = str(tmp_path / value)
    elif key == "--parts":
        i = argv.index("--parts")
        argv[i + 1 : i + 3] = [value]
    else:
        argv[argv.index(key) + 1] = str(tmp_path / value) if value == "nowhere" else value
    assert tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("part_pruning: error:") and message in err, err
    assert not out.exists() and not work.exists()
