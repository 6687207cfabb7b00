"""Sliding-window settings by measurement: F4 and seconds per tomogram over windows x overlaps.

Every cell runs the one prediction plan (``czii_kit.study.score_held_out``, no TTA) on the split and reports two
F4s: with the checkpoints' own thresholds (what a submission gets) and with thresholds tuned on the split itself
(the quality of the probability maps, free of threshold luck), plus the network work (voxels pushed through it /
tomogram voxels) and the mean seconds per tomogram (setup excluded). The networks are fully convolutional, so
any window divisible by the model's stride works.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from czii_kit.infer.kinds import load_checkpoints
from czii_kit.infer.sliding_window import window_work
from czii_kit.metric import table_score
from czii_kit.study import score_held_out


def sweep(weights: Sequence[str], data, split: str, windows: Sequence[tuple[int, int, int]],
          overlaps: Sequence[float], device: str = "cpu", report: Callable[[str], None] = print) -> list[tuple]:
    """(window, overlap, F4 own, F4 tuned, seconds per tomogram) per cell, each printed as it comes, then every
    cell relative to the first."""
    config = load_checkpoints(weights)[0]["config"]
    shape, _ = data.run_geometry(data.list_runs(split)[0], split, config["data"])
    data.solution(split)  # ground truth needed: checked before the first prediction
    rows = []
    for window in windows:
        for overlap in overlaps:
            overrides = [f"infer.window=[{','.join(map(str, window))}]", f"infer.overlap={overlap}"]
            held_out = score_held_out(weights, data, split, overrides, device=device)
            own, tuned = table_score(held_out.fixed), table_score(held_out.tuned)
            work = window_work(shape, window, int(config["targets"]["stride"]), overlap)
            rows.append((window, overlap, own, tuned, held_out.seconds_per_run))
            report(f"window {'x'.join(map(str, window)):>12}  overlap {overlap:<5}  work {work:4.2f}x  "
                   f"F4 {own:.3f} (own thresholds)  {tuned:.3f} (tuned)  {held_out.seconds_per_run:6.1f} s per "
                   "tomogram")
    base = rows[0]
    report(f"\nrelative to the first cell ({'x'.join(map(str, base[0]))}, overlap {base[1]}):")
    for window, overlap, own, tuned, seconds in rows:
        report(f"  {'x'.join(map(str, window)):>12} / {overlap:<5}  F4 {own - base[2]:+.3f} (own) "
               f"{tuned - base[3]:+.3f} (tuned)  time x{seconds / base[4]:.2f}")
    return rows
