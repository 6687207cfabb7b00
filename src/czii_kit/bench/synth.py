"""Synthetic-data speed: seconds per run at several sizes (all four recons, per stage) and per built-in dataset.

Numbers are wall-clock on whatever cores the process may use (set OMP_NUM_THREADS / taskset to pin). Cost grows
about linearly with the voxel count (FFTs add a log factor) and with the number of tilts.
"""
from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from czii_kit.data import layout
from czii_kit.data.synth import BUILTIN, SynthConfig, make_dataset, simulate_run


def bench_run(shape: Sequence[int], repeat: int, preset: str, report: Callable[[str], None] = print) -> float:
    """The fastest of ``repeat`` simulations of one run of ``shape`` with all four recons; seconds."""
    cfg = SynthConfig.preset(preset, shape=tuple(shape))
    simulate_run("TS_6_4", 0, SynthConfig.preset(preset, shape=(48, 96, 96)))  # templates loaded, imports warm
    best, stages = float("inf"), {}
    for i in range(repeat):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        simulate_run("TS_6_4", i, cfg, layout.RECONS, timings=timings)
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, stages = elapsed, timings
    voxels = shape[0] * shape[1] * shape[2] / 1e6
    detail = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    report(f"run {'x'.join(map(str, shape))} ({voxels:.1f} Mvoxel), 4 recons, preset {preset}: {best:.1f} s "
           f"= {best / voxels:.2f} s/Mvoxel  [{detail}]")
    return best


def bench_builtin(report: Callable[[str], None] = print) -> float:
    """Seconds to write the built-in dataset (into a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_dataset(Path(tmp) / "builtin", progress=False, **BUILTIN)
        seconds = time.perf_counter() - start
    runs = f"{BUILTIN['n_train']} train (all recons) + {BUILTIN['n_test']} test runs"
    report(f"built-in dataset ({runs} of {'x'.join(map(str, BUILTIN['shape']))}, written as zarr): {seconds:.1f} s")
    return seconds


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
