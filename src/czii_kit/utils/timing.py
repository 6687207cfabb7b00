"""Per-stage wall times for benchmarks (tools/bench_*.py), shared by inference and the simulator."""
from __future__ import annotations

import time
from collections.abc import Callable


class StageClock:
    """Adds each stage's wall seconds to ``timings`` (when given; a no-op without a dict).

    ``sync`` is called before each reading, e.g. to wait for a GPU so a stage's time is its own;
    the clock itself imports no array library so the simulator can use it without torch.
    """

    def __init__(self, timings: dict | None, sync: Callable[[], None] | None = None) -> None:
        self.timings, self.sync = timings, sync
        self.start = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is None:
            return
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.start
        self.start = now
