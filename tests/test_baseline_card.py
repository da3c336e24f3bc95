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
