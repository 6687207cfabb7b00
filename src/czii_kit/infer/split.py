"""Predict every run of a split: one Predictor per device, loaded once; runs spread over devices; a time budget.

The per-tomogram work is ``czii_kit.infer.pipeline`` (raw candidates, then ``finalize``); this module
only schedules it. Each device gets a worker thread with its own members (engines are not shared
across GPUs), workers pull runs from one queue, and a run that fails is reported while the others
finish.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from czii_kit.data import io
from czii_kit.errors import ConfigError
from czii_kit.infer.budget import TimeBudget
from czii_kit.infer.pipeline import Predictor, load_predictor
from czii_kit.infer.tta import parse_tta
from czii_kit.infer.workers import map_over_devices
from czii_kit.post.fusion import ClassWeights
from czii_kit.post.peaks import empty_detections


@dataclass
class SplitResult:
    """What a split prediction produced: detections of every run that finished, and what went wrong."""

    detections: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)  # run -> wall seconds
    failures: dict[str, str] = field(default_factory=dict)  # run -> "ExceptionType: message"
    dropped: list[str] = field(default_factory=list)  # the time budget's decisions


def available_devices(device: str) -> list[str]:
    """'cpu', or every visible GPU for 'auto' / 'cuda' (one worker each)."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return ["cpu"]
    if device not in ("auto", "cuda"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def predict_split(root, split: str, runs: Sequence[str], ckpts: Sequence[dict], cfg: dict,
                  thresholds: Mapping[str, float], devices: Sequence[str], *,
                  member_weights: Sequence[float] | None = None, source_weights: ClassWeights | None = None,
                  time_budget_h: float | None = None, cache_dir: str | Path = "build/engines",
                  progress: bool = True, report: Callable[[str], None] = print) -> SplitResult:
    """Detections of ``runs`` (thresholded, post-processed, fused when there are several sources)."""
    engine = cfg["infer"]["engine"]
    lock = threading.Lock()
    predictors: dict[str, Predictor] = {}
    state: dict = {"budget": None}
    seconds: dict[str, float] = {}

    def predictor_for(device: str) -> Predictor:
        with lock:
            if device not in predictors:
                predictors[device] = load_predictor(ckpts, cfg, device, engine, cache_dir, member_weights)
                volume_members = len(predictors[device].members.get("unet", []))
                if time_budget_h and volume_members and state["budget"] is None:
                    plan = [(i, t) for i in range(volume_members) for t in parse_tta(cfg["infer"]["tta"])]
                    state["budget"] = TimeBudget(time_budget_h * 3600, len(runs), plan)
            return predictors[device]

    def passes_now():
        budget = state["budget"]
        if budget is None:
            return None
        grouped = defaultdict(list)
        with lock:
            for member, transform in budget.passes_for_next():
                grouped[member].append(transform)
        return dict(grouped)

    def work(run: str, device: str) -> pd.DataFrame:
        t0 = time.monotonic()
        predictor = predictor_for(device)
        tomogram = io.read_run(root, run, split, cfg["data"])
        found = predictor.predict(tomogram, thresholds, source_weights, passes_now())
        elapsed = time.monotonic() - t0
        with lock:
            seconds[run] = elapsed
            if state["budget"] is not None:
                state["budget"].record(elapsed)
        report(f"{run}: {len(found)} particles in {elapsed:.1f} s on {device}")
        return found

    results, failures = map_over_devices(list(runs), list(devices), work, progress=progress)
    frames = [results[r] for r in runs if r in results]
    detections = pd.concat(frames, ignore_index=True) if frames else empty_detections()
    dropped = state["budget"].dropped if state["budget"] is not None else []
    return SplitResult(detections, seconds, failures, list(dropped))
