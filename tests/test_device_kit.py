"""The device-machine training kit (tools/device_kit.py, tools/device_train.sh), checked on the CPU with small numbers."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deepcomp import zoo

from .conftest import ROOT

SHIPPED = ROOT / "artifacts" / "bmshj2018-factorized-q3.pth.tar"
IN_TRAINING = ROOT / "artifacts" / "in-training" / "bmshj2018-factorized-q3.pth.tar"
SEED = IN_TRAINING if IN_TRAINING.exists() else SHIPPED  # what a device call continues by default


def test_the_slim_tree_keeps_the_package_the_device_tools_and_the_seed(load_tool):
    kit = load_tool("device_kit")
    tracked = ["deepcomp/cli.py", "deepcomp/zoo.py", "pyproject.toml", "tools/device_train.sh", "tools/device_kit.py", "tools/run.sh",
               "tools/headline.py", "README.md", "tests/test_cli.py", "artifacts/bmshj2018-factorized-q3.pth.tar",
               "artifacts/bmshj2018-factorized-q1.pth.tar", "artifacts/headline/README.md"]
    gone = kit.to_delete(tracked, "artifacts/bmshj2018-factorized-q3.pth.tar")
    assert gone == ["tools/headline.py", "README.md", "tests/test_cli.py", "artifacts/bmshj2018-factorized-q1.pth.tar",
                    "artifacts/headline/README.md"]


def test_the_seed_is_the_quality_3_in_training_where_there_is_one(load_tool, monkeypatch, tmp_path):
    kit = load_tool("device_kit")
    monkeypatch.setattr(kit, "ROOT", tmp_path)
    (tmp_path / "artifacts" / "in-training").mkdir(parents=True)
    (tmp_path / "artifacts" / "bmshj2018-factorized-q3.pth.tar").write_bytes(b"")
    assert kit.default_seed() == tmp_path / "artifacts" / "bmshj2018-factorized-q3.pth.tar"
    (tmp_path / "artifacts" / "in-training" / "bmshj2018-factorized-q3.pth.tar").write_bytes(b"")
    assert kit.default_seed() == tmp_path / "artifacts" / "in-training" / "bmshj2018-factorized-q3.pth.tar"


def test_prepare_refuses_uncommitted_changes(load_tool, monkeypatch, capsys):
    kit = load_tool("device_kit")
    monkeypatch.setattr(kit, "git", lambda *a: " M deepcomp/cli.py\n" if a[0] == "status" else "")
    assert kit.main(["prepare"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "uncommitted" in err


def test_device_train_needs_out():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", "tools/device_train.sh", "1", "1"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "OUT must name" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not SEED.exists(), reason="no quality-3 baseline here")
def test_device_train_runs_on_the_cpu_and_returns_loadable_models(tmp_path):
    """The whole device script with tiny numbers: q3 resumes the seed (the quality 3 in training, else the shipped
    one), q1 starts from it, both come back."""
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):  # ten photos: deepcomp train holds every tenth out for validation
        im = np.kron(rng.random((8, 8, 3)), np.ones((16, 16, 1))) * 255
        Image.fromarray(im.astype(np.uint8)).save(data / f"{i:03d}.jpg", quality=98)
    env = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), DATA=str(data), BATCH="2", PATCH="32",
               QUALITIES="1", PY=sys.executable, OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", "tools/device_train.sh", "0.01", "0.01"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    back = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert back == ["bmshj2018-factorized-q1.pth.tar", "bmshj2018-factorized-q3.pth.tar", "device.log"]
    seed_step = torch.load(SEED, weights_only=True, map_location="cpu")["train_state"]["step"]
    for q, more_than in ((3, seed_step), (1, 0)):
        ckpt = torch.load(tmp_path / "out" / f"bmshj2018-factorized-q{q}.pth.tar", weights_only=True, map_location="cpu")
        assert ckpt["train_state"]["step"] > more_than and ckpt["config"]["quality"] == q
        assert ckpt["config"]["batch_size"] == 2 and ckpt["config"]["patch_size"] == 32
        assert "optimizer" not in ckpt["train_state"]  # the Adam moments stay behind (the 16 MiB-a-file limit)
        zoo.assign_weights(zoo.build("bmshj2018-factorized", q), ckpt["state_dict"], "returned")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "== q3" in log and "== q1" in log and "val loss" in log
    assert f"seed: {SEED.relative_to(ROOT)}\n" in log
