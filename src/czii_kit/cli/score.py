"""czii score --submission P (--solution S | --data ROOT [--split test|train]) [--runs A,B] [--json]

Scores a submission with the exact Kaggle metric and prints the per-class table.
With --json the last stdout line is one JSON object: {"score", "per_class", "submission", "solution"}.
"""
from __future__ import annotations

import argparse
import json
import math
import pandas as pd

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error
from czii_kit.data import layout
from czii_kit.metric import format_table, score_table, table_score
from czii_kit.data.open_data import open_data
from czii_kit.errors import DataError, first_few
from czii_kit.particles import CZII
from czii_kit.submission import read_submission
from czii_kit.tables import read_solution, solution_for_runs


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Score a submission.csv with the exact Kaggle CZII metric")
    p.add_argument("--submission", required=True, help="submission CSV (id, experiment, particle_type, x, y, z)")
    truth = p.add_mutually_exclusive_group(required=True)
    truth.add_argument("--solution", help="ground-truth CSV (experiment, particle_type, x, y, z[, id])")
    truth.add_argument("--data", help="competition directory; ground truth from its --split")
    p.add_argument("--split", choices=layout.SPLITS,
                   help="with --data: test = ROOT/solution.csv (synthetic data only; the default, as in predict), "
                        "train = all train picks")
    p.add_argument("--runs", help="comma-separated runs to score (default: every run of the ground truth)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object on the last line")
    args = p.parse_args(argv)
    if args.split and not args.data:
        p.error("--split goes with --data; with --solution the CSV is the ground truth")
    return args


def _json_value(value):
    """numpy scalars -> Python; NaN -> null (strict JSON)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def to_json(table: pd.DataFrame, final: float, submission: str, solution: str) -> str:
    per_class = {name: {col: _json_value(row[col]) for col in table.columns} for name, row in table.iterrows()}
    return json.dumps({"score": final, "per_class": per_class, "submission": submission, "solution": solution})


def listed_runs(data, split: str) -> set[str]:
    """The split's runs where the data lists them (a run without picks is scored too), else none."""
    try:
        return set(data.list_runs(split))
    except DataError:  # a synthetic test split may hold only its solution.csv
        return set()


def check_overlap(submission: pd.DataFrame, scored_runs: set[str], submission_path: str, source: str) -> None:
    """A submission of other runs than those scored would score 0 in silence (Kaggle ignores rows of runs it does
    not know): an error when no run is shared, a note naming the ignored runs otherwise."""
    theirs = set(submission["experiment"])
    ignored = sorted(theirs - scored_runs)
    if theirs and not theirs & scored_runs:
        raise DataError(f"none of the runs of {submission_path} ({first_few(ignored)}) are scored in {source} "
                        f"({first_few(sorted(scored_runs))}); score it against the split it was predicted on")
    if ignored:
        print(f"note: {len(ignored)} run(s) of the submission are not scored here and are ignored, as Kaggle "
              f"does: {first_few(ignored)}")


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    runs = shared.run_list(args.runs)
    if args.solution:
        particles = CZII
        solution, source = solution_for_runs(read_solution(args.solution), runs, args.solution), args.solution
        scored_runs = set(runs or solution["experiment"])
    else:
        data = open_data(args.data)
        particles = data.particles
        split = args.split or "test"
        solution, source = data.solution(split, runs), f"{args.data} ({split} split)"
        scored_runs = set(runs or solution["experiment"]) | (set() if runs else listed_runs(data, split))
    submission = read_submission(args.submission, particles)
    check_overlap(submission, scored_runs, args.submission, source)
    table = score_table(solution, submission, particles)
    final = table_score(table)
    print(f"submission: {args.submission}\nsolution:   {source}")
    print(format_table(table, final))
    if args.json:
        print(to_json(table, final, args.submission, source))
    return 0
