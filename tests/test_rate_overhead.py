"""tools/rate_overhead.py: real bitstream rate against the likelihood rate."""

import pytest

from .conftest import ROOT

SHIPPED = ROOT / "artifacts" / "bmshj2018-factorized-q3.pth.tar"


@pytest.fixture
def tool(load_tool):
    return load_tool("rate_overhead")


def test_a_trained_models_bitstreams_cost_what_its_likelihoods_promise(tool, kodak_two, one_thread, capsys):
    assert tool.main([str(SHIPPED), "--data", str(kodak_two), "--limit", "1", "--quiet"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {SHIPPED}"))
    lik, real, ratio = (float(v) for v in row.strip("| ").split(" | ")[1:])
    assert 0.1 < lik < 2 and real == pytest.approx(ratio * lik, rel=1e-3)
    # the range coder adds a few bytes an image, the quantised CDF tables a little: within 2 % for a trained model
    assert 0.99 < ratio < 1.02


def test_bad_input_is_one_line_and_rc_1(tool, kodak_two, tmp_path, capsys):
    assert tool.main([str(SHIPPED), "--data", str(tmp_path / "none")]) == 1
    assert tool.main([str(tmp_path / "missing.pth.tar"), "--data", str(kodak_two)]) == 1
    assert tool.main([str(SHIPPED), "--data", str(kodak_two), "--limit", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("rate_overhead: ") for line in err)
