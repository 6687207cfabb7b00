"""Trials (folds, (arm, seed) pairs of a study) as Ray tasks with declared resources.

Every trial is submitted at once and Ray runs as many side by side as the cluster's free resources allow. A
trial that raises is retried once (Ray's ``retry_exceptions``; a worker that dies is retried the same way), then
reported while the others go on; a trial stopped by the user's own mistake (a CziiError) is reported at once.
Results come back to this process as each trial finishes, where ``on_done`` saves them, so a job that is stopped
keeps everything finished so far; what each trial writes itself (a fold's checkpoint) is written by the worker,
atomically.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from czii_kit.errors import ConfigError, CziiError
from czii_kit.scale.session import check_fits, describe_failure, ray_session, require_ray, resources_for
from czii_kit.utils.jobs import OnDone
from czii_kit.utils.progress import progress_bar

RETRIES = 1  # a failed trial runs once more before it is reported


@dataclass(frozen=True)
class UserMistake:
    """What a trial returns instead of raising a CziiError: the user's to fix, so said once, as one line, and not
    retried (a retry fails the same way, and its message would hide the first)."""

    why: str


def call_with_threads(fn: Callable[[Any], Any], trial: Any, threads: int) -> Any:
    """Inside the Ray worker: as many torch threads as CPUs reserved (Ray reuses worker processes, whose
    thread count would otherwise be whatever the last task left), then the trial."""
    import torch

    torch.set_num_threads(threads)
    try:
        return fn(trial)
    except CziiError as e:
        return UserMistake(f"{type(e).__name__}: {e}")


class RayTrials:
    """A trial runner (``czii_kit.utils.jobs.TrialRunner``) on the Ray cluster at ``address``."""

    def __init__(self, address: str, cpus: float = 1.0, gpus: float | None = None, device: str = "auto",
                 progress: bool = True, report: Callable[[str], None] = print, retries: int = RETRIES) -> None:
        if gpus is not None and gpus > 1:
            raise ConfigError(f"--gpus-per-trial {gpus:g}: one trial trains on one GPU; for one model on several "
                              "GPUs launch it with torchrun (docs/scale.md)")
        require_ray()  # said when the command starts, before any data is read
        self.address, self.cpus, self.gpus, self.device = address, cpus, gpus, device
        self.progress, self.report, self.retries = progress, report, retries

    def __call__(self, fn: Callable[[Any], Any], trials: Mapping[str, Any], on_done: OnDone) -> dict[str, str]:
        if not trials:
            return {}
        with ray_session(self.address, self.report) as ray:
            resources = resources_for(ray, self.cpus, self.gpus, self.device, self.address)
            check_fits(ray, resources, "each trial")
            task = ray.remote(call_with_threads).options(**resources.options(), max_retries=self.retries,
                                                         retry_exceptions=True)
            pending = {task.remote(fn, trial, resources.threads): name for name, trial in trials.items()}
            self.report(f"{len(trials)} trial(s) submitted to Ray, each with {resources.cpus:g} CPU(s) and "
                        f"{resources.gpus:g} GPU(s)")
            failures: dict[str, str] = {}
            with progress_bar(total=len(trials), desc="trials", unit="trial", enabled=self.progress) as bar:
                while pending:
                    (ready,), _ = ray.wait(list(pending), num_returns=1)
                    name = pending.pop(ready)
                    try:
                        result = ray.get(ready)
                    except Exception as error:  # noqa: BLE001 -- one failed trial must not stop the others
                        failures[name] = describe_failure(error)
                        self.report(f"FAILED {name} after {self.retries + 1} attempt(s): {failures[name]}")
                    else:
                        if isinstance(result, UserMistake):
                            failures[name] = result.why
                            self.report(f"FAILED {name}: {result.why}")
                        else:
                            on_done(name, result)
                            self.report(f"finished {name}")
                    bar.update()
        return failures
