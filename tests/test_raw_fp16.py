"""tools/raw_fp16.py: a deepcomp file rewritten with its raw tensors in fp16, the shared ones bit-identical."""

import numpy as np
import pytest

from deepcomp import model_file
from deepcomp.policy import Policy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recode_halves_the_raw_tensors_and_keeps_the_shared_ones(load_tool, random_checkpoint, kodak_two, tmp_path, capsys):
    tool = load_tool("raw_fp16")
    src = tmp_path / "m.dcmp"
    model_file.compress_checkpoint(random_checkpoint, src, Policy().with_weight_rule(prune=0.5, bits=5), "bmshj2018-factorized", 3)
    dst = tmp_path / "fp16" / "m.dcmp"
    dst.parent.mkdir()
    sizes = tool.recode(src, dst)
    assert sizes["fp16_raw_bytes"] == dst.stat().st_size < sizes["fp32_raw_bytes"] == src.stat().st_size
    policy = Policy.from_json(model_file.file_info(dst)["policy"])
    before, after = model_file.load_arrays(src), model_file.load_arrays(dst)
    assert before.keys() == after.keys()
    raw = [n for n, a in before.items() if policy.rule_for(n, a.shape).bits is None and a.dtype.kind == "f"]
    assert "g_a.0.bias" in raw and "entropy_bottleneck.quantiles" in raw
    for name, a in before.items():
        if name in raw:
            assert np.array_equal(after[name], a.astype(np.float16).astype(np.float32))
        else:
            assert np.array_equal(after[name], a)  # shared and pruned: bit-identical
    assert any(not np.array_equal(after[n], before[n]) for n in raw)  # rounded, not just relabelled
    # the table: both files on (here) one Kodak image
    out = tmp_path / "out"
    assert tool.main([str(src), "-o", str(out), "--data", str(kodak_two), "--limit", "1"]) == 0
    md = (out / "raw-fp16.md").read_text()
    assert "| m.dcmp |" in md and f"{sizes['fp16_raw_bytes']:,}" in md
    capsys.readouterr()
    assert tool.main([str(tmp_path / "missing.dcmp"), "-o", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()
    assert capsys.readouterr().err.strip().startswith("error: not found")
