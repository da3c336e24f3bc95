"""tools/baseline_card.py: the learning-rate schedule a card reports."""

import pytest


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("baseline_card")


def test_schedule_pieces_from_the_validation_history(tool):
    history = [{"lr": 1e-4, "step": s} for s in (250, 500)] + [{"lr": 5e-5, "step": 750}] + [{"lr": 1e-5, "step": s} for s in (800, 900)]
    assert tool.lr_schedule(history) == [[1e-4, 500], [5e-5, 750], [1e-5, 900]]
    text = tool.schedule_text({"learning_rate_schedule": tool.lr_schedule(history), "learning_rate": 1e-5, "final_learning_rate": 1e-5})
    assert text.startswith("0.0001 to step 500, then 5e-05 to step 750, then 1e-05 to step 900")
    flat = {"learning_rate_schedule": tool.lr_schedule(history[:2]), "learning_rate": 1e-4, "final_learning_rate": 1e-4}
    assert tool.schedule_text(flat).startswith("0.0001 → 0.0001")
    assert tool.lr_schedule([]) == []


def test_published_curves_per_architecture(tool):
    from deepcomp import zoo

    # the hyperprior's own curve: its published q3 point lies on it; against the factorized curve it is far ahead
    hp = tool.published_gap("bmshj2018-hyperprior", 0.3199, 30.97)
    assert abs(hp["psnr_gap_db_at_same_bpp"]) < 0.01 and abs(hp["bpp_gap_pct_at_same_psnr"]) < 0.1
    fact = tool.published_gap("bmshj2018-factorized", 0.3199, 30.97)
    assert fact["psnr_gap_db_at_same_bpp"] > 0.5 and fact["bpp_gap_pct_at_same_psnr"] < -15
    assert tool.published_gap("mbt2018", 0.3, 30.0) == {}
    # a family BD-rate needs four qualities of one architecture; the published points score 0 against themselves
    cards = [{"arch": "bmshj2018-hyperprior", "quality": q, "kodak": {"bpp": b, "psnr": p}}
             for q, (b, p) in zoo.PUBLISHED_KODAK["bmshj2018-hyperprior"].items() if q <= 4]
    bd, bdp = tool.family_vs_published("bmshj2018-hyperprior", cards)
    assert abs(bd) < 0.5 and abs(bdp) < 0.02
    assert tool.family_vs_published("bmshj2018-hyperprior", cards[:3]) == (None, None)
    assert tool.family_vs_published("bmshj2018-factorized", cards) == (None, None)


def test_crop_size_phases_from_the_validation_history(tool):
    # a run resumed on larger crops; its first entries predate the recording and count as the configured size
    history = [{"step": 250}, {"step": 500}] + [{"step": s, "patch": 256} for s in (750, 1000)]
    pieces = tool.crop_schedule(history, 128)
    assert pieces == [[128, 500], [256, 1000]]
    f = {"steps": 1000, "batch_size": 8, "patch_size": 256, "crop_schedule": pieces}
    assert tool.steps_text(f) == "1000 (batch 8; 128x128 crops to step 500, then 256x256 crops to step 1000)"
    one = {**f, "crop_schedule": tool.crop_schedule(history[2:], 128)}
    assert tool.steps_text(one) == "1000 (batch 8, 256x256 crops)"
    assert tool.steps_text({**f, "crop_schedule": []}) == "1000 (batch 8, 256x256 crops)"
