"""The whole pipeline on a tiny budget: stages, files, the per-stage table, resuming, the command."""

import json

import numpy as np
import pytest
import torch

from deepcomp import cli
from deepcomp.errors import DeepCompError
from deepcomp.model_file import load
from deepcomp.pipeline import STAGES, PipelineConfig, position_bits, run_pipeline, stage_bytes
from deepcomp.policy import Policy, Rule

ARCH = "bmshj2018-factorized"
#: GDN gamma raw: a few Adam steps from the random init leave it in two tight clusters
POLICY = Policy(rules=(Rule(pattern="*entropy_bottleneck*"), Rule(kind="weight", prune=0.5, bits=4), Rule()))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_photos(synthetic_photos):
    """Four small synthetic training photos (blocky noise): half of them the validation split."""
    return synthetic_photos


def tiny(**kw):
    base = dict(arch=ARCH, quality=3, policy=POLICY.to_json(), retrain_steps=4, prune_rounds=2, centroid_steps=2, batch_size=2,
                patch_size=32, val_every=2, val_fraction=0.5, val_patch=48)
    base.update(kw)
    return PipelineConfig(**base)


class Log(list):
    def __call__(self, line):
        self.append(str(line))

    def text(self):
        return "\n".join(self)


def test_pipeline_runs_every_stage_and_resumes(random_checkpoint, train_photos, kodak_two, tmp_path):
    out = tmp_path / "run"
    log = Log()
    rec = run_pipeline(random_checkpoint, out, tiny(), train_photos, kodak_two, eval_limit=1, progress=False, log=log)
    assert all(rec["stages"][s]["done"] for s in STAGES if s != "sensitivity")
    for f in ("pipeline.json", "policy.json", "prune.pth.tar", "retrain.pth.tar", "share.dcmp", "centroids.pth.tar", "final.dcmp",
              "stages.md", "stages.csv", "stages.json"):
        assert (out / f).is_file(), f
    assert "pruning round 2/2" in log.text()
    table = json.loads((out / "stages.json").read_text())
    rows = {r["stage"]: r for r in table["rows"]}
    assert list(rows) == ["baseline", "prune", "retrain", "share", "centroids", "huffman"]
    assert rows["baseline"]["bytes"] == table["fp32_bytes"] and rows["baseline"]["ratio"] == pytest.approx(1.0)
    assert rows["baseline"]["bytes"] > rows["prune"]["bytes"] > rows["share"]["bytes"]
    assert rows["huffman"]["bytes"] == (out / "final.dcmp").stat().st_size
    assert rows["centroids"]["psnr"] == rows["huffman"]["psnr"]  # the same weights, evaluated once
    assert all(r["images"] == 1 and r["psnr"] > 0 and r["val_loss"] > 0 for r in rows.values())
    assert rows["prune"]["density"] < 0.6
    md = (out / "stages.md").read_text()
    assert "| + centroid fine-tune |" in md and "| + Huffman |" in md
    # the file decodes to exactly the fine-tuned weights; the pruned zeros survive every stage
    final = load(out / "final.dcmp")
    tuned = torch.load(out / "centroids.pth.tar", weights_only=True)["state_dict"]
    assert set(final) == set(tuned) and all(torch.equal(final[k], tuned[k]) for k in final)
    retrained = torch.load(out / "retrain.pth.tar", weights_only=True)
    masks = retrained["train_state"]["masks"]
    for name, m in masks.items():
        assert torch.all(final[name][~m] == 0) and torch.all(retrained["state_dict"][name][~m] == 0)
        assert int((~m).sum()) == round(0.5 * m.numel())
        assert np.unique(final[name].numpy()[m.numpy()]).size <= 16
    # a rerun does nothing again
    log2 = Log()
    run_pipeline(random_checkpoint, out, tiny(), train_photos, kodak_two, eval_limit=1, progress=False, log=log2)
    assert "resuming the pipeline" in log2.text() and "[retrain]" not in log2.text() and "[evaluate]" not in log2.text()
    # other settings in the same folder: refused
    with pytest.raises(DeepCompError, match="other settings"):
        run_pipeline(random_checkpoint, out, tiny(retrain_steps=5), train_photos, kodak_two, progress=False, log=Log())
    # more centroid steps: the stages from the centroid fine-tuning on are done again, the retraining is kept
    retrained_bytes = (out / "retrain.pth.tar").read_bytes()
    log3 = Log()
    rec = run_pipeline(random_checkpoint, out, tiny(centroid_steps=3), train_photos, kodak_two, eval_limit=1, progress=False, log=log3)
    assert "the stages from centroids on are done again" in log3.text()
    assert "[retrain]" not in log3.text() and "[share]" not in log3.text() and "[centroids] trained quantization, 3 steps" in log3.text()
    assert (out / "retrain.pth.tar").read_bytes() == retrained_bytes
    assert torch.load(out / "centroids.pth.tar", weights_only=True)["train_state"]["step"] == 3
    assert rec["config"]["centroid_steps"] == 3 and all(rec["stages"][s]["done"] for s in STAGES if s != "sensitivity")
    final = load(out / "final.dcmp")
    tuned = torch.load(out / "centroids.pth.tar", weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], tuned[k]) for k in final)
    rows = {r["stage"]: r for r in json.loads((out / "stages.json").read_text())["rows"]}
    assert rows["huffman"]["bytes"] == (out / "final.dcmp").stat().st_size
    # quantization-aware centroid stage: from the retrained weights, clusters may change; masks and bit widths kept
    log4 = Log()
    rec = run_pipeline(random_checkpoint, out, tiny(centroid_steps=3, centroid_mode="nearest"), train_photos, None, stop_after="huffman",
                       progress=False, log=log4)
    assert "[centroids] quantization-aware fine-tuning (clusters may change), 3 steps" in log4.text() and "[retrain]" not in log4.text()
    assert (out / "retrain.pth.tar").read_bytes() == retrained_bytes
    assert 0 <= rec["stages"]["centroids"]["changed"] <= 1
    final = load(out / "final.dcmp")
    for name, m in masks.items():
        assert torch.equal(final[name] != 0, m) and np.unique(final[name].numpy()[m.numpy()]).size <= 16


def test_interrupted_retraining_resumes_from_its_checkpoint(random_checkpoint, train_photos, tmp_path):
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop_at_step_2(line):
        if str(line).startswith("step 2:"):
            raise Stop

    with pytest.raises(Stop):
        run_pipeline(random_checkpoint, out, tiny(), train_photos, None, stop_after="retrain", progress=False, log=stop_at_step_2,
                     checkpoint_every=1)
    rec = json.loads((out / "pipeline.json").read_text())
    assert rec["stages"]["prune"]["done"] and "retrain" not in rec["stages"]
    ck = torch.load(out / "retrain.pth.tar", weights_only=True)
    assert ck["done"] is False and ck["train_state"]["step"] in (1, 2)
    log = Log()
    run_pipeline(random_checkpoint, out, tiny(), train_photos, None, stop_after="retrain", progress=False, log=log, checkpoint_every=1)
    assert f"[retrain] resuming at step {ck['train_state']['step']}" in log.text()
    ck = torch.load(out / "retrain.pth.tar", weights_only=True)
    assert ck["done"] is True and ck["train_state"]["step"] == 4
    assert json.loads((out / "pipeline.json").read_text())["stages"]["retrain"]["done"]
    assert not (out / "share.dcmp").exists()  # stopped after retrain


def test_target_ratio_allocates_a_policy_from_the_sensitivity(random_checkpoint, train_photos, tmp_path):
    out = tmp_path / "run"
    cfg = tiny(target_ratio=6.0, sens_ratios=(0.0, 0.8), sens_bits=(2, 6), sens_mode="separable", val_patch=32)
    log = Log()
    run_pipeline(random_checkpoint, out, cfg, train_photos, None, stop_after="policy", progress=False, log=log)
    sens = json.loads((out / "sensitivity.json").read_text())
    assert set(sens["layers"]) == {f"{t}.{i}.weight" for t in ("g_a", "g_s") for i in (0, 2, 4, 6)}
    assert (out / "sensitivity.png").stat().st_size > 1000
    doc = json.loads((out / "policy.json").read_text())
    alloc = doc["allocation"]
    assert alloc["bytes"] <= alloc["target_bytes"] == int(sens["fp32_bytes"] / 6.0)
    policy = Policy.from_json(doc["policy"])
    for name, choice in alloc["choices"].items():
        r = policy.rule_for(name, tuple(sens["layers"][name]["shape"]))
        assert (r.prune or 0.0, r.bits) == (choice["ratio"], choice["bits"])
    assert not (out / "prune.pth.tar").exists()


def test_sizes_of_han_stages():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 64)).astype(np.float32)
    w[np.abs(w) < 0.7] = 0  # about half pruned
    kept = w != 0
    # relative positions at the best fixed width; never more than one bit per element plus slack
    assert 0 < position_bits(kept) <= w.size + 16
    assert position_bits(np.ones(10, bool)) == 10  # 1-bit gaps of 0
    # kernels kept or pruned whole: the positions of the kernels, one bit each at most
    kernels = np.repeat(rng.random(64 * 16) < 0.4, 9).reshape(64, 16, 3, 3)
    assert position_bits(kernels) <= 64 * 16 < position_bits(kernels.ravel())
    policy = Policy(rules=(Rule(pattern="w", bits=4), Rule(pattern="b", storage="fp16"), Rule()))
    arrays = {"w": w, "b": np.ones(10, np.float32), "n": np.arange(3, dtype=np.int64)}
    fp32 = stage_bytes(arrays, policy, shared=False)
    assert fp32 == (kept.sum() * 32 + position_bits(kept) + 10 * 16 + 3 * 64 + 7) // 8
    q = np.where(kept, np.round(w * 2) / 2, 0).astype(np.float32)
    k = np.unique(q[q != 0]).size
    assert stage_bytes({"w": q}, policy, shared=True) == (kept.sum() * 4 + position_bits(q != 0) + 32 * k + 7) // 8
    dense = rng.normal(size=(8, 8)).astype(np.float32)
    assert stage_bytes({"w": dense}, policy, shared=False) == 64 * 4


def test_command_line(random_checkpoint, train_photos, tmp_path, capsys):
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps(POLICY.to_json()))
    out = tmp_path / "run"
    common = ["pipeline", str(random_checkpoint), "-o", str(out), "--arch", ARCH, "--quality", "3", "--policy", str(pol),
              "--data", str(train_photos), "--stop-after", "prune", "--quiet"]
    assert cli.main(common) == 0
    rec = json.loads((out / "pipeline.json").read_text())
    assert rec["stages"]["prune"]["done"] and rec["config"]["arch"] == ARCH and rec["config"]["policy"] == POLICY.to_json()
    assert rec["config"]["lmbda"] == pytest.approx(0.0067) and rec["config"]["retrain_steps"] == 2000
    capsys.readouterr()
    # one-line errors
    code = cli.main(common + ["--prune-rounds", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1
    code = cli.main(["pipeline", str(random_checkpoint), "-o", str(tmp_path / "r2"), "--arch", ARCH, "--quality", "3",
                     "--target-ratio", "10", "--target-loss", "1", "--quiet"])
    assert code == 2 and "not both" in capsys.readouterr().err
    code = cli.main(["pipeline", str(random_checkpoint), "-o", str(tmp_path / "r3"), "--quiet"])
    assert code == 2 and "--arch and --quality" in capsys.readouterr().err
    # the parser's stage names and defaults are the pipeline's
    sub = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["pipeline"]._actions if a.dest == "stop_after")
    assert tuple(sub.choices) == STAGES
    args = cli.build_parser().parse_args(["pipeline", "x", "-o", "y"])
    defaults = PipelineConfig()
    for name in ("retrain_steps", "prune_rounds", "schedule", "centroid_steps", "centroid_mode", "batch_size", "patch_size", "lr", "centroid_lr",
                 "val_every", "val_fraction", "val_patch", "sens_mode", "seed"):
        assert getattr(args, name) == getattr(defaults, name), name
    assert tuple(args.sens_ratios) == defaults.sens_ratios and tuple(args.sens_bits) == defaults.sens_bits
    assert args.freeze_raw is not defaults.train_raw


def test_distillation_runs_in_both_fine_tunings(random_checkpoint, train_photos, tmp_path, capsys):
    out = tmp_path / "run"
    log = Log()
    run_pipeline(random_checkpoint, out, tiny(distill=1.0), train_photos, None, stop_after="huffman", progress=False, log=log)
    assert log.text().count("distilling 14 layers from the baseline, weight 1") == 2  # retraining and centroid fine-tuning
    assert json.loads((out / "pipeline.json").read_text())["config"]["distill"] == 1.0
    with pytest.raises(DeepCompError, match="distillation weight"):
        run_pipeline(random_checkpoint, tmp_path / "r2", tiny(distill=-1.0), train_photos, None, progress=False, log=Log())
    with pytest.raises(SystemExit) as exc:
        cli.main(["pipeline", str(random_checkpoint), "-o", str(tmp_path / "r3"), "--distill", "-1", "--quiet"])
    assert exc.value.code == 2 and "--distill" in capsys.readouterr().err


def test_only_settings_of_later_stages_reuse_the_earlier_ones():
    from deepcomp.pipeline import _first_stage_changed

    old = tiny().to_json()
    assert _first_stage_changed(["centroid_steps"], old, tiny(centroid_steps=9).to_json()) == "centroids"
    assert _first_stage_changed(["centroid_lr", "train_raw"], old, tiny(centroid_lr=1e-4, train_raw=False).to_json()) == "centroids"
    assert _first_stage_changed(["centroid_mode"], old, tiny(centroid_mode="nearest").to_json()) == "centroids"
    # with an anneal phase the retraining runs at the centroid learning rate too
    annealed = tiny(anneal_steps=2).to_json()
    assert _first_stage_changed(["centroid_lr"], annealed, {**annealed, "centroid_lr": 1e-4}) == "retrain"
    assert _first_stage_changed(["centroid_steps", "retrain_steps"], old, tiny(centroid_steps=9, retrain_steps=9).to_json()) is None
    assert _first_stage_changed(["seed"], old, tiny(seed=1).to_json()) is None
