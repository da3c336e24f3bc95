"""The command line: real runs and one-line errors for bad input."""

import json

import pytest
import torch

from deepcomp import cli


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_inspect_decompress(random_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.dcmp"
    code, text, _ = run(capsys, "compress", random_checkpoint, "-o", out, "--arch", "bmshj2018-factorized", "--quality", 3, "--prune", 0.5, "--bits", 6, "--quiet")
    assert code == 0 and "smaller" in text and out.exists()
    code, text, _ = run(capsys, "inspect", out)
    assert code == 0 and "g_a.2.weight" in text and "x smaller" in text
    code, text, _ = run(capsys, "inspect", out, "--json")
    info = json.loads(text)
    row = next(r for r in info["tensors"] if r["name"] == "g_a.2.weight")
    assert abs(row["density"] - 0.5) < 1e-3 and row["bits"] == 6 and row["codebook"] <= 64
    ck = tmp_path / "back.pth.tar"
    code, _, _ = run(capsys, "decompress", out, "-o", ck)
    assert code == 0
    # CompressAI's own loader takes the result
    from compressai.zoo.image import model_architectures

    net = model_architectures["bmshj2018-factorized"].from_state_dict(torch.load(ck, weights_only=True)["state_dict"])
    net.update(force=True)


def test_policy_file(random_checkpoint, tmp_path, capsys):
    policy = {"rules": [
        {"pattern": "*entropy_bottleneck*"},
        {"pattern": "g_a.*", "kind": "weight", "prune": 0.3, "bits": 7},
        {"pattern": "g_s.*", "kind": "weight", "prune": 0.6, "bits": 4, "init": "density"},
        {"min_size": 1024, "bits": 6, "quantizer": "uniform"},
        {"storage": "fp16"}]}
    (tmp_path / "p.json").write_text(json.dumps(policy))
    out = tmp_path / "m.dcmp"
    code, _, err = run(capsys, "compress", random_checkpoint, "-o", out, "--arch", "bmshj2018-factorized", "--quality", 3, "--policy", tmp_path / "p.json", "--quiet")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(run(capsys, "inspect", out, "--json")[1])["tensors"]}
    assert abs(rows["g_a.2.weight"]["density"] - 0.7) < 1e-3 and rows["g_a.2.weight"]["bits"] == 7
    assert abs(rows["g_s.2.weight"]["density"] - 0.4) < 1e-3 and rows["g_s.2.weight"]["codebook"] <= 16
    assert rows["g_a.1.gamma"]["quantizer"] == "uniform"
    assert rows["g_a.0.bias"]["quantizer"] == "fp16" and rows["entropy_bottleneck.quantiles"]["quantizer"] == "fp32"


@pytest.fixture(scope="module")
def good_file(random_checkpoint, tmp_path_factory):
    good = tmp_path_factory.mktemp("good") / "good.dcmp"
    assert cli.main(["compress", str(random_checkpoint), "-o", str(good), "--quiet", "--bits", "3"]) == 0
    return good


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "{missing}", "-o", "{out}"], "checkpoint not found"),
        (["compress", "{garbage}", "-o", "{out}"], "cannot read checkpoint"),
        (["compress", "{ckpt}", "-o", "{out}", "--arch", "nonsense", "--quality", "3"], "unknown architecture"),
        (["compress", "{ckpt}", "-o", "{out}", "--arch", "bmshj2018-hyperprior", "--quality", "3"], "does not fit"),
        (["compress", "{ckpt}", "-o", "{out}", "--policy", "{garbage}"], "not valid JSON"),
        (["compress", "{ckpt}", "-o", "{out}", "--policy", "{badpolicy}"], "unknown field"),
        (["compress", "{ckpt}", "-o", "{tmp}/no/such/dir/x.dcmp"], "output folder does not exist"),
        (["inspect", "{garbage}"], "not a deepcomp file"),
        (["inspect", "{truncated}"], "corrupt"),
        (["decompress", "{missing}", "-o", "{out}"], "file not found"),
    ],
)
def test_bad_input_is_one_line_error(argv, message, random_checkpoint, good_file, tmp_path, capsys):
    (tmp_path / "garbage").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "badpolicy").write_text(json.dumps({"rules": [{"patern": "*"}]}))
    (tmp_path / "truncated").write_bytes(good_file.read_bytes()[:-100])
    subst = dict(missing=tmp_path / "missing.pth", garbage=tmp_path / "garbage", ckpt=random_checkpoint, out=tmp_path / "out.dcmp",
                 badpolicy=tmp_path / "badpolicy", truncated=tmp_path / "truncated", tmp=tmp_path)
    code, out, err = run(capsys, *[a.format(**subst) for a in argv])
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.dcmp").exists()


def test_bad_option_values_exit_nonzero(capsys):
    for argv in (["compress", "x", "-o", "y", "--prune", "1.5"], ["compress", "x", "-o", "y", "--bits", "0"], ["nonsense"],
                 ["train", "-o", "y", "--minutes", "0"], ["train", "-o", "y", "--lr", "fast"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code != 0
        assert "Traceback" not in capsys.readouterr().err


def test_train_options_say_the_defaults_training_uses():
    """cli imports training lazily, so `train`'s help spells some defaults itself: they must not drift."""
    import re

    from deepcomp import training

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    opts = {a.dest: a for a in sub.choices["train"]._actions}
    cfg = training.TrainConfig()
    assert set(opts["precision"].choices) == set(training.PRECISIONS)
    assert opts["precision"].default == cfg.precision
    for dest, value in (("lr", cfg.lr), ("lr_patience", cfg.lr_patience)):
        said = re.search(r"default ([0-9.e+-]+)", opts[dest].help)
        assert said and float(said.group(1)) == value, dest
    for dest in ("batch_size", "patch_size", "val_every", "seed", "steps", "arch", "quality", "compile"):
        assert opts[dest].default == getattr(cfg, dest), dest
