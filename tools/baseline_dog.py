#!/usr/bin/env python
"""F4 of the difference-of-Gaussians baseline on a fold's held-out run, thresholds tuned per class.

    python tools/baseline_dog.py --fold 0 [--data ROOT]

Thresholds are tuned on the held-out run itself, exactly as training's validation tunes the
model's, so the comparison is like for like (and generous to the baseline).
"""
import argparse

from czii_kit.baseline import dog_response
from czii_kit.cli.common import resolve_data_root
from czii_kit.config import load_config
from czii_kit.data import layout
from czii_kit.infer.predictor import candidates
from czii_kit.metric import best_thresholds, format_table, score_table, table_score
from czii_kit.train.data import load_runs
from czii_kit.train.folds import split_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--data")
    p.add_argument("--config", default="cpu_quick", help="for normalization, peak and post-processing settings")
    args = p.parse_args()
    root = resolve_data_root(args.data)
    cfg = load_config(args.config)
    _, val = split_runs(layout.list_runs(root, "train"), args.fold, cfg["data"]["fold_file"])
    runs = load_runs(root, val, cfg, extra_recons=False)
    import pandas as pd

    cands = pd.concat([candidates(dog_response(r.volume), r.name, 1, cfg, floor=0.0) for r in runs])
    solution = pd.concat([r.picks for r in runs])
    thresholds, _ = best_thresholds(solution, cands)
    kept = cands[cands["score"] >= cands["particle_type"].map(thresholds).fillna(float("inf"))]
    table = score_table(solution, kept)
    print(f"DoG baseline on {', '.join(val)} (fold {args.fold}):")
    print(format_table(table, table_score(table)))


if __name__ == "__main__":
    main()
