"""Predict every run of a split: set up one Predictor per device first, then spread the runs over devices.

The per-tomogram work is ``czii_kit.infer.predictor`` (raw candidates, then ``finalize``); this module
schedules it and keeps failures loud and contained:

* Setup before the first tomogram: members are loaded on every device (graphs exported, TensorRT engines
  found prebuilt or built once). If the requested engine cannot be set up, that is said once and the
  torch engine is used for every run; setup time is measured apart from inference.
* One worker thread per device (one device: the calling thread), each with its device current for torch and
  CuPy, pulling runs from one queue; the time budget (if any) is shared, sees inference time only, and knows
  how many workers run.
* A run that fails on a graph engine (not because of its data) is retried once on torch; a run that
  still fails is reported while the others finish.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from czii_kit.errors import ConfigError, CziiError, DataError, PredictionError
from czii_kit.infer.budget import TimeBudget
from czii_kit.infer.kinds import KINDS
from czii_kit.infer.plan import PredictionPlan
from czii_kit.infer.predictor import Predictor
from czii_kit.infer.tta import parse_tta
from czii_kit.infer.workers import map_over_devices
from czii_kit.post.peaks import empty_detections, probe_gpu_peaks
from czii_kit.utils.backend import use_device
from czii_kit.utils.cpu import keep_freed_memory

log = logging.getLogger(__name__)


@dataclass
class SplitResult:
    """What a split prediction produced: detections of every run that finished, and what went wrong."""

    detections: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)  # run -> inference wall seconds
    failures: dict[str, str] = field(default_factory=dict)  # run -> "ExceptionType: message"
    decisions: list[str] = field(default_factory=list)  # engine fallback, retries, the time budget's decisions
    engine: str = "torch"  # the engine the runs used
    setup_seconds: float = 0.0


def available_devices(device: str) -> list[str]:
    """'cpu'; every visible GPU for 'auto' / 'cuda' (one worker each); one GPU for 'cuda:N'."""
    from czii_kit.infer.engines import resolve_device

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return ["cpu"]
    if device in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(resolve_device(device))]  # cuda:N, checked against this machine


class LocalSplit:
    """Predict's default executor: the plan's runs on this machine's devices, one worker thread each (one
    device: this thread) (``czii_kit.scale.predict.RayPrediction`` is the other one: Ray actors on a cluster)."""

    def devices(self, device: str) -> list[str]:
        return available_devices(device)

    def __call__(self, plan: PredictionPlan, devices: Sequence[str], **options) -> SplitResult:
        return predict_split(plan, devices, **options)


class Predictors:
    """One Predictor per device and engine, loaded once from the plan (under a lock: workers share it)."""

    def __init__(self, plan: PredictionPlan) -> None:
        self.plan = plan
        self._loaded: dict[tuple[str, str], Predictor] = {}
        self._lock = threading.Lock()

    def get(self, device: str, engine: str) -> Predictor:
        with self._lock:
            if (device, engine) not in self._loaded:
                with use_device(device):
                    self._loaded[device, engine] = self.plan.load(device, engine)
            return self._loaded[device, engine]


def probe_peak_finding(devices: Sequence[str], report: Callable[[str], None]) -> list[str]:
    """CuPy probed once on every GPU (``post.peaks.probe_gpu_peaks``, before the clock); where it fails, peaks are
    found on the host for every run, said once. Returns those notes."""
    notes = []
    for device in devices:
        if torch.device(device).type == "cuda":
            reason = probe_gpu_peaks(device)
            if reason is not None:
                notes.append(f"CuPy does not run on {device} ({reason}); peaks are found on the host for every run")
                report(f"WARNING: {notes[-1]}")
    return notes


def set_up(predictors: Predictors, devices: Sequence[str], engine: str,
           report: Callable[[str], None]) -> tuple[str, list[str]]:
    """Load the members on every device with ``engine``; on failure say why once and fall back to torch. Then
    probe CuPy's peak finding on every GPU. Freed memory stays in this process: every run reads a tomogram and
    allocates maps of its size, and page-faulting them back in cost 1-4 s per run on CPU (tools/bench_scale.py)."""
    keep_freed_memory()
    notes = probe_peak_finding(devices, report)
    try:
        for device in devices:
            predictors.get(device, engine)
        return engine, notes
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 -- any failure of the fast engine falls back, said loudly once
        if engine == "torch":
            raise
        message = (f"engine {engine} could not be set up ({type(error).__name__}: {error}); "
                   "using the torch engine for every run")
        report(f"WARNING: {message}")
        if not isinstance(error, CziiError):  # a known cause (a missing package, no GPU) needs no traceback
            log.exception("engine set-up failed")
        for device in devices:
            predictors.get(device, "torch")
        return "torch", [*notes, message]


def predict_one(predictors: Predictors, run: str, device: str, engine: str, passes=None,
                note: Callable[[str], None] = log.warning,
                clock: Callable[[], float] = time.monotonic) -> tuple[pd.DataFrame, float]:
    """One run of the plan on ``device``: (detections, seconds). A run that fails on a graph engine, not because
    of its data, is retried once on torch, and ``note`` is told."""
    plan = predictors.plan
    data, split, cfg = plan.runs.data, plan.runs.split, plan.cfg

    def predict_with(engine_now: str) -> pd.DataFrame:
        tomogram = data.read_run(run, split, cfg["data"])
        return predictors.get(device, engine_now).predict(tomogram, plan.thresholds, plan.source_weights, passes)

    with use_device(device):
        started = clock()
        try:
            found = predict_with(engine)
        except DataError:
            raise  # the run's data is at fault: another engine would fail the same way
        except Exception as error:  # noqa: BLE001
            if engine == "torch":
                raise
            note(f"{run} failed on {engine} ({type(error).__name__}: {error}); retrying it on torch")
            found = predict_with("torch")
        return found, clock() - started


def predict_split(plan: PredictionPlan, devices: Sequence[str], *, time_budget_h: float | None = None,
                  progress: bool = True, report: Callable[[str], None] = print,
                  clock: Callable[[], float] = time.monotonic) -> SplitResult:
    """Detections of the plan's runs (thresholded, post-processed, fused when there are several sources)."""
    if plan.runs is None or plan.thresholds is None:
        raise PredictionError("internal: predict_split needs a plan with runs (PredictionPlan.on_runs) and thresholds")
    runs, cfg = plan.runs.to_predict, plan.cfg
    if not runs:  # every run refused before any work (incomplete stores): nothing to load
        return SplitResult(empty_detections(), failures=dict(plan.runs.skipped), engine=cfg["infer"]["engine"])
    t0 = clock()
    predictors = Predictors(plan)
    engine, decisions = set_up(predictors, devices, cfg["infer"]["engine"], report)
    setup_seconds = clock() - t0
    report(f"set up {len(devices)} device(s) with engine {engine} in {setup_seconds:.1f} s")
    budget = None
    loaded = predictors.get(devices[0], engine).members
    budgeted = sum(len(members) for name, members in loaded.items() if KINDS[name].takes_passes)
    if time_budget_h and budgeted:
        passes = [(i, t) for i in range(budgeted) for t in parse_tta(cfg["infer"]["tta"])]
        budget = TimeBudget(time_budget_h * 3600, len(runs), passes, workers=len(devices), clock=clock,
                            setup_seconds=setup_seconds)
    seconds: dict[str, float] = {}
    lock = threading.Lock()

    def passes_for(run: str):
        if budget is None:
            return None
        grouped = defaultdict(list)
        for member, transform in budget.passes_for(run):
            grouped[member].append(transform)
        return dict(grouped)

    def work(run: str, device: str) -> pd.DataFrame:
        found, elapsed = predict_one(predictors, run, device, engine, passes_for(run), note, clock)
        with lock:
            seconds[run] = elapsed
        if budget is not None:
            budget.record(run, elapsed)
        report(f"{run}: {len(found)} particles in {elapsed:.1f} s on {device}")
        return found

    def note(line: str) -> None:
        report(f"WARNING: {line}")
        with lock:
            decisions.append(line)

    results, failures = map_over_devices(list(runs), list(devices), work, progress=progress, unit="run")
    failures = {run: plan.runs.skipped.get(run) or failures[run] for run in plan.runs.names
                if run in failures or run in plan.runs.skipped}
    frames = [results[r] for r in runs if r in results]
    detections = pd.concat(frames, ignore_index=True) if frames else empty_detections()
    decisions += budget.decisions if budget is not None else []
    return SplitResult(detections, seconds, failures, decisions, engine, setup_seconds)
