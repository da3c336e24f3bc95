"""tools/position_cost.py: entropy bounds of a deepcomp file's values and positions."""

import math

import numpy as np
import pytest

from deepcomp import model_file
from deepcomp.policy import Policy


def test_bounds_of_a_half_pruned_file(load_tool, random_checkpoint, tmp_path, capsys):
    tool = load_tool("position_cost")
    path = tmp_path / "m.dcmp"
    model_file.compress_checkpoint(random_checkpoint, path, Policy().with_weight_rule(prune=0.5, bits=5), "bmshj2018-factorized", 3)
    rows, size = tool.file_costs(path)
    by = {r["name"]: r for r in rows}
    assert size == path.stat().st_size and "entropy_bottleneck.quantiles" not in by  # raw tensors are not counted
    w = by["g_a.2.weight"]
    n = math.prod(w["shape"])
    assert w["density"] == pytest.approx(0.5, abs=0.01)
    assert w["mask_bits"] == pytest.approx(n, rel=0.01)  # half the bits set: one bit each
    assert 0 < w["index_bits"] <= 5 * n * w["density"] + 1e-6  # 32 values: at most 5 bits a kept weight
    for r in rows:  # a distribution per channel never costs more than one for the tensor (before model costs)
        assert r["index_bits_per_channel"] <= r["index_bits"] + 1e-6 and r["mask_bits_per_channel"] <= r["mask_bits"] + 1e-6
    assert by["g_a.1.gamma"]["mask_bits"] == 0.0  # GDN gamma: shared, never pruned
    assert tool.entropy_bits(np.array([3, 0, 0])) == 0.0 and tool.entropy_bits(np.array([1, 1])) == 2.0
    assert tool.main([str(path)]) == 0 and "positions" in capsys.readouterr().out
    assert tool.main([str(tmp_path / "missing.dcmp")]) == 2
    assert capsys.readouterr().err.startswith("error: not found")
