"""Time budget with a fake clock: what is dropped, in which order, never below one pass; setup apart from
inference; several workers; and the budget as it is wired into the split-level predictor."""
from __future__ import annotations

import logging
import threading

import pandas as pd
import pytest

from czii_kit.errors import ConfigError
from czii_kit.infer import split as split_module
from czii_kit.infer.budget import TimeBudget
from czii_kit.infer.tta import IDENTITY, Transform

Z, Y, X = Transform((0,)), Transform((1,)), Transform((2,))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_item(budget: TimeBudget, clock: FakeClock, seconds: float, item=None) -> list:
    """Ask for passes, 'run' them for ``seconds``, record; return the passes used."""
    item = item if item is not None else object()
    passes = budget.passes_for(item)
    clock.now += seconds
    budget.record(item, seconds)
    return passes


def test_under_budget_drops_nothing():
    clock = FakeClock()
    plan = [(m, t) for m in (0, 1) for t in (IDENTITY, Z, Y, X)]
    budget = TimeBudget(1000, n_items=10, plan=plan, clock=clock)
    for _ in range(10):
        assert run_item(budget, clock, seconds=8.0) == plan  # 80 s in all, budget 900 s
    assert budget.dropped == []
    assert "projected 80 s fits in 900 s" in budget.decisions[1]


def test_no_projection_before_the_first_item():
    clock = FakeClock()
    plan = [(0, IDENTITY), (0, Z)]
    budget = TimeBudget(10, n_items=5, plan=plan, clock=clock)
    clock.now += 1e6  # long before any item finished: nothing measured per pass yet
    assert budget.passes_for("a") == plan
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
        "dropped TTA pass y of member 0 after 1 of 10 items: projected 150 s > budget 100 s",
        "dropped TTA pass z of member 1 after 1 of 10 items: projected 123 s > budget 100 s",
    ]
    assert "dropped TTA pass y of member 0" in caplog.text

    # 45 s over 8 passes = 5.625 s/pass; 45 + 5.625 x 3 x 8 = 180, x 2 passes = 135, x 1 = 90
    assert run_item(budget, clock, 60.0) == [(0, IDENTITY)]
    assert budget.dropped[2:] == [
        "dropped TTA pass z of member 0 after 2 of 10 items: projected 180 s > budget 100 s",
        "dropped ensemble member 1 after 2 of 10 items: projected 135 s > budget 100 s",
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
    assert budget.passes_for("b") == [(0, Z), (0, IDENTITY), (1, IDENTITY), (1, Z)]
    clock.now += 15  # a slow peak-finding step: 75 + 10 x P <= 100 allows 2 passes
    assert budget.passes_for("c") == [(0, IDENTITY), (1, IDENTITY)]


def test_setup_is_spent_time_but_not_pass_time():
    clock = FakeClock()
    plan = [(0, IDENTITY), (0, Z)]
    # 500 s of model loading and engine builds before the budget starts; 10 items x 2 passes x 2 s = 40 s
    budget = TimeBudget(600, n_items=10, plan=plan, clock=clock, safety=1.0, setup_seconds=500.0)
    for _ in range(10):
        assert run_item(budget, clock, 4.0) == plan  # 500 + 40 = 540 <= 600: everything fits
    tight = TimeBudget(530, n_items=10, plan=plan, clock=clock, safety=1.0, setup_seconds=500.0)
    run_item(tight, clock, 4.0)  # 504 + 2 s x 2 x 9 = 540 > 530: drop a pass, 504 + 18 = 522 fits
    assert tight.passes_for("next") == [(0, IDENTITY)]


def test_workers_share_the_remaining_work():
    clock = FakeClock()
    plan = [(0, IDENTITY), (0, Z)]
    one = TimeBudget(100, n_items=11, plan=plan, clock=clock, safety=1.0, workers=1)
    run_item(one, clock, 10.0)  # 10 + 5 x 2 x 10 = 110 > 100 with one worker
    assert one.passes_for("x") == [(0, IDENTITY)]
    clock = FakeClock()
    two = TimeBudget(100, n_items=11, plan=plan, clock=clock, safety=1.0, workers=2)
    run_item(two, clock, 10.0)  # 10 + 100 / 2 = 60 <= 100 with two
    assert two.passes_for("x") == plan


def test_safety_factor_shrinks_the_budget():
    clock = FakeClock()
    plan = [(0, IDENTITY), (0, Z)]
    relaxed = TimeBudget(100, n_items=2, plan=plan, clock=clock, safety=1.0)
    run_item(relaxed, clock, 40.0)  # 40 + 40 = 80
    assert relaxed.passes_for("x") == plan
    clock = FakeClock()
    strict = TimeBudget(100, n_items=2, plan=plan, clock=clock, safety=0.7)
    run_item(strict, clock, 40.0)  # 80 > 70
    assert strict.passes_for("x") == [(0, IDENTITY)]


@pytest.mark.parametrize("args", [(0, 5, [(0, IDENTITY)]), (10, 0, [(0, IDENTITY)]), (10, 5, []),
                                  (10, 5, [(0, IDENTITY)], 1.5)])
def test_invalid_arguments(args):
    total, n_items, plan, *safety = args
    with pytest.raises(ConfigError):
        TimeBudget(total, n_items, plan, safety=safety[0] if safety else 0.9)


# --------------------------------------------------------------------------- wired into predict_split
class ThreadClock:
    """A fake clock per thread (each worker has its own timeline, as parallel GPUs do); new threads start at the
    time of the thread that set them up. ``advance`` moves only the calling thread's time."""

    def __init__(self) -> None:
        self.base, self.local = 1000.0, threading.local()

    def __call__(self) -> float:
        return getattr(self.local, "now", self.base)

    def advance(self, seconds: float) -> None:
        self.local.now = self() + seconds
        if threading.current_thread() is threading.main_thread():
            self.base = self.local.now


class FakePredictor:
    """Two 3D members; a prediction costs ``pass_seconds`` per (member, pass) on the fake clock."""

    def __init__(self, clock: ThreadClock, pass_seconds: float, log: list) -> None:
        self.clock, self.pass_seconds, self.log = clock, pass_seconds, log
        self.members = {"unet": [object(), object()]}

    def predict(self, tomogram, thresholds, source_weights, passes):
        n = sum(len(t) for t in passes.values())
        self.log.append((tomogram.run, {m: [t.name for t in ts] for m, ts in passes.items()}))
        self.clock.advance(n * self.pass_seconds)
        return pd.DataFrame({"experiment": [tomogram.run], "particle_type": ["ribosome"], "x": [1.0], "y": [1.0],
                             "z": [1.0], "score": [0.9]})


def run_split(monkeypatch, budget_hours: float, setup_seconds: float, pass_seconds: float, n_runs: int = 12):
    from czii_kit.config import load_config
    from czii_kit.data.io import Tomogram
    from czii_kit.data.source import DataSource
    from czii_kit.infer.plan import PredictionPlan, RunSet
    from czii_kit.particles import CZII

    clock, log = ThreadClock(), []

    def slow_first_load(plan, device, engine=None):
        clock.advance(setup_seconds)  # model load, exports, engine builds: before the first tomogram
        return FakePredictor(clock, pass_seconds, log)

    class NoVoxels(DataSource):
        """Runs that read instantly: the fake predictor only needs their names."""
        particles, location = CZII, "fake"

        def list_runs(self, split):
            return runs

        def read_run(self, run, split, data_cfg, recon=None):
            return Tomogram(run, split, "denoised", 0, None, 10.0)

        def run_geometry(self, run, split, data_cfg, recon=None):
            return (1, 1, 1), 10.0

        def read_picks(self, run, data_cfg=None):
            raise AssertionError("not needed")

    monkeypatch.setattr(PredictionPlan, "load", slow_first_load)
    cfg = load_config("cpu_quick", ["infer.tta=flips"])
    runs = [f"TS_{i}" for i in range(n_runs)]
    plan = PredictionPlan({"unet": [({}, 1.0)]}, cfg, thresholds={}, runs=RunSet(NoVoxels(), "test", runs, {}))
    result = split_module.predict_split(plan, ["cpu", "cpu"], time_budget_h=budget_hours, progress=False,
                                        report=lambda line: None, clock=clock)
    return result, log


def test_wired_budget_with_two_workers_and_a_slow_setup_keeps_everything_that_fits(monkeypatch):
    # setup 1000 s (two workers on one device share its members); 12 runs x 8 passes x 1 s over 2 workers = 48 s;
    # budget 0.9 x 3600 s. Counted as inference, the setup would project 1008 s per run x 12 / 2 and drop passes.
    result, log = run_split(monkeypatch, budget_hours=1.0, setup_seconds=1000.0, pass_seconds=1.0)
    assert result.failures == {} and len(result.detections) == 12
    assert result.setup_seconds == pytest.approx(1000.0)
    assert all(len(p[0]) == 4 and len(p[1]) == 4 for _, p in log)  # every run: 2 members x 4 flips
    assert not [d for d in result.decisions if d.startswith("dropped")]
    assert any("setup took 1000.0 s" in d for d in result.decisions)


def test_wired_budget_drops_passes_then_members_when_runs_do_not_fit(monkeypatch):
    # setup 100 s; 8 passes x 10 s = 80 s per run; 12 runs on 2 workers ~ 480 s > 0.9 x 540 s - 100 s
    result, log = run_split(monkeypatch, budget_hours=0.15, setup_seconds=100.0, pass_seconds=10.0)
    dropped = [d for d in result.decisions if d.startswith("dropped")]
    assert dropped, result.decisions
    tta_drops = [i for i, d in enumerate(dropped) if d.startswith("dropped TTA")]
    member_drops = [i for i, d in enumerate(dropped) if d.startswith("dropped ensemble member")]
    assert tta_drops and (not member_drops or max(tta_drops) < min(member_drops))  # passes first, then members
    assert all(any(t == "id" for t in ts) for _, p in log for ts in p.values())  # identity passes are kept
    assert len(result.detections) == 12  # nothing is skipped: runs get fewer passes
