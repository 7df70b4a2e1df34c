import pytest

from charrnn.schedule import budget_fraction, learning_rate


def lr(p, schedule="cosine"):
    return learning_rate(p, peak=1.0, minimum=0.1, warmup=0.1, schedule=schedule)


def test_warmup_then_cosine_to_minimum():
    assert lr(0.0) == pytest.approx(0.01)
    assert lr(0.05) == pytest.approx(0.5)
    assert lr(0.1) == pytest.approx(1.0)
    assert lr(0.55) == pytest.approx(0.55)
    assert lr(1.0) == pytest.approx(0.1)
    assert lr(2.0) == pytest.approx(0.1)


def test_linear_and_constant():
    assert lr(0.55, "linear") == pytest.approx(0.55)
    assert lr(0.9, "constant") == 1.0


def test_budget_fraction_follows_whichever_budget_runs_out_first():
    assert budget_fraction(50, 10.0, 100, None) == 0.5
    assert budget_fraction(50, 30.0, 100, 40.0) == 0.75
    assert budget_fraction(0, 20.0, None, 40.0) == 0.5
