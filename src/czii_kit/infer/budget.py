"""Fit ensemble x TTA inference into a wall-clock budget (Kaggle's 9-hour notebook limit).

The plan is an ordered list of passes (member_index, transform); every item (tomogram) runs
all passes of the current plan. After each item the caller records its time; before the
next, the projection

    elapsed + (seconds per pass so far) x (passes in plan) x (items left)

is compared with ``safety x total_seconds``. While it is over, one pass is dropped: TTA
passes first (from the member with the most passes, its last one; each member keeps its
identity pass, or its first pass if it has no identity), then whole members from the end
of the plan, never below one pass. Drops are permanent, so the result is deterministic for
a given sequence of clock readings.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from czii_kit.errors import ConfigError
from czii_kit.infer.tta import Transform

log = logging.getLogger(__name__)
Pass = tuple[int, Transform]


class TimeBudget:
    """Decide, item by item, which passes still fit in the time left."""

    def __init__(
        self,
        total_seconds: float,
        n_items: int,
        plan: Sequence[Pass],
        clock: Callable[[], float] = time.monotonic,
        safety: float = 0.9,
    ) -> None:
        if total_seconds <= 0 or n_items < 1 or not plan or not 0 < safety <= 1:
            raise ConfigError(
                f"time budget needs total_seconds > 0, n_items >= 1, a non-empty plan and "
                f"0 < safety <= 1; got {total_seconds}, {n_items}, {len(plan)} passes, {safety}"
            )
        self.budget = total_seconds * safety
        self.n_items = n_items
        self.plan: list[Pass] = list(plan)
        self.dropped: list[str] = []
        self._clock = clock
        self._start = clock()
        self._items_done = 0
        self._pass_seconds = 0.0
        self._passes_done = 0
        self._issued = len(self.plan)
        self._warned_unfit = False

    def record(self, seconds: float) -> None:
        """Report the wall time of the item just finished (with the passes last handed out)."""
        self._items_done += 1
        self._pass_seconds += seconds
        self._passes_done += self._issued

    def projected_seconds(self) -> float | None:
        """Projected total time with the current plan; None before the first record."""
        if not self._passes_done:
            return None
        per_pass = self._pass_seconds / self._passes_done
        remaining = max(0, self.n_items - self._items_done)
        return self._clock() - self._start + per_pass * len(self.plan) * remaining

    def passes_for_next(self) -> list[Pass]:
        """The passes to run on the next item, after dropping what no longer fits."""
        if self._items_done < self.n_items:
            while self._over_budget() and self._drop_one():
                pass
        self._issued = len(self.plan)
        return list(self.plan)

    def _over_budget(self) -> bool:
        projected = self.projected_seconds()
        return projected is not None and projected > self.budget

    def _drop_one(self) -> bool:
        """Drop the next pass in priority order; False when only one pass is left."""
        index = self._next_victim()
        if index is None:
            if not self._warned_unfit:
                log.warning("time budget: projected %.0fs > %.0fs even with one pass per item; "
                            "nothing left to drop", self.projected_seconds(), self.budget)
                self._warned_unfit = True
            return False
        projected = self.projected_seconds()
        member, transform = self.plan.pop(index)
        still_planned = any(m == member for m, _ in self.plan)
        what = f"TTA pass {transform.name} of member {member}" if still_planned else f"ensemble member {member}"
        message = (
            f"dropped {what} after {self._items_done} of {self.n_items} items: "
            f"projected {projected:.0f}s > budget {self.budget:.0f}s"
        )
        log.warning("time budget: %s", message)
        self.dropped.append(message)
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
