"""The benchmarks of tools/ run end to end with tiny numbers, so that they do not rot between the sessions that read
their figures (the figures themselves are not checked: timings belong to the benchmarks, not to the tests)."""

import json
import os
import subprocess
import sys

from .conftest import ROOT


def test_bench_codec_writes_its_figures(random_checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_codec.py"), "--checkpoint", str(random_checkpoint),
                        "--repeat", "1", "--json", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["source"] == str(random_checkpoint)
    assert figures["file_bytes"] < figures["checkpoint_bytes"] and figures["ratio_to_checkpoint"] > 1
    assert 0 <= figures["total_huffman_overhead"] < 1 and figures["load_rss_growth_over_fp32"] >= 0
    assert "load_model() / torch.load" in r.stdout


def test_bench_kodak_eval_times_real_bitstreams(load_tool, kodak_two, one_thread, capsys):
    bench = load_tool("bench_kodak_eval")
    assert bench.main(["--data", str(kodak_two), "--limit", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "random-init bmshj2018-factorized q3 (seed 0)" in out and "1 images in" in out and "images/s" in out


def test_bench_kodak_eval_says_so_when_the_folder_is_missing(load_tool, tmp_path, one_thread, capsys):
    bench = load_tool("bench_kodak_eval")
    assert bench.main(["--data", str(tmp_path / "nowhere"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("bench: error:")


def test_bench_training_times_every_mode_against_fp32(load_tool, random_checkpoint, synthetic_photos, one_thread, capsys):
    bench = load_tool("bench_training")
    eager = [m for m in bench.MODES if not bench.MODES[m][2]]  # the compiled mode compiles for a minute: not here
    assert bench.main(["--baseline", str(random_checkpoint), "--data", str(synthetic_photos), "--steps", "1",
                       "--rounds", "1", "--batch-size", "2", "--patch-size", "32", "--modes", ",".join(eager)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "mode" not in line]
    assert [row.split("|")[1].strip() for row in rows] == eager
    assert rows[0].endswith("| 1.00x |")  # fp32 against itself


def test_bench_training_refuses_an_unknown_mode(load_tool, capsys):
    assert load_tool("bench_training").main(["--modes", "fp32,fp64"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown mode(s) fp64" in err
