#!/usr/bin/env python
"""Synthetic-data speed: seconds per run at several sizes (all four recons, per stage) and per built-in dataset.

    python tools/bench_synth.py                          # 96x256x256 and 184x630x630 runs + the built-in dataset
    python tools/bench_synth.py --shapes 184 630 630 --repeat 3

Numbers are wall-clock on whatever cores the process may use (set OMP_NUM_THREADS / taskset to pin).
Cost grows about linearly with the voxel count (FFTs add a log factor) and with the number of tilts.
"""
from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import tempfile
import time
from pathlib import Path

if importlib.util.find_spec("czii_kit") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from czii_kit.data import layout  # noqa: E402
from czii_kit.data.synth import BUILTIN, SynthConfig, make_dataset, simulate_run  # noqa: E402


def bench_run(shape, repeat: int, preset: str) -> None:
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
    print(f"run {'x'.join(map(str, shape))} ({voxels:.1f} Mvoxel), 4 recons, preset {preset}: {best:.1f} s "
          f"= {best / voxels:.2f} s/Mvoxel  [{detail}]", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=int, nargs="+", default=[96, 256, 256, 184, 630, 630],
                   help="one or more Z Y X triples (default: the built-in size and the real size)")
    p.add_argument("--repeat", type=int, default=1, help="runs per size; the fastest counts")
    p.add_argument("--preset", default="default")
    p.add_argument("--no-builtin", action="store_true", help="skip timing the built-in dataset")
    args = p.parse_args()
    if len(args.shapes) % 3:
        p.error("--shapes takes Z Y X triples")
    for i in range(0, len(args.shapes), 3):
        bench_run(args.shapes[i:i + 3], args.repeat, args.preset)
    if not args.no_builtin:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            make_dataset(Path(tmp) / "builtin", progress=False, **BUILTIN)
            runs = f"{BUILTIN['n_train']} train (all recons) + {BUILTIN['n_test']} test runs"
            print(f"built-in dataset ({runs} of {'x'.join(map(str, BUILTIN['shape']))}, written as zarr): "
                  f"{time.perf_counter() - start:.1f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
