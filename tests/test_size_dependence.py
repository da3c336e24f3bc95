"""tools/size_dependence.py: rate and distortion on the validation photos at several sizes."""

import pytest

from .conftest import ROOT

SHIPPED = ROOT / "artifacts" / "bmshj2018-factorized-q3.pth.tar"


@pytest.fixture
def tool(load_tool):
    return load_tool("size_dependence")


def rows(out: str) -> dict:
    table = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[1]: [float(v) for v in r[2:]] for r in table[1:]}


def test_the_crop_rows_are_what_training_validates_and_full_is_each_photo_whole(tool, train_two, one_thread, capsys):
    from deepcomp import evaluation, training, zoo

    assert tool.main([str(SHIPPED), "--data", str(train_two), "--val-fraction", "0.5", "--sizes", "256", "full", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "validation photos of" in out and "002.png" in out and "001.png" not in out
    table = rows(out)
    assert table["256x256"][0] == 5 and table["full"][0] == 1
    model, _ = evaluation.open_model(SHIPPED)
    crops = training.validation_crops([train_two / "002.png"], 256)
    ref = training.evaluate_rd(model, crops, zoo.mse_lambda(3))
    bpp, psnr, loss = table["256x256"][1:]  # printed to 4, 2 and 4 decimals
    assert (bpp, psnr, loss) == (pytest.approx(ref["bpp"], abs=6e-5), pytest.approx(ref["psnr"], abs=6e-3), pytest.approx(ref["loss"], abs=6e-5))
    bpp, psnr, loss = table["full"][1:]
    assert 0.1 < bpp < 2 and 20 < psnr < 40 and loss == pytest.approx(zoo.mse_lambda(3) * 255**2 * 10 ** (-psnr / 10) + bpp, rel=1e-3)


def test_bad_input_is_one_line_and_rc_1(tool, train_two, synthetic_photos, tmp_path, capsys):
    assert tool.main([str(SHIPPED), "--data", str(tmp_path / "none")]) == 1
    assert tool.main([str(tmp_path / "missing.pth.tar"), "--data", str(train_two), "--val-fraction", "0.5", "--sizes", "128"]) == 1
    assert tool.main([str(SHIPPED), "--data", str(synthetic_photos), "--val-fraction", "0.5", "--sizes", "128"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("size_dependence: ") for line in err)
    assert "smaller than the 128px crop" in err[2]


@pytest.mark.parametrize("size", ["100", "big", "0"])
def test_a_size_is_a_multiple_of_64_or_full(tool, size, capsys):
    with pytest.raises(SystemExit) as e:
        tool.main([str(SHIPPED), "--sizes", size])
    assert e.value.code == 2 and "--sizes" in capsys.readouterr().err
