#!/usr/bin/env python
"""Sliding-window settings by measurement: F4 and seconds per tomogram over windows x overlaps.

    python tools/bench_windows.py --weights weights/cpu_quick --data data/eval_default \
        --windows 64x128x128 96x160x160 96x224x224 --overlaps 0.25 0.125 0

Every cell runs the one prediction pipeline (czii_kit.study.score_held_out, no TTA) on the split
and reports two F4s: with the checkpoints' own thresholds (what a submission gets) and with thresholds
tuned on the split itself (the quality of the probability maps, free of threshold luck), plus the
network work (voxels pushed through it / tomogram voxels) and the mean seconds per tomogram (setup
excluded). The networks are fully convolutional, so any window divisible by the model's stride works.
"""
import argparse

from czii_kit.benchmarks import window_work
from czii_kit.cli.common import exit_on_user_error, resolve_data
from czii_kit.errors import ConfigError
from czii_kit.infer.kinds import load_checkpoints
from czii_kit.metric import table_score
from czii_kit.study import score_held_out


def parse_window(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--windows {text!r}: write a window as ZxYxX, e.g. 64x128x128")
    return tuple(int(p) for p in parts)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--data", help="competition directory or copick config (default: the built-in dataset)")
    p.add_argument("--split", default="test", help="a split with a solution (default %(default)s)")
    p.add_argument("--windows", nargs="+", default=["64x128x128", "96x160x160", "96x224x224"])
    p.add_argument("--overlaps", nargs="+", type=float, default=[0.25, 0.125, 0.0])
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    windows = [parse_window(w) for w in args.windows]
    data = resolve_data(args.data)
    config = load_checkpoints(args.weights)[0]["config"]
    shape, _ = data.run_geometry(data.list_runs(args.split)[0], args.split, config["data"])
    data.solution(args.split)  # ground truth needed: checked before the first prediction
    rows = []
    for window in windows:
        for overlap in args.overlaps:
            overrides = [f"infer.window=[{','.join(map(str, window))}]", f"infer.overlap={overlap}"]
            held_out = score_held_out(args.weights, data, args.split, overrides, device=args.device)
            own, tuned = table_score(held_out.fixed), table_score(held_out.tuned)
            work = window_work(shape, window, int(config["targets"]["stride"]), overlap)
            rows.append((window, overlap, own, tuned, held_out.seconds_per_run))
            print(f"window {'x'.join(map(str, window)):>12}  overlap {overlap:<5}  work {work:4.2f}x  "
                  f"F4 {own:.3f} (own thresholds)  {tuned:.3f} (tuned)  {held_out.seconds_per_run:6.1f} s per "
                  "tomogram", flush=True)
    base = rows[0]
    print(f"\nrelative to the first cell ({'x'.join(map(str, base[0]))}, overlap {base[1]}):")
    for window, overlap, own, tuned, seconds in rows:
        print(f"  {'x'.join(map(str, window)):>12} / {overlap:<5}  F4 {own - base[2]:+.3f} (own) {tuned - base[3]:+.3f}"
              f" (tuned)  time x{seconds / base[4]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
