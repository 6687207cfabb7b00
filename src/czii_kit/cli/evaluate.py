"""czii evaluate --data ROOT --weights weights/EXP [weights/EXP_YOLO ...] --out reports/NAME

Out-of-fold predictions of every fold checkpoint found (U-Net and/or YOLO), thresholds tuned
jointly on them, and a table of U-Net / YOLO / fused x post-processing variants:
reports/NAME/report.md, variants.csv, per_class.csv, thresholds.json, PNG curves and slice overlays.
Same as ``python tools/evaluate.py``.
"""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error, resolve_data


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Cross-validation report: post-processing variants and thresholds.json from the fold models")
    shared.add_data(p)
    shared.add_weights(p)
    p.add_argument("--out", required=True, help="report folder, e.g. reports/NAME")
    shared.add_folds(p, "only these folds (default: every fold checkpoint found)")
    shared.add_device(p, default="auto")
    p.add_argument("--floor", type=float, default=0.05, help="lowest candidate score kept before tuning")
    p.add_argument("--tta", help="U-Net TTA override (none | flips | full | id,z,...); default: the checkpoint's")
    shared.add_progress(p)
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.evaluate import run_evaluation

    args = parse_args(argv)
    root = resolve_data(args.data)
    result = run_evaluation(root, args.weights, args.out, folds=shared.folds(args.folds), device=args.device,
                            floor=args.floor, tta=args.tta, progress=not args.no_progress)
    for model, lineage in result["lineage"].items():
        print(f"{model}: {lineage}")
    print(result["rows"].to_string(index=False, float_format="%.4f"))
    untuned = result["tuning"].meta["untuned"]
    if untuned:
        print(f"WARNING: no out-of-fold candidates for {', '.join(untuned)}, so nothing could be tuned for them: "
              f"{result['thresholds']} keeps the config's default threshold for them (train longer, or check the "
              "models with czii predict --split train --score)")
    print(f"wrote {result['report']} and {result['thresholds']} (for predict --thresholds-from)")
    return 0
