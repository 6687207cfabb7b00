"""czii study --study configs/studies/hard_classes.yaml --test-data DIR --out reports/NAME [--data ROOT]
       [--arms ARM ...] [--seeds SEED ...] [--ray local|ADDRESS ...]          (= python tools/ablate.py)

Trains every arm of a study with every seed on the study's fold of --data, scores each model on --test-data
(its test split, with the thresholds it carries) and writes results.csv (resumable)
and study.md (mean ± spread per class and overall; a verdict per arm against the baseline).
"""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error, resolve_data


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Recipe study: arms x seeds, each model scored on a held-out test set")
    p.add_argument("--study", required=True, help="study YAML: config, fold, seeds, arms {name: [key=value, ...]}, "
                   "optional overrides [key=value, ...] applied before every arm")
    p.add_argument("--test-data", required=True, help="dataset whose test split (with ground truth) scores the models")
    shared.add_data(p, what="training data")
    p.add_argument("--out", required=True, help="study folder (results.csv, study.md, weights/)")
    p.add_argument("--baseline", default="baseline", help="the arm the others are compared with")
    p.add_argument("--arms", nargs="+", metavar="ARM", help="train only these arms now (the report covers every "
                                                             "arm in results.csv; default: all)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="train these seeds instead of the study "
                   "file's (at least three; finished (arm, seed) pairs in results.csv are kept, not trained again)")
    shared.add_progress(p)
    shared.add_ray(p, "trial", cpus=2.0)
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.data.open_data import open_data
    from czii_kit.errors import ConfigError
    from czii_kit.study import load_study, run_study, write_report

    args = parse_args(argv)
    shared.ray_only(args, "--gpus-per-trial")
    study = load_study(args.study, args.seeds)
    if args.baseline not in study["arms"]:
        raise ConfigError(f"--baseline {args.baseline!r} is not an arm of {args.study} ({', '.join(study['arms'])})")
    unknown = sorted(set(args.arms or ()) - set(study["arms"]))
    if unknown:
        raise ConfigError(f"--arms {', '.join(unknown)}: not in {args.study} ({', '.join(study['arms'])})")
    test = open_data(args.test_data)
    test.solution("test")  # the test split must have ground truth: checked before any training
    runner = {}
    if args.ray:
        from czii_kit.config import load_config
        from czii_kit.scale.tasks import RayTrials

        device = load_config(study["config"])["train"]["device"]
        runner = {"runner": RayTrials(args.ray, args.cpus_per_trial, args.gpus_per_trial, device,
                                      progress=not args.no_progress)}
    outcome = run_study(study, resolve_data(args.data), test, args.out, args.arms,
                        progress=not args.no_progress and not args.ray, **runner)
    print(f"wrote {write_report(outcome.results, args.out, list(test.particles.names), args.baseline)}")
    for trial, why in outcome.failures.items():
        print(f"FAILED {trial}: {why}")
    if outcome.failures:
        print(f"{len(outcome.failures)} trial(s) failed; rerun the same command to run only those")
    return 1 if outcome.failures else 0
