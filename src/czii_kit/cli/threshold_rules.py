"""czii threshold-rules --study-dir reports/NAME --test-data DIR [--data ROOT] [--tta none [flips]]
    [--smooth 1 2 3] [--arms ARM ...]

For every model of a finished study (czii study --out), picks thresholds on its own validation run by several
rules and scores each on the test split: is the highest validation F4 the right pick, how much does choosing on
one run cost against the test-tuned ceiling, and what does TTA add at the same rule? Writes
threshold_rules[_TTA].md and .csv into the study folder; candidates are cached next to each checkpoint (one file
per split and TTA), so a rerun only scores.
"""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error, resolve_data


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Compare threshold-picking rules on a study's models (paired)")
    p.add_argument("--study-dir", required=True, help="a study folder written by czii study --out")
    p.add_argument("--test-data", required=True, help="dataset whose test split (with ground truth) scores the models")
    p.add_argument("--data", help="the study's training data, which holds each model's validation run "
                                  "(default: the built-in synthetic dataset)")
    p.add_argument("--tta", nargs="+", default=["none"], help="TTA of both predictions, one or more (none | flips | "
                   "full | list; default none); with several, the report also compares each with the first")
    p.add_argument("--arms", nargs="+", metavar="ARM", help="only these arms of the study (default: all)")
    p.add_argument("--smooth", type=int, nargs="+", default=[1, 2, 3], metavar="K",
                   help="smoothed rules: F4 averaged over K grid points either side before the pick")
    shared.add_progress(p)
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from pathlib import Path

    from czii_kit.data.open_data import open_data
    from czii_kit.errors import ConfigError
    from czii_kit.infer.tta import parse_tta
    from czii_kit.study import study_models, threshold_rules, tta_suffix, write_threshold_report

    args = parse_args(argv)
    if any(k < 1 for k in args.smooth):
        raise ConfigError(f"--smooth {args.smooth}: each K must be >= 1 (K=0 is the `own` rule, always included)")
    for tta in args.tta:
        parse_tta(tta)
    # checked here, before resolve_data may generate the built-in dataset (threshold_rules checks them again)
    study_models(args.study_dir, args.arms)
    test = open_data(args.test_data)
    test.solution("test")
    rows = threshold_rules(args.study_dir, resolve_data(args.data), test, args.smooth, args.tta, args.arms,
                           progress=not args.no_progress)
    suffix = "".join(tta_suffix(tta) for tta in args.tta)
    scored = [p.name for p in test.particles if p.weight > 0]  # weight 0 (beta-amylase) moves no score
    path = write_threshold_report(rows, Path(args.study_dir) / f"threshold_rules{suffix}.md", scored)
    print(path.read_text())
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0
