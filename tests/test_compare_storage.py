"""tools/compare_storage.py: the equal-quality logic, and one small end-to-end run."""

import csv
import math

import pytest
from PIL import Image

from deepcomp import evaluation, weight_formats
from deepcomp.errors import DeepCompError



@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("compare_storage")


def test_parse_setting(tool):
    assert tool.parse_setting("share8") == (None, 8)
    assert tool.parse_setting("prune0.7-share5") == (0.7, 5)
    assert tool.parse_setting("prune.5-share4") == (0.5, 4)
    for bad in ("share", "prune0.5", "prune1.5-share5", "share17", "8bits"):
        with pytest.raises(DeepCompError):
            tool.parse_setting(bad)


def _fam(name, group, sizes, bd=math.nan, dpsnr=0.0, dbpp=0.0):
    by_q = {q: {"file_bytes": b, "delta_psnr": dpsnr, "delta_bpp_pct": dbpp} for q, b in sizes.items()}
    return {"family": name, "group": group, "arch": "a", "bd_rate_psnr": bd, "_by_quality": by_q,
            "mean_file_bytes": sum(sizes.values()) / len(sizes)}


def test_equal_quality_by_bd_rate(tool):
    frows = [
        _fam("fp32", "reference", {1: 1000, 2: 1000}, bd=0.0),
        _fam("nnc-a", "nnc", {1: 100, 2: 100}, bd=0.3),
        _fam("nnc-b", "nnc", {1: 40, 2: 40}, bd=5.0),
        _fam("deepcomp-x", "deepcomp", {1: 50, 2: 50}, bd=0.6),
        _fam("deepcomp-y", "deepcomp", {1: 80, 2: 80}, bd=0.2),
    ]
    eq = {r["family"]: r for r in tool.equal_quality(frows, tolerance=0.5, tolerance_db=0.05)}
    assert set(eq) == {"fp32", "nnc-a", "nnc-b"}
    assert eq["fp32"]["deepcomp_family"] == "deepcomp-y"  # x is 0.6 points worse than fp32: beyond 0.5
    assert eq["fp32"]["times_smaller"] == pytest.approx(2000 / 160)
    assert eq["nnc-a"]["deepcomp_family"] == "deepcomp-x"  # 0.6 <= 0.3 + 0.5, and the smaller one
    assert eq["nnc-a"]["times_smaller"] == pytest.approx(2.0)
    assert eq["nnc-b"]["deepcomp_family"] == "deepcomp-x" and eq["nnc-b"]["times_smaller"] == pytest.approx(0.8)
    assert tool._ratio_words(0.8) == "1.25× larger" and tool._ratio_words(2.0) == "2.00× smaller"


def test_equal_quality_only_some_deepcomp_families(tool):
    frows = [
        _fam("nnc-a", "nnc", {1: 100, 2: 100}, bd=0.3),
        _fam("deepcomp-retrained", "deepcomp", {1: 20, 2: 20}, bd=-1.0),
        _fam("deepcomp-share8", "deepcomp", {1: 150, 2: 150}, bd=0.2),
    ]
    (r,) = tool.equal_quality(frows, tolerance=0.5, tolerance_db=0.05)
    assert r["deepcomp_family"] == "deepcomp-retrained" and r["times_smaller"] == pytest.approx(5.0)
    (r,) = tool.equal_quality(frows, tolerance=0.5, tolerance_db=0.05, only={"deepcomp-share8"})
    assert r["deepcomp_family"] == "deepcomp-share8" and r["times_smaller"] == pytest.approx(100 / 150)
    assert tool._verdict([r], "x").startswith("x is NOT the smallest")


def test_equal_quality_with_one_quality(tool):
    frows = [
        _fam("int8", "int8", {3: 400}, dpsnr=-0.01, dbpp=0.1),
        _fam("deepcomp-x", "deepcomp", {3: 100}, dpsnr=-0.2, dbpp=0.0),  # too much PSNR lost
        _fam("deepcomp-y", "deepcomp", {3: 200}, dpsnr=-0.04, dbpp=0.3),
        _fam("deepcomp-z", "deepcomp", {4: 10}, dpsnr=0.0, dbpp=0.0),  # another quality: not comparable
    ]
    (r,) = tool.equal_quality(frows, tolerance=0.5, tolerance_db=0.05)
    assert r["deepcomp_family"] == "deepcomp-y" and r["times_smaller"] == pytest.approx(2.0)
    assert "per quality" in r["criterion"]
    (r,) = tool.equal_quality(frows[:2], tolerance=0.5, tolerance_db=0.05)
    assert r["deepcomp_family"] == "" and math.isnan(r["times_smaller"]) and "no deepcomp family reaches" in r["criterion"]


def test_end_to_end_small(tool, random_checkpoint, kodak_two, tmp_path):
    data = tmp_path / "img"
    data.mkdir()
    with Image.open(kodak_two / "kodim23.png") as img:
        img.crop((0, 0, 192, 128)).save(data / "crop.png")
    out = tmp_path / "out"
    fmts = ["fp32", "gzip", "fp16", "int8"] + (["nnc"] if weight_formats.nnc_available()[0] else [])
    rc = tool.main([str(random_checkpoint), "--arch", "bmshj2018-factorized", "--quality", "3", "--data", str(data), "-o", str(out),
                    "--formats", *fmts, "--nnc-qp", "-32", "--deepcomp", "share8", "--threads", "1", "--quiet",
                    "--work", str(tmp_path / "files")])
    assert rc == 0
    for name in ("report.md", "summary.md", "weights.csv", "weights.md", "families.csv", "families.md", "summary.csv",
                 "latents.csv", "latents.md", "rd_psnr.png", "size_quality.png"):
        assert (out / name).is_file(), name
    rows = {r["family"]: r for r in csv.DictReader((out / "weights.csv").open())}
    expected = {"fp32", "fp32+gzip", "fp16", "int8", "deepcomp-share8"} | ({"nnc-qp-32"} if "nnc" in fmts else set())
    assert set(rows) == expected
    assert rows["fp32+gzip"]["exact"] == "True" and rows["fp32+gzip"]["psnr"] == rows["fp32"]["psnr"]
    assert int(rows["deepcomp-share8"]["file_bytes"]) < int(rows["fp16"]["file_bytes"]) < int(rows["fp32"]["file_bytes"])
    for fam, r in rows.items():
        assert int(r["file_bytes"]) == (tmp_path / "files" / r["file"]).stat().st_size, fam
    assert len(list((out / "results").glob("*.json"))) == len(expected)
    first_int8 = evaluation.read_results(out / "results" / "bmshj2018-factorized-q3-int8.json")
    summary = (out / "summary.md").read_text()
    assert "Deepcomp file" in summary and "range coder" in summary and "tools/compare_storage.py" in summary
    assert "without retraining alone" not in summary and not (out / "summary_without_retraining.csv").exists()

    # a rerun with a file made elsewhere: unchanged files are not evaluated again, and the plain settings get their own table
    given = tmp_path / "given.dcmp"
    given.write_bytes((tmp_path / "files" / rows["deepcomp-share8"]["file"]).read_bytes())
    rc = tool.main([str(random_checkpoint), "--arch", "bmshj2018-factorized", "--quality", "3", "--data", str(data), "-o", str(out),
                    "--formats", "fp32", "int8", "--deepcomp", "share8", "--model", f"retrained={given}", "--threads", "1", "--quiet",
                    "--no-latents", "--work", str(tmp_path / "files")])
    assert rc == 0
    docs = {p.stem: evaluation.read_results(p) for p in (out / "results").glob("*.json")}
    assert "reused" in docs["bmshj2018-factorized-q3-int8"]["model"]["evaluation"]
    assert docs["bmshj2018-factorized-q3-int8"]["per_image"] == first_int8["per_image"]
    assert "evaluation" not in docs["bmshj2018-factorized-q3-retrained"]["model"]  # new file: coded
    summary = (out / "summary.md").read_text()
    assert "without retraining alone" in summary and (out / "summary_without_retraining.csv").is_file()


def test_bad_inputs_end_with_one_line(tool, random_checkpoint, tmp_path, capsys):
    assert tool.main([str(tmp_path / "missing.pth.tar"), "--data", str(tmp_path)]) == 2
    assert tool.main([str(random_checkpoint), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("compare_storage.py: error:") for line in err)
