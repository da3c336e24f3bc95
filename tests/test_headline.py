"""tools/headline.py: the family table, the choice of the headline, one tiny end-to-end run."""

import csv
import json
import math
import shutil

import pytest
import torch

from deepcomp import evaluation
from deepcomp.errors import DeepCompError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("headline")


def test_parse_setting(tool):
    assert tool.parse_setting("prune0.85-bits4") == ("prune", 0.85, 4)
    assert tool.parse_setting("prune0-bits8") == ("prune", 0.0, 8)
    assert tool.parse_setting("alloc21-bits5") == ("alloc", 21.0, 5)
    assert tool.parse_setting("alloc23.5-bits5") == ("alloc", 23.5, 5)
    from deepcomp.errors import DeepCompError

    for bad in ("prune1.5-bits4", "prune0.5-bits0", "share5", "prune0.5", "alloc0.5-bits5", "alloc20", "alloc20-bits17"):
        with pytest.raises(DeepCompError):
            tool.parse_setting(bad)


def test_control_qualities_add_up_across_repeated_options(tool):
    parse = lambda *a: tool.build_parser().parse_args(["ckpt", *a]).control  # noqa: E731
    assert parse() is None and parse("--control") == []  # none; every quality
    assert parse("--control", "3", "--control", "1") == [3, 1] and parse("--control", "2", "4") == [2, 4]


def test_setting_config(tool):
    from deepcomp.pipeline import PipelineConfig
    from deepcomp.policy import Policy

    fields = tool.setting_config("prune0.8-bits4")
    assert fields == {"policy": Policy().with_weight_rule(prune=0.8, bits=4).to_json()}
    fields = tool.setting_config("alloc21-bits5", [0, 0.5, 0.9])
    assert fields == {"target_ratio": 21.0, "sens_bits": (5,), "sens_ratios": (0.0, 0.5, 0.9)}
    PipelineConfig(**fields).check()  # a valid pipeline configuration
    # --raw-storage fp16: the tensors left unshared are stored in 16 bits, the shared ones as before
    for spec in ("prune0.8-bits4", "alloc21-bits5"):
        fields = tool.setting_config(spec, [0, 0.5, 0.9], "fp16")
        PipelineConfig(**fields).check()
        policy = Policy.from_json(fields["policy"])
        assert policy.rule_for("g_a.0.bias", (128,)).storage == "fp16"
        assert policy.rule_for("entropy_bottleneck.matrices.0", (192, 3, 1)).storage == "fp16"
        assert policy.rule_for("g_a.2.weight", (128, 128, 5, 5)).bits == (4 if spec.startswith("prune") else 8)
    assert tool.setting_config("alloc21-bits5", [0, 0.5, 0.9], "fp16")["target_ratio"] == 21.0
    with pytest.raises(DeepCompError, match="raw storage"):
        Policy().with_raw_storage("int8")


def _rows(setting, ratio, bd):
    return [{"setting": setting, "stage": s, "min_ratio": ratio, "bd_rate_psnr": bd if s == "huffman" else 99.0}
            for s in tool_stages()]


def tool_stages():
    return ("prune", "retrain", "share", "centroids", "huffman")


def test_pick_headline(tool):
    rows = _rows("a", 25.0, 1.5) + _rows("b", 35.0, 4.0) + _rows("c", 40.0, 9.0) + _rows("d", 18.0, 0.1) + _rows("e", 50.0, math.nan)
    c = tool.pick(rows, 20.0, 2.0, 5.0)
    assert c["headline"]["setting"] == "a"
    assert c["largest_at_relaxed"]["setting"] == "b"
    assert c["best_bd"]["setting"] == "d"
    assert tool.pick(rows, 30.0, 2.0, 5.0)["headline"] is None
    assert tool.shipped_settings(rows, c, 20.0) == ["a", "b"]  # the headline, and the largest ratio at <= 5 %
    assert c["reference"] == "baselines" and tool.reference_key(rows) == "bd_rate_psnr"
    # no headline: the smallest validation loss increase (training photos), never Kodak's BD-PSNR
    val = [dict(r, bd_psnr_db={"a": -1.0, "b": -0.5, "c": -3.0, "d": 0.2, "e": 5.0}[r["setting"]],
                val_loss_increase_pct={"a": 2.0, "b": 3.0, "c": 1.0, "d": 0.5, "e": math.nan}[r["setting"]]) for r in rows]
    assert tool.shipped_settings(val, tool.pick(val, 60.0, 2.0, 5.0), 60.0) == ["d", "b"]  # none reaches 60x: among all
    assert tool.shipped_settings(val, tool.pick(val, 30.0, 2.0, 5.0), 30.0) == ["c", "b"]  # of those at 30x, c (e has none)
    base = [{"val_loss": 2.0}, {"val_loss": 1.0}]
    assert tool._val_increase(base, [{"val_loss": 2.2}, {"val_loss": 1.0}]) == pytest.approx(5.0)
    assert math.isnan(tool._val_increase(base, [{"val_loss": None}, {"val_loss": 1.0}]))

    # with a family BD-rate against the controls for every setting, the headline is judged against them
    ctrl = {"a": 6.0, "b": 12.0, "c": 20.0, "d": 1.0, "e": 30.0}
    vs = [dict(r, bd_rate_psnr_vs_control=ctrl[r["setting"]] if r["stage"] == "huffman" else 99.0) for r in rows]
    assert tool.reference_key(vs) == "bd_rate_psnr_vs_control"
    cv = tool.pick(vs, 20.0, 2.0, 5.0, tool.reference_key(vs))
    assert cv["reference"] == "controls" and cv["headline"] is None and cv["largest_at_relaxed"]["setting"] == "d"
    assert tool.pick(vs, 15.0, 7.0, 5.0, "bd_rate_psnr_vs_control")["headline"]["setting"] == "a"
    assert tool.reference_key(vs[:-1] + [dict(vs[-1], bd_rate_psnr_vs_control=math.nan)]) == "bd_rate_psnr"


def test_family_bd_rate_of_identical_curves_is_zero(tool):
    def table(bpp, psnr, ratio):
        rows = [{"stage": "baseline", "label": "baseline", "bytes": 100, "ratio": 1.0, "bpp": bpp, "psnr": psnr, "ms_ssim": 0.9}]
        for s in tool_stages():
            rows.append({"stage": s, "label": s, "bytes": 100 / ratio, "ratio": ratio, "bpp": bpp * (1.1 if s == "prune" else 1.0),
                         "psnr": psnr, "ms_ssim": 0.9 + psnr / 1000})
        rows[0]["ms_ssim"] = 0.9 + psnr / 1000
        return {"rows": rows, "fp32_bytes": 100}

    per_q = {1: table(0.2, 27.0, 20.0), 2: table(0.3, 28.5, 25.0), 3: table(0.45, 30.0, 30.0)}
    rows = {r["stage"]: r for r in tool.family_rows("s", per_q, {1: 110, 2: 110, 3: 110})}
    assert rows["huffman"]["bd_rate_psnr"] == pytest.approx(0.0, abs=1e-9)
    assert rows["huffman"]["bd_psnr_db"] == pytest.approx(0.0, abs=1e-9)
    assert rows["prune"]["bd_psnr_db"] < 0  # more bits for the same PSNR: less PSNR at the same bits
    assert rows["prune"]["bd_rate_psnr"] == pytest.approx(10.0, rel=1e-6)  # 10 % more bits everywhere
    assert rows["huffman"]["min_ratio"] == 20.0
    assert rows["huffman"]["family_ratio"] == pytest.approx(300 / (5 + 4 + 100 / 30))
    assert rows["huffman"]["min_ratio_vs_checkpoint_file"] == pytest.approx(110 / 5)


def test_end_to_end_tiny(tool, synthetic_photos, kodak_two, tmp_path, capsys):
    photos = synthetic_photos
    from deepcomp import zoo

    ckpts = []
    for q in (1, 3):
        torch.manual_seed(q)
        m = zoo.build("bmshj2018-factorized", q)
        m.update(force=True)
        p = tmp_path / f"q{q}.pth.tar"
        torch.save({"state_dict": m.state_dict(), "config": {"arch": "bmshj2018-factorized", "quality": q}}, p)
        ckpts.append(str(p))
    out, work = tmp_path / "out", tmp_path / "work"
    args = ckpts + ["--setting", "prune0.5-bits4", "-o", str(out), "--work", str(work), "--retrain-steps", "2", "--prune-rounds", "1",
                    "--centroid-steps", "1", "--batch-size", "2", "--patch-size", "32", "--val-every", "2", "--val-fraction", "0.5",
                    "--val-patch", "48", "--data", str(photos), "--eval-data", str(kodak_two), "--eval-limit", "1", "--quiet"]
    assert tool.main(args) == 0
    rows = list(csv.DictReader((out / "headline.csv").open()))
    assert [r["stage"] for r in rows] == list(tool_stages())
    finals = [json.loads((work / "prune0.5-bits4" / f"q{q}" / "stages.json").read_text()) for q in (1, 3)]
    ratios = [next(r["ratio"] for r in t["rows"] if r["stage"] == "huffman") for t in finals]
    assert float(rows[-1]["min_ratio"]) == pytest.approx(min(ratios))
    assert (out / "rd_psnr.png").stat().st_size > 0 and (out / "stages" / "prune0.5-bits4-q3.md").is_file()
    assert sorted(p.name for p in (out / "models").glob("*.dcmp")) == ["bmshj2018-factorized-q1-prune0.5-bits4.dcmp",
                                                                       "bmshj2018-factorized-q3-prune0.5-bits4.dcmp"]
    doc = json.loads((out / "headline.json").read_text())  # strict JSON: no NaN
    assert doc["images"] == 1 and "tools/headline.py" in doc["command"]
    # the baselines were evaluated once and their result reused by the pipelines
    assert (work / "baselines" / "q1" / "baseline.json").is_file()
    # a rerun finishes from what is there
    mtime = (work / "prune0.5-bits4" / "q1" / "final.dcmp").stat().st_mtime_ns
    assert tool.main(args) == 0
    assert (work / "prune0.5-bits4" / "q1" / "final.dcmp").stat().st_mtime_ns == mtime
    # one quality alone (its finished work reused): no BD-rate, and no verdict on the target
    one = tmp_path / "one"
    assert tool.main([ckpts[1]] + [str(one) if a == str(out) else a for a in args[len(ckpts):]]) == 0
    md = (one / "headline.md").read_text()
    assert "One quality only: no BD-rate" in md and "No setting reached" not in md and "Largest ratio" not in md
    # the control: the baseline of quality 3 trained on, unpruned, for retrain + centroid steps
    assert tool.main(args + ["--control", "3"]) == 0
    doc = json.loads((out / "headline.json").read_text())
    assert set(doc["controls"]) == {"3"} and doc["controls"]["3"]["settings"]["steps"] == 3
    cdir = tool.control_dir(work, 3, 1e-5) / "q3"
    from deepcomp.checkpoints import read_state_dict

    base, ctrl = read_state_dict(ckpts[1]), read_state_dict(cdir / "control.pth.tar")
    w = "g_a.0.weight"
    assert not torch.equal(base[w], ctrl[w]) and bool((ctrl[w] != 0).all())  # trained, and nothing pruned
    md = (out / "headline.md").read_text()
    assert "## Control" in md and "**Against the controls**" in md and "q3: " in md
    with pytest.raises(SystemExit):  # a quality without a baseline is refused
        tool.build_parser().parse_args(["--control", "x"])
    assert tool.main(args + ["--control", "4"]) == 2

    # --controls-only: the pipelines' folders are gone, the final files in OUT/models are kept
    shutil.rmtree(work / "prune0.5-bits4")
    mtime = (cdir / "control.pth.tar").stat().st_mtime_ns
    assert tool.main(args + ["--controls-only"]) == 0
    assert not (work / "prune0.5-bits4").exists()  # no pipeline ran
    assert (cdir / "control.pth.tar").stat().st_mtime_ns == mtime  # the finished quality-3 control is reused
    doc = json.loads((out / "controls.json").read_text())
    assert [r["quality"] for r in doc["rows"]] == [1, 3] and set(doc["controls"]) == {"1", "3"}
    final3 = evaluation.read_results(work / "finals" / "prune0.5-bits4" / "q3" / "final.json")
    r3 = doc["rows"][1]
    assert r3["final_psnr"] == pytest.approx(final3["mean"]["psnr"]) and r3["control_psnr"] == pytest.approx(doc["controls"]["3"]["psnr"])
    assert "BD-rate (PSNR)" in (out / "controls.md").read_text()

    # a control that ends as the pipeline does: the centroid steps at the centroid learning rate, in a folder of its own
    capsys.readouterr()
    assert tool.main(args + ["--controls-only", "--control", "3", "--control-schedule", "matched", "--centroid-lr", "1e-6"]) == 0
    mdir = tool.control_dir(work, 3, 1e-5, [(2, 1e-5), (3, 1e-6)]) / "q3"
    assert mdir != cdir and json.loads((mdir / "record.json").read_text())["settings"]["phases"] == [[2, 1e-5], [3, 1e-6]]
    err = capsys.readouterr().err
    assert "step 2: " in err and "lr 1.00e-05" in err.split("step 2: ")[1].splitlines()[0]
    assert "step 3: " in err and "lr 1.00e-06" in err.split("step 3: ")[1].splitlines()[0]
    assert "the last 1 at 1e-06" in (out / "controls.md").read_text()
    assert json.loads((out / "controls.json").read_text())["summary"]["control_phases"] == [[2, 1e-5], [3, 1e-6]]
    (out / "models" / "bmshj2018-factorized-q1-prune0.5-bits4.dcmp").unlink()
    capsys.readouterr()
    assert tool.main(args + ["--controls-only"]) == 2  # a missing final file: one-line error
    assert "no final file" in capsys.readouterr().err
    # ... and so is a final file made from another baseline (quality 3's file under quality 1's name)
    shutil.copyfile(out / "models" / "bmshj2018-factorized-q3-prune0.5-bits4.dcmp", out / "models" / "bmshj2018-factorized-q1-prune0.5-bits4.dcmp")
    assert tool.main(args + ["--controls-only"]) == 2
    assert "made from these baselines" in capsys.readouterr().err
    assert tool.made_from(out / "models" / "bmshj2018-factorized-q3-prune0.5-bits4.dcmp", ckpts[1])
    # ... after the controls are trained: beside a headline that is still running, they need no final file
    early = tmp_path / "early"
    assert tool.main(args + ["-o", str(early), "--controls-only", "--control", "1", "--control-schedule", "matched",
                                  "--centroid-lr", "1e-6"]) == 2
    assert not early.exists() or not (early / "controls.md").exists()
    assert json.loads((tool.control_dir(work, 3, 1e-5, [(2, 1e-5), (3, 1e-6)]) / "q1" / "record.json").read_text())["done"]


def test_family_rows_against_controls(tool):
    def table(bpp, psnr, shift):
        rows = [{"stage": "baseline", "label": "baseline", "bytes": 100, "ratio": 1.0, "bpp": bpp, "psnr": psnr, "ms_ssim": 0.9}]
        rows += [{"stage": s, "label": s, "bytes": 5, "ratio": 20.0, "bpp": bpp, "psnr": psnr + shift, "ms_ssim": 0.9} for s in tool_stages()]
        return {"rows": rows, "fp32_bytes": 100}

    pts = {1: (0.2, 27.0), 2: (0.3, 28.5), 3: (0.45, 30.0), 4: (0.6, 31.0)}
    per_q = {q: table(b, p, 0.5) for q, (b, p) in pts.items()}
    controls = {q: {"bpp": b, "psnr": p + 0.5, "ms_ssim": 0.9} for q, (b, p) in pts.items()}
    rows = {r["stage"]: r for r in tool.family_rows("s", per_q, {q: 100 for q in pts}, controls)}
    assert rows["huffman"]["bd_psnr_db"] == pytest.approx(0.5, abs=1e-6)  # better than the baselines...
    assert rows["huffman"]["bd_psnr_vs_control_db"] == pytest.approx(0.0, abs=1e-6)  # ...only as good as the controls
    partial = {r["stage"]: r for r in tool.family_rows("s", per_q, {q: 100 for q in pts}, {1: controls[1]})}
    assert math.isnan(partial["huffman"]["bd_psnr_vs_control_db"])


def test_bad_setting_is_one_line(tool, tmp_path, capsys):
    assert tool.main(["x.pth.tar", "--setting", "share5", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad setting" in err[0]


def test_kernel_settings_prune_whole_kernels(tool):
    from deepcomp.policy import Policy

    assert tool.parse_setting("alloc21-bits5-kernel") == ("alloc", 21.0, 5) and tool.granularity_of("alloc21-bits5-kernel") == "kernel"
    cfg = tool.setting_config("alloc21-bits5-kernel")
    assert cfg["target_ratio"] == 21.0 and Policy.from_json(cfg["policy"]).rule_for("g_a.2.weight", (128, 128, 5, 5)).granularity == "kernel"
    prune = Policy.from_json(tool.setting_config("prune0.7-bits4-kernel", raw_storage="fp16")["policy"]).rule_for("g_a.2.weight", (128, 128, 5, 5))
    assert (prune.prune, prune.bits, prune.granularity, prune.storage) == (0.7, 4, "kernel", "fp16")
    assert tool.setting_config("alloc21-bits5") == {"target_ratio": 21.0, "sens_bits": (5,), "sens_ratios": tuple(tool.ALLOC_RATIOS)}
    with pytest.raises(DeepCompError):
        tool.parse_setting("alloc21-bits5-channel")


def test_control_schedule_default_is_matched(tool):
    base = ["x-q3.pth.tar", "--retrain-steps", "1000", "--centroid-steps", "200", "--lr", "1e-4", "--centroid-lr", "1e-5"]
    assert tool.control_phases(tool.build_parser().parse_args(base)) == [(1000, 1e-4), (1200, 1e-5)]
    assert tool.control_phases(tool.build_parser().parse_args(base + ["--control-schedule", "flat"])) == [(1200, 1e-4)]
    # an anneal phase at the end of the retraining: the control's low-rate phase starts as early
    annealed = tool.build_parser().parse_args(base + ["--anneal-steps", "200"])
    assert tool.control_phases(annealed) == [(800, 1e-4), (1200, 1e-5)]
    assert "the last 400 at 1e-05" in tool.control_lr_text(annealed)


def test_allocation_md_lists_the_chosen_ratios(tool, tmp_path):
    import json

    for q, ratio in ((1, 0.9), (3, 0.95)):
        d = tmp_path / "alloc20-bits5" / f"q{q}"
        d.mkdir(parents=True)
        choices = {"g_a.0.weight": {"ratio": 0.0, "bits": 5}, "g_a.6.weight": {"ratio": ratio, "bits": 5}}
        (d / "policy.json").write_text(json.dumps({"allocation": {"choices": choices}}))
        (d / "sensitivity.json").write_text(json.dumps({"layers": {"g_a.0.weight": {"size": 9600}, "g_a.6.weight": {"size": 614400}}}))
    lines = tool.allocation_md(tmp_path, {"prune0.5-bits5": {1: {}}, "alloc20-bits5": {1: {}, 3: {}}})
    text = "\n".join(lines)
    assert "`alloc20-bits5`" in text and "prune0.5" not in text
    assert "| `g_a.6.weight` | 614,400 | 0.90 / 5 b | 0.95 / 5 b |" in text
    assert "| `g_a.0.weight` | 9,600 | 0.00 / 5 b | 0.00 / 5 b |" in text
    assert tool.allocation_md(tmp_path, {"prune0.5-bits5": {1: {}}}) == []
