"""Time budget with a fake clock: what is dropped, in which order, and never below one pass."""
from __future__ import annotations

import logging

import pytest

from czii_kit.errors import ConfigError
from czii_kit.infer.budget import TimeBudget
from czii_kit.infer.tta import IDENTITY, Transform

Z, Y, X = Transform((0,)), Transform((1,)), Transform((2,))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_item(budget: TimeBudget, clock: FakeClock, seconds: float) -> list:
    """Ask for passes, 'run' them for ``seconds``, record; return the passes used."""
    passes = budget.passes_for_next()
    clock.now += seconds
    budget.record(seconds)
    return passes


def test_under_budget_drops_nothing():
    clock = FakeClock()
    plan = [(m, t) for m in (0, 1) for t in (IDENTITY, Z, Y, X)]
    budget = TimeBudget(1000, n_items=10, plan=plan, clock=clock)
    for _ in range(10):
        assert run_item(budget, clock, seconds=8.0) == plan  # 80 s in all, budget 900 s
    assert budget.dropped == []


def test_no_projection_before_the_first_item():
    clock = FakeClock()
    plan = [(0, IDENTITY), (0, Z)]
    budget = TimeBudget(10, n_items=5, plan=plan, clock=clock)
    clock.now += 1e6  # e.g. a slow model load: nothing measured per pass yet
    assert budget.passes_for_next() == plan
    assert budget.projected_seconds() is None


def test_over_budget_drops_tta_first_then_members_never_below_one(caplog):
    clock = FakeClock()
    plan = [(0, IDENTITY), (0, Z), (0, Y), (1, IDENTITY), (1, Z)]
    budget = TimeBudget(100, n_items=10, plan=plan, clock=clock, safety=1.0)

    assert run_item(budget, clock, 15.0) == plan  # 3 s per pass
    # projected 15 + 3 s x 5 passes x 9 items = 150 > 100: drop TTA until 15 + 27 x 3 = 96
    with caplog.at_level(logging.WARNING, logger="czii_kit.infer.budget"):
        assert run_item(budget, clock, 30.0) == [(0, IDENTITY), (0, Z), (1, IDENTITY)]
    assert budget.dropped == [
        "dropped TTA pass y of member 0 after 1 of 10 items: projected 150s > budget 100s",
        "dropped TTA pass z of member 1 after 1 of 10 items: projected 123s > budget 100s",
    ]
    assert "dropped TTA pass y of member 0" in caplog.text

    # 45 s over 8 passes = 5.625 s/pass; 45 + 5.625 x 3 x 8 = 180, x 2 passes = 135, x 1 = 90
    assert run_item(budget, clock, 60.0) == [(0, IDENTITY)]
    assert budget.dropped[2:] == [
        "dropped TTA pass z of member 0 after 2 of 10 items: projected 180s > budget 100s",
        "dropped ensemble member 1 after 2 of 10 items: projected 135s > budget 100s",
    ]

    with caplog.at_level(logging.WARNING, logger="czii_kit.infer.budget"):
        for _ in range(7):  # hopelessly over budget now: still one pass per item
            assert run_item(budget, clock, 60.0) == [(0, IDENTITY)]
    assert len(budget.dropped) == 4
    assert caplog.text.count("nothing left to drop") == 1


def test_tta_is_dropped_evenly_across_members_and_identity_is_kept():
    clock = FakeClock()
    plan = [(0, Z), (0, IDENTITY), (0, Y), (1, IDENTITY), (1, Z), (1, Y)]
    budget = TimeBudget(100, n_items=2, plan=plan, clock=clock, safety=1.0)
    run_item(budget, clock, 60.0)  # 10 s per pass: 60 + 10 x P x 1 <= 100 allows 4 passes
    assert budget.passes_for_next() == [(0, Z), (0, IDENTITY), (1, IDENTITY), (1, Z)]
    clock.now += 15  # a slow peak-finding step: 75 + 10 x P <= 100 allows 2 passes
    assert budget.passes_for_next() == [(0, IDENTITY), (1, IDENTITY)]


def test_safety_factor_shrinks_the_budget():
    clock = FakeClock()
    plan = [(0, IDENTITY), (0, Z)]
    relaxed = TimeBudget(100, n_items=2, plan=plan, clock=clock, safety=1.0)
    run_item(relaxed, clock, 40.0)  # 40 + 40 = 80
    assert relaxed.passes_for_next() == plan
    clock = FakeClock()
    strict = TimeBudget(100, n_items=2, plan=plan, clock=clock, safety=0.7)
    run_item(strict, clock, 40.0)  # 80 > 70
    assert strict.passes_for_next() == [(0, IDENTITY)]


@pytest.mark.parametrize("args", [(0, 5, [(0, IDENTITY)]), (10, 0, [(0, IDENTITY)]), (10, 5, []),
                                  (10, 5, [(0, IDENTITY)], 1.5)])
def test_invalid_arguments(args):
    total, n_items, plan, *safety = args
    with pytest.raises(ConfigError):
        TimeBudget(total, n_items, plan, safety=safety[0] if safety else 0.9)
