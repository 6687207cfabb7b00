"""Fit ensemble x TTA inference into a wall-clock budget (Kaggle stops a notebook at 12 hours).

The plan is an ordered list of passes (member_index, transform); each item (tomogram) runs all
passes of the plan current when it starts. The budget is started once setup (model loading,
exports, engine builds) is done: setup counts as time already spent, never as inference time.
Each finished item reports its own inference seconds and the passes it ran; the projection is

    elapsed + (seconds per pass so far) x (passes in plan) x (items not finished) / workers

(workers run items in parallel), compared with ``safety x total_seconds``. While it is over,
one pass is dropped: TTA passes first (from the member with the most passes, its last one; each
member keeps its identity pass, or its first pass if it has no identity), then whole members
from the end of the plan, never below one pass. Drops are permanent. Every decision is logged
and kept in ``decisions``. All methods are thread-safe: several workers share one budget.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence

from czii_kit.errors import ConfigError
from czii_kit.infer.tta import Transform

log = logging.getLogger(__name__)
Pass = tuple[int, Transform]


class TimeBudget:
    """Decide, item by item, which passes still fit in the time left."""

    def __init__(self, total_seconds: float, n_items: int, plan: Sequence[Pass], workers: int = 1,
                 clock: Callable[[], float] = time.monotonic, safety: float = 0.9,
                 setup_seconds: float = 0.0) -> None:
        if total_seconds <= 0 or n_items < 1 or not plan or workers < 1 or not 0 < safety <= 1:
            raise ConfigError(
                f"time budget needs total_seconds > 0, n_items >= 1, a non-empty plan, workers >= 1 and "
                f"0 < safety <= 1; got {total_seconds}, {n_items}, {len(plan)} passes, {workers}, {safety}")
        self.budget = total_seconds * safety
        self.n_items, self.workers = n_items, workers
        self.plan: list[Pass] = list(plan)
        self.decisions: list[str] = []
        self.setup_seconds = setup_seconds
        self._clock = clock
        self._start = clock() - setup_seconds  # setup already happened: it is spent time, not pass time
        self._lock = threading.Lock()
        self._issued: dict[Hashable, int] = {}
        self._finished = 0
        self._pass_seconds = 0.0
        self._passes_done = 0
        self._announced = False
        self._note(f"{n_items} item(s) on {workers} worker(s), {len(self.plan)} pass(es) each; budget "
                   f"{self.budget:.0f} s ({safety:.0%} of {total_seconds:.0f} s), setup took {setup_seconds:.1f} s")

    @property
    def dropped(self) -> list[str]:
        return [d for d in self.decisions if d.startswith("dropped")]

    def passes_for(self, item: Hashable) -> list[Pass]:
        """The passes ``item`` runs: the plan after dropping what no longer fits."""
        with self._lock:
            while self._over_budget() and self._drop_one():
                pass
            self._issued[item] = len(self.plan)
            return list(self.plan)

    def record(self, item: Hashable, seconds: float) -> None:
        """``item`` finished after ``seconds`` of its own inference (its setup excluded)."""
        with self._lock:
            self._finished += 1
            self._pass_seconds += seconds
            self._passes_done += self._issued.pop(item)
            if not self._announced:
                projected = self.projected_seconds()
                verdict = "fits" if projected <= self.budget else "does not fit"
                self._note(f"first item: {seconds / max(self._passes_done, 1):.1f} s per pass; projected "
                           f"{projected:.0f} s {verdict} in {self.budget:.0f} s")
                self._announced = True

    def projected_seconds(self) -> float | None:
        """Projected total wall time with the current plan; None before the first item finished."""
        if not self._passes_done:
            return None
        per_pass = self._pass_seconds / self._passes_done
        remaining = max(0, self.n_items - self._finished)
        return self._clock() - self._start + per_pass * len(self.plan) * remaining / self.workers

    def _over_budget(self) -> bool:
        projected = self.projected_seconds()
        return projected is not None and projected > self.budget

    def _note(self, message: str) -> None:
        log.warning("time budget: %s", message)
        self.decisions.append(message)

    def _drop_one(self) -> bool:
        """Drop the next pass in priority order; False when only one pass is left."""
        index = self._next_victim()
        projected = self.projected_seconds()
        if index is None:
            if not any(d.startswith("cannot") for d in self.decisions):
                self._note(f"cannot fit: projected {projected:.0f} s > {self.budget:.0f} s even with one pass "
                           "per item; nothing left to drop")
            return False
        member, transform = self.plan.pop(index)
        still_planned = any(m == member for m, _ in self.plan)
        what = f"TTA pass {transform.name} of member {member}" if still_planned else f"ensemble member {member}"
        self._note(f"dropped {what} after {self._finished} of {self.n_items} items: projected {projected:.0f} s > "
                   f"budget {self.budget:.0f} s")
        return True

    def _next_victim(self) -> int | None:
        """Index in the plan of the pass to drop next, or None."""
        kept = self._kept_passes()
        extra = [i for i in range(len(self.plan)) if i not in kept]
        if extra:
            counts = {m: sum(1 for p, _ in self.plan if p == m) for m, _ in self.plan}
            busiest = max(counts.values())
            return max(i for i in extra if counts[self.plan[i][0]] == busiest)
        return len(self.plan) - 1 if len(self.plan) > 1 else None

    def _kept_passes(self) -> set[int]:
        """Per member: its identity pass if planned, else its first pass."""
        kept: dict[int, int] = {}
        for i, (member, transform) in enumerate(self.plan):
            if member not in kept or (transform.is_identity and not self.plan[kept[member]][1].is_identity):
                kept[member] = i
        return set(kept.values())
