"""The report: Bjøntegaard deltas (against the bjontegaard package), tables, plots, CLI."""

import csv
import io
import json
import math

import numpy as np
import pytest

from deepcomp import cli
from deepcomp.errors import DeepCompError
from deepcomp.evaluation import results_document, write_results
from deepcomp.report import (
    bd_psnr, bd_rate, bd_rows, collect_results, markdown_table, model_rows, ms_ssim_db, plot_training, table_csv, write_report,
)

ARCH = "bmshj2018-factorized"


def rd_curve(rng, n=4, start=0.1):
    """A random increasing, concave-ish rate-distortion curve (bpp, PSNR)."""
    rates = np.cumsum(rng.uniform(0.05, 0.4, size=n)) + start
    psnr = 24 + 6 * np.log2(rates / rates[0] + 1) + np.cumsum(rng.uniform(0.05, 0.5, size=n))
    return rates, psnr


# ---------------------------------------------------------------- Bjøntegaard
@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_against_the_bjontegaard_package(method):
    bjontegaard = pytest.importorskip("bjontegaard")
    rng = np.random.default_rng(7)
    for _ in range(25):
        n = int(rng.integers(4, 7))
        ra, da = rd_curve(rng, n)
        rt, dt = rd_curve(rng, n, start=float(rng.uniform(0.05, 0.2)))
        ours = bd_rate(ra, da, rt, dt, method)
        ref = bjontegaard.bd_rate(ra, da, rt, dt, method=method, min_overlap=0)
        assert ours == pytest.approx(ref, rel=1e-7, abs=1e-9)
        ours = bd_psnr(ra, da, rt, dt, method)
        ref = bjontegaard.bd_psnr(ra, da, rt, dt, method=method, min_overlap=0)
        assert ours == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_bd_mathematical_facts():
    rng = np.random.default_rng(3)
    r, d = rd_curve(rng, 5)
    for method in ("pchip", "cubic"):
        assert bd_rate(r, d, r, d, method) == pytest.approx(0.0, abs=1e-12)
        assert bd_psnr(r, d, r, d, method) == pytest.approx(0.0, abs=1e-12)
        # the same qualities at 0.8x the rate: -20 % whatever the interpolation
        assert bd_rate(r, d, 0.8 * r, d, method) == pytest.approx(-20.0)
        assert bd_rate(r, d, 1.5 * r, d, method) == pytest.approx(50.0)
        # +0.7 dB at the same rates: BD-PSNR 0.7 dB
        assert bd_psnr(r, d, r, d + 0.7, method) == pytest.approx(0.7)
        # the order of the points does not matter
        p = rng.permutation(len(r))
        assert bd_rate(r[p], d[p], 0.8 * r, d, method) == pytest.approx(-20.0)
    # no overlap of the quality ranges: undefined
    assert math.isnan(bd_rate(r, d, r, d + 100))
    with pytest.raises(ValueError):
        bd_rate(r[:3], d[:3], r[:3], d[:3], "cubic")  # cubic needs four points
    with pytest.raises(ValueError):
        bd_rate(r[:1], d[:1], r, d)


def test_ms_ssim_db():
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert math.isnan(ms_ssim_db(None))


# ---------------------------------------------------------------- tables and files
def fake_doc(name, family, quality, bpp, psnr, ms_ssim, file_bytes, kind="checkpoint", density=1.0, data="kodak"):
    per_image = [
        {"image": f"k{i}.png", "width": 768, "height": 512, "bytes": int(bpp * 768 * 512 / 8), "bpp": bpp + dv,
         "psnr": psnr + dv * 10, "ssim": 1 - (1 - ms_ssim) * 2, "ms_ssim": ms_ssim, "encode_s": 0.5, "decode_s": 0.7}
        for i, dv in enumerate((-0.01, 0.01))
    ]
    info = {"path": f"/m/{name}", "name": name, "kind": kind, "arch": ARCH, "quality": quality, "file_bytes": file_bytes,
            "fp32_bytes": 12_000_000, "params": 3_000_000, "nonzero_params": int(3e6 * density), "density": density}
    return results_document(info, per_image, data, family=family)


def families_docs():
    docs = []
    for q, (bpp, psnr, ms) in enumerate([(0.12, 27.0, 0.92), (0.19, 28.3, 0.94), (0.29, 29.7, 0.955), (0.44, 31.3, 0.97)], start=1):
        docs.append(fake_doc(f"base-q{q}.pth.tar", "baseline", q, bpp, psnr, ms, 12_050_000))
        docs.append(fake_doc(f"dc-q{q}.dcmp", "deepcomp", q, bpp * 1.05, psnr - 0.05, ms - 0.001, 400_000, kind="deepcomp", density=0.3))
    return docs


def test_rows_table_and_bd(tmp_path):
    docs = families_docs()
    rows = model_rows(docs)
    assert [r["model"] for r in rows[:4]] == [f"base-q{q}.pth.tar" for q in range(1, 5)]  # baseline first
    dc = [r for r in rows if r["family"] == "deepcomp"]
    assert dc[0]["ratio"] == pytest.approx(12_000_000 / 400_000)
    assert dc[0]["bpp"] == pytest.approx(0.12 * 1.05)  # the mean of the per-image values
    md = markdown_table(rows)
    assert md.count("\n") == 2 + len(rows)
    assert "dc-q3.dcmp" in md and "30.00x" in md and "390.62 KiB" in md
    parsed = list(csv.DictReader(io.StringIO(table_csv(rows))))
    assert len(parsed) == 8 and float(parsed[0]["psnr"]) == pytest.approx(rows[0]["psnr"])
    (bd,) = bd_rows(rows)
    assert bd["family"] == "deepcomp" and bd["anchor"] == "baseline" and bd["points"] == 4
    base = [r for r in rows if r["family"] == "baseline"]
    expect = bd_rate([r["bpp"] for r in base], [r["psnr"] for r in base], [r["bpp"] for r in dc], [r["psnr"] for r in dc])
    assert bd["bd_rate_psnr"] == pytest.approx(expect)
    assert bd["bd_rate_psnr"] > 0 and bd["bd_rate_ms_ssim"] > 0 and bd["bd_psnr"] < 0  # worse at every point
    # cubic needs four qualities: three give n/a, not an error
    (bd3,) = bd_rows([r for r in rows if r["quality"] != 4], method="cubic")
    assert math.isnan(bd3["bd_rate_psnr"])


def test_write_report_files(tmp_path):
    out = tmp_path / "report"
    rep = write_report(families_docs(), out)
    for key in ("markdown", "table_csv", "bd_csv", "rd_psnr", "rd_ms_ssim", "size_ssim"):
        assert rep["paths"][key].is_file(), key
    for key in ("rd_psnr", "rd_ms_ssim", "size_ssim"):
        assert rep["paths"][key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "BD-rate" in md and "base-q1.pth.tar" in md and "rd_psnr.png" in md
    bd = list(csv.DictReader(io.StringIO((out / "bd_rate.csv").read_text())))
    assert len(bd) == 1 and float(bd[0]["bd_rate_psnr"]) == pytest.approx(rep["bd"][0]["bd_rate_psnr"])


def test_duplicate_quality_in_a_family_is_an_error():
    docs = families_docs() + [fake_doc("other-q2.dcmp", "deepcomp", 2, 0.2, 28.0, 0.94, 300_000, kind="deepcomp")]
    with pytest.raises(DeepCompError, match="two models of quality 2"):
        bd_rows(model_rows(docs))


def test_report_cli(tmp_path, capsys):
    res = tmp_path / "results"
    for d in families_docs():
        write_results(d, res, d["model"]["name"])
    (res / "unrelated.json").write_text(json.dumps({"x": 1}))
    assert len(collect_results([res])) == 8  # other JSON files in the folder are skipped
    rc = cli.main(["report", str(res), "-o", str(tmp_path / "rep"), "--no-plots"])
    assert rc == 0 and (tmp_path / "rep" / "report.md").is_file()
    assert not (tmp_path / "rep" / "rd_psnr.png").exists()
    assert "8 models" in capsys.readouterr().out
    for argv, text in (
        (["report", str(res / "unrelated.json")], "not a deepcomp evaluation"),
        (["report", str(tmp_path / "missing.json")], "not found"),
        (["report", str(tmp_path / "rep")], "no evaluation results"),
    ):
        rc = cli.main(argv + ["-o", str(tmp_path / "rep2")])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and text in err


def test_training_curve_plot(tmp_path):
    history = [{"step": 250 * i, "lr": 1e-4 if i < 5 else 1e-5, "val_loss": 2.0 - 0.05 * i, "val_psnr": 25 + 0.1 * i} for i in range(1, 8)]
    path = plot_training(history, tmp_path / "q3.training.png", title="q3")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a checkpoint without validations (or without a history) gets no plot
    assert plot_training([], tmp_path / "none.png") is None
    assert plot_training([{"step": 1, "lr": 1e-4}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
