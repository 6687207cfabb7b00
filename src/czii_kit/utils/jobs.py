"""Jobs made of independent trials (folds, (arm, seed) pairs of a study): one calling convention for running
them here, one after the other, or on a Ray cluster (``czii_kit.scale.tasks.RayTrials``).

A runner takes ``fn``, the trials by name and ``on_done(name, result)``, which the caller's process calls as each
trial finishes (so results are saved as they come), and returns the failures (name -> "Type: message"). Here in
process the first failure stops the job, as it always did; Ray retries a failed trial once and goes on.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

OnDone = Callable[[str, Any], None]


class TrialRunner(Protocol):
    def __call__(self, fn: Callable[[Any], Any], trials: Mapping[str, Any], on_done: OnDone) -> dict[str, str]: ...


def in_process(fn: Callable[[Any], Any], trials: Mapping[str, Any], on_done: OnDone) -> dict[str, str]:
    """Every trial here, in order; an error stops the job (nothing after it runs)."""
    for name, trial in trials.items():
        on_done(name, fn(trial))
    return {}
