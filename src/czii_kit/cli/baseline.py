"""czii baseline --fold 0 [--data ROOT] [--config cpu_quick]     (= python tools/baseline_dog.py)

F4 of the difference-of-Gaussians baseline (``czii_kit.baseline``) on a fold's held-out run, thresholds tuned per
class on that run itself, exactly as training's validation tunes the model's: a like-for-like comparison that is
generous to the baseline. What a trained model has to beat.
"""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error, resolve_data


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("F4 of the difference-of-Gaussians baseline on a fold's held-out run")
    p.add_argument("--fold", type=int, default=0)
    shared.add_data(p)
    p.add_argument("--config", default="cpu_quick", help="for normalization, peak and post-processing settings")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.baseline import dog_score
    from czii_kit.config import load_config
    from czii_kit.data.folds import fold_runs
    from czii_kit.metric import format_table
    from czii_kit.train.data import load_runs

    args = parse_args(argv)
    data = resolve_data(args.data)
    cfg = load_config(args.config)
    _, val = fold_runs(data, cfg["data"], args.fold)
    _, table, score = dog_score(load_runs(data, val, cfg, extra_recons=False), cfg)
    print(f"DoG baseline on {', '.join(val)} (fold {args.fold}):")
    print(format_table(table, score))
    return 0
