"""The shell wrappers over `deepcomp train`/`export` (tools/continue_baseline.sh, tools/device_settle.sh,
tools/train_family.sh, tools/train_hyperprior.sh): which
commands they run, checked with a stand-in `python` (PY=) that records its arguments in a copy of the repository."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

STEP = 1000  # what the stand-in says a checkpoint has reached (tools/checkpoint_step.py)
FAKE_PY = f"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = tools/checkpoint_step.py ]; then echo {STEP}; fi
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    """A bare copy of the repository's layout: the scripts under test and a stand-in python."""
    (tmp_path / "tools").mkdir()
    for name in ("continue_baseline.sh", "device_settle.sh", "train_family.sh", "train_hyperprior.sh"):
        shutil.copy(ROOT / "tools" / name, tmp_path / "tools" / name)
    (tmp_path / "artifacts").mkdir()
    py = tmp_path / "fake-python"
    py.write_text(FAKE_PY)
    py.chmod(0o755)
    return tmp_path


def run_script(repo: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("LR", "LR_PATIENCE", "MINUTES", "QUALITY", "ANNEAL", "ANNEAL_LR", "THREADS", "PRECISION", "COMPILE",
                         "JOBS", "DEST", "BASE", "QUALITIES", "PATCH", "RUNDIR", "START", "LARGE_STEPS", "ARCH",
                         "LARGE_PATCH")}
    calls = repo / "calls.txt"
    calls.unlink(missing_ok=True)
    r = subprocess.run(["bash", *args], cwd=repo, capture_output=True, text=True,
                       env={**base, "PY": str(repo / "fake-python"), "CALLS": str(calls), **env})
    return r, [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


def option(call: list[str], name: str) -> str | None:
    return call[call.index(name) + 1] if name in call else None


def cli(calls: list[list[str]], command: str) -> list[list[str]]:
    """The recorded `python -m deepcomp.cli COMMAND ...` calls, in order."""
    return [c for c in calls if c[:3] == ["-m", "deepcomp.cli", command]]


def trains(calls: list[list[str]]) -> list[list[str]]:
    return cli(calls, "train")


def test_a_fresh_run_resumes_the_shipped_baseline_at_1e4_then_anneals_exports_and_cards(repo):
    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000")
    assert r.returncode == 0, r.stderr
    run, anneal = trains(calls)
    assert option(run, "--resume") == "artifacts/bmshj2018-factorized-q3.pth.tar"
    assert option(run, "-o") == "runs/q3long/q3.train.pth.tar"
    assert (option(run, "--lr"), option(run, "--steps"), option(run, "--quality")) == ("1e-4", "5000", "3")
    assert option(run, "--lr-patience") is None and option(run, "--minutes") is None and "--compile" not in run
    assert option(run, "--patch-size") == "128"
    assert option(anneal, "--resume") == "runs/q3long/q3.train.pth.tar"
    assert (option(anneal, "--steps"), option(anneal, "--lr")) == (str(STEP + 300), "1e-5")
    export = cli(calls, "export")[0]
    assert export[3:] == ["runs/q3long/q3-annealed.train.pth.tar", "-o", "artifacts/in-training/bmshj2018-factorized-q3.pth.tar"]
    assert calls[-1] == ["tools/baseline_card.py", "artifacts/in-training/bmshj2018-factorized-q3.pth.tar",
                         "--data", "../shared/data/kodak"]


def test_a_local_run_resumes_at_its_own_rate_unless_lr_is_given(repo):
    (repo / "artifacts" / "in-training").mkdir()
    (repo / "artifacts" / "in-training" / "bmshj2018-factorized-q3.pth.tar").write_bytes(b"")
    (repo / "runs" / "q3long").mkdir(parents=True)
    (repo / "runs" / "q3long" / "q3.train.pth.tar").write_bytes(b"")
    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000")
    assert r.returncode == 0, r.stderr
    run = trains(calls)[0]
    assert option(run, "--resume") == "artifacts/in-training/bmshj2018-factorized-q3.pth.tar"
    assert option(run, "--lr") is None

    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000", LR="5e-5", LR_PATIENCE="24", MINUTES="7",
                          PRECISION="bf16", THREADS="2", COMPILE="1")
    assert r.returncode == 0, r.stderr
    run, anneal = trains(calls)
    assert [option(run, o) for o in ("--lr", "--lr-patience", "--minutes", "--precision", "--threads")] == \
        ["5e-5", "24", "7", "bf16", "2"]
    # the anneal keeps the precision, threads and compilation, not the training phase's rate, patience or time limit
    assert "--compile" in run and "--compile" in anneal
    assert [option(anneal, o) for o in ("--lr", "--lr-patience", "--minutes", "--precision", "--threads")] == \
        ["1e-5", None, None, "bf16", "2"]


def test_anneal_0_exports_the_run_itself_and_quality_names_the_paths(repo):
    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000", ANNEAL="0", QUALITY="5")
    assert r.returncode == 0, r.stderr
    (run,) = trains(calls)
    assert option(run, "--quality") == "5" and option(run, "-o") == "runs/q5long/q5.train.pth.tar"
    export = cli(calls, "export")[0]
    assert export[3:] == ["runs/q5long/q5.train.pth.tar", "-o", "artifacts/in-training/bmshj2018-factorized-q5.pth.tar"]


def test_arch_continues_another_architecture_from_its_own_export_in_its_own_folder(repo):
    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000")
    assert r.returncode == 0, r.stderr
    assert all(option(c, "--arch") == "bmshj2018-factorized" for c in trains(calls))

    (repo / "artifacts" / "in-training").mkdir(exist_ok=True)  # the script made it for the factorized export
    (repo / "artifacts" / "in-training" / "bmshj2018-hyperprior-q3.pth.tar").write_bytes(b"")
    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000", ARCH="bmshj2018-hyperprior", PATCH="256")
    assert r.returncode == 0, r.stderr
    run, anneal = trains(calls)
    assert option(run, "--resume") == "artifacts/in-training/bmshj2018-hyperprior-q3.pth.tar"
    assert option(run, "-o") == "runs/hyperprior-q3long/q3.train.pth.tar"
    assert option(run, "--arch") == option(anneal, "--arch") == "bmshj2018-hyperprior"
    assert option(anneal, "--patch-size") == "256"
    export = cli(calls, "export")[0]
    assert export[3:] == ["runs/hyperprior-q3long/q3-annealed.train.pth.tar", "-o",
                          "artifacts/in-training/bmshj2018-hyperprior-q3.pth.tar"]


def test_a_branch_trains_its_own_crops_in_its_own_folder_from_start(repo):
    seed = "artifacts/in-training/bmshj2018-factorized-q3.pth.tar"
    branch = dict(PATCH="256", RUNDIR="runs/q3p256", DEST="runs/q3p256/model", START=seed)
    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000", **branch)
    assert r.returncode == 1 and "START" in r.stderr and calls == []  # a missing START is an error, not the shipped model

    (repo / "artifacts" / "in-training").mkdir()
    (repo / seed).write_bytes(b"")
    r, calls = run_script(repo, "tools/continue_baseline.sh", "5000", **branch)
    assert r.returncode == 0, r.stderr
    run, anneal = trains(calls)
    assert option(run, "--resume") == seed and option(run, "-o") == "runs/q3p256/q3.train.pth.tar"
    assert option(run, "--patch-size") == option(anneal, "--patch-size") == "256"
    assert option(anneal, "-o") == "runs/q3p256/q3-annealed.train.pth.tar"
    export = cli(calls, "export")[0]
    assert export[3:] == ["runs/q3p256/q3-annealed.train.pth.tar", "-o", "runs/q3p256/model/bmshj2018-factorized-q3.pth.tar"]
    assert calls[-1][:2] == ["tools/baseline_card.py", "runs/q3p256/model/bmshj2018-factorized-q3.pth.tar"]


def test_continue_baseline_needs_a_step_count(repo):
    r, calls = run_script(repo, "tools/continue_baseline.sh")
    assert r.returncode != 0 and "usage" in r.stderr and calls == []


def test_device_settle_anneals_and_exports_each_returned_model_then_cards_them_together(repo):
    back = repo / "back"
    back.mkdir()
    for q in (3, 5):
        (back / f"bmshj2018-factorized-q{q}.pth.tar").write_bytes(b"")
    (back / "notes.txt").write_text("not a model")
    r, calls = run_script(repo, "tools/device_settle.sh", str(back), ANNEAL_LR="2e-5")
    assert r.returncode == 0, r.stderr
    t3, t5 = trains(calls)
    assert (option(t3, "--quality"), option(t5, "--quality")) == ("3", "5")
    assert option(t3, "--resume") == f"{back}/bmshj2018-factorized-q3.pth.tar"
    assert (option(t5, "--steps"), option(t5, "--lr")) == (str(STEP + 300), "2e-5")
    assert calls[-1] == ["tools/baseline_card.py", "artifacts/in-training/bmshj2018-factorized-q3.pth.tar",
                         "artifacts/in-training/bmshj2018-factorized-q5.pth.tar", "--data", "../shared/data/kodak"]


def test_device_settle_says_so_when_the_folder_holds_no_model(repo):
    (repo / "empty").mkdir()
    r, calls = run_script(repo, "tools/device_settle.sh", str(repo / "empty"))
    assert r.returncode == 1 and calls == []
    assert r.stderr.strip().splitlines() == [f"device_settle: no bmshj2018-factorized-q*.pth.tar in {repo / 'empty'}"]


def test_train_family_fine_tunes_the_other_qualities_from_quality_3_then_cards_the_family(repo):
    r, calls = run_script(repo, "tools/train_family.sh", "2000")
    assert r.returncode == 0, r.stderr
    runs = trains(calls)
    assert [option(c, "--quality") for c in runs] == ["1", "1", "2", "2", "4", "4", "5", "5"]
    first, anneal = runs[:2]
    assert option(first, "--init") == "artifacts/bmshj2018-factorized-q3.pth.tar" and option(first, "--lr") is None
    assert option(first, "--lr-patience") is None and option(anneal, "--lr-patience") is None
    assert option(first, "-o") == option(anneal, "-o") == f"runs/family/q1-from-q3-step{STEP}.train.pth.tar"
    assert (option(anneal, "--steps"), option(anneal, "--lr"), option(anneal, "--init")) == ("2200", "1e-5", None)
    assert not any("--compile" in c for c in runs)
    exports = cli(calls, "export")
    assert [c[-1] for c in exports] == [f"artifacts/bmshj2018-factorized-q{q}.pth.tar" for q in (1, 2, 4, 5)]
    assert calls[-1][0] == "tools/baseline_card.py" and calls[-1][-2:] == ["--data", "../shared/data/kodak"]


def test_train_family_dest_seeds_from_its_own_quality_3_and_compile_reaches_every_run(repo):
    dest = repo / "artifacts" / "in-training"
    dest.mkdir()
    for q in (3, 5):
        (dest / f"bmshj2018-factorized-q{q}.pth.tar").write_bytes(b"")
    r, calls = run_script(repo, "tools/train_family.sh", "100", DEST="artifacts/in-training", COMPILE="1",
                          QUALITIES="5", ANNEAL="0", PRECISION="bf16", LR="5e-5", LR_PATIENCE="12")
    assert r.returncode == 0, r.stderr
    (run,) = trains(calls)
    assert (option(run, "--lr"), option(run, "--lr-patience")) == ("5e-5", "12")
    assert option(run, "--init") == "artifacts/in-training/bmshj2018-factorized-q3.pth.tar"
    assert "--compile" in run and option(run, "--precision") == "bf16"
    export = cli(calls, "export")[0]
    assert export[-1] == "artifacts/in-training/bmshj2018-factorized-q5.pth.tar"
    # the card covers the whole family in DEST, quality 3 included
    assert calls[-1] == ["tools/baseline_card.py", "artifacts/in-training/bmshj2018-factorized-q3.pth.tar",
                         "artifacts/in-training/bmshj2018-factorized-q5.pth.tar", "--data", "../shared/data/kodak"]


def test_train_hyperprior_seeds_from_the_factorized_quality_3_then_anneals_exports_and_cards(repo):
    r, calls = run_script(repo, "tools/train_hyperprior.sh", str(STEP), LARGE_STEPS="0")
    assert r.returncode == 0, r.stderr
    run, anneal = trains(calls)
    assert option(run, "--arch") == "bmshj2018-hyperprior" and "--init-matching" in run
    assert option(run, "--init") == "artifacts/bmshj2018-factorized-q3.pth.tar"
    assert option(run, "-o") == option(anneal, "-o") == f"runs/hyperprior/q3-from-factorized-step{STEP}.train.pth.tar"
    assert (option(anneal, "--steps"), option(anneal, "--lr")) == (str(STEP + 300), "1e-5")
    assert not any("--compile" in c or "--precision" in c for c in (run, anneal))
    assert cli(calls, "export")[0][-1] == "artifacts/bmshj2018-hyperprior-q3.pth.tar"
    assert calls[-1] == ["tools/baseline_card.py", "artifacts/bmshj2018-hyperprior-q3.pth.tar", "--data", "../shared/data/kodak"]

    # a run stopped by MINUTES short of STEPS says so and exports nothing (a rerun continues it)
    r, calls = run_script(repo, "tools/train_hyperprior.sh", str(STEP + 1), MINUTES="5", LARGE_STEPS="0")
    assert r.returncode == 0 and "rerun to continue" in r.stderr
    assert len(trains(calls)) == 1 and cli(calls, "export") == [] and option(trains(calls)[0], "--minutes") == "5"


def test_train_hyperprior_dest_seeds_from_its_own_factorized_model_with_precision_and_compile(repo):
    r, calls = run_script(repo, "tools/train_hyperprior.sh", str(STEP), DEST="artifacts/in-training", PRECISION="bf16",
                          COMPILE="1", LARGE_STEPS="0")
    assert r.returncode == 0, r.stderr
    run, anneal = trains(calls)
    assert option(run, "--init") == "artifacts/in-training/bmshj2018-factorized-q3.pth.tar"
    assert all("--compile" in c and option(c, "--precision") == "bf16" for c in (run, anneal))
    assert cli(calls, "export")[0][-1] == "artifacts/in-training/bmshj2018-hyperprior-q3.pth.tar"
    assert calls[-1][1] == "artifacts/in-training/bmshj2018-hyperprior-q3.pth.tar"


def test_train_hyperprior_goes_on_to_larger_crops_in_a_run_of_its_own_then_anneals_and_exports_that(repo):
    # the stand-in says every checkpoint is at STEP: 400 + 100 (anneal) + 500 larger-crop steps end there
    r, calls = run_script(repo, "tools/train_hyperprior.sh", "400", ANNEAL="100", LARGE_STEPS="500", COMPILE="1", THREADS="1")
    assert r.returncode == 0, r.stderr
    run, anneal, large, large_anneal = trains(calls)
    small = f"runs/hyperprior/q3-from-factorized-step{STEP}.train.pth.tar"
    big = f"runs/hyperprior/q3-from-factorized-step{STEP}-p256.train.pth.tar"
    assert option(run, "-o") == option(anneal, "-o") == small and option(run, "--patch-size") == "128"
    assert (option(large, "--resume"), option(large, "-o"), option(large, "--patch-size")) == (small, big, "256")
    assert (option(large, "--steps"), option(large, "--lr")) == (str(STEP), "1e-4") and "--init" not in large
    assert (option(large_anneal, "-o"), option(large_anneal, "--patch-size")) == (big, "256")
    assert (option(large_anneal, "--steps"), option(large_anneal, "--lr")) == (str(STEP + 100), "1e-5")
    assert all("--compile" in c and option(c, "--threads") == "1" for c in (large, large_anneal))
    assert cli(calls, "export")[0][-3:] == [big, "-o", "artifacts/bmshj2018-hyperprior-q3.pth.tar"]

    # stopped by MINUTES in the larger-crop phase: it says so, exports nothing, LARGE_PATCH names the run
    r, calls = run_script(repo, "tools/train_hyperprior.sh", "400", ANNEAL="100", LARGE_STEPS="501", LARGE_PATCH="192",
                          MINUTES="5")
    assert r.returncode == 0 and "on 192x192 crops (time limit); rerun to continue" in r.stderr
    assert option(trains(calls)[-1], "-o").endswith("-p192.train.pth.tar") and option(trains(calls)[-1], "--minutes") == "5"
    assert cli(calls, "export") == []


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "tools").glob("*.sh")) + ["../.ci/run"])
def test_every_shell_script_parses(script):
    # a syntax error (device_settle.sh once had an apostrophe inside ${1:?...}) only shows when the script runs
    r = subprocess.run(["bash", "-n", str(ROOT / "tools" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
