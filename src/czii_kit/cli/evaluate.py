"""python tools/evaluate.py --data ROOT --weights weights/EXP [weights/EXP_YOLO ...] --out reports/NAME

Out-of-fold predictions of every fold checkpoint found (U-Net and/or YOLO), thresholds tuned
jointly on them, and an ablation of U-Net / YOLO / fused x post-processing variants:
reports/NAME/report.md, ablation.csv, per_class.csv and PNG curves and slice overlays.
"""
from __future__ import annotations

import argparse

from czii_kit.cli.common import exit_on_user_error, resolve_data


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cross-validation report with an ablation table")
    p.add_argument("--data", help="competition directory (default: built-in synthetic dataset)")
    p.add_argument("--weights", nargs="+", required=True, help="experiment directories or fold checkpoints")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--folds", type=int, nargs="+", help="only these folds (default: every fold checkpoint found)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--floor", type=float, default=0.05, help="lowest candidate score kept before tuning")
    p.add_argument("--tta", help="U-Net TTA override (none | flips | full | id,z,...); default: the checkpoint's")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.evaluate import run_evaluation

    args = parse_args(argv)
    root = resolve_data(args.data)
    result = run_evaluation(root, args.weights, args.out, folds=args.folds, device=args.device, floor=args.floor,
                            tta=args.tta, progress=not args.no_progress)
    print(result["rows"].to_string(index=False, float_format="%.4f"))
    print(f"wrote {result['report']} and {result['thresholds']} (for predict --thresholds-from)")
    return 0
