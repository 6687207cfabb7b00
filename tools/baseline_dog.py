#!/usr/bin/env python
"""F4 of the difference-of-Gaussians baseline on a fold's held-out run, thresholds tuned per class.

    python tools/baseline_dog.py --fold 0 [--data ROOT]

Thresholds are tuned on the held-out run itself, exactly as training's validation tunes the
model's, so the comparison is like for like (and generous to the baseline).
"""
import argparse

from czii_kit.baseline import dog_score
from czii_kit.cli.common import resolve_data
from czii_kit.config import load_config
from czii_kit.data.folds import split_runs
from czii_kit.metric import format_table
from czii_kit.train.data import load_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--data")
    p.add_argument("--config", default="cpu_quick", help="for normalization, peak and post-processing settings")
    args = p.parse_args()
    root = resolve_data(args.data)
    cfg = load_config(args.config)
    _, val = split_runs(root.list_runs("train"), args.fold, cfg["data"]["fold_file"])
    _, table, score = dog_score(load_runs(root, val, cfg, extra_recons=False), cfg)
    print(f"DoG baseline on {', '.join(val)} (fold {args.fold}):")
    print(format_table(table, score))


if __name__ == "__main__":
    main()
