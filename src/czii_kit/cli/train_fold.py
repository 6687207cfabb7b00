"""czii train --fold K [--data ROOT] [--config NAME] [--out DIR] [--set k=v ...] [--resume] [--device D]
                  [--thresholds-from REPORT]   (fold -1: thresholds tuned by cross-validation)

Same as ``python tools/train_fold.py``."""
from __future__ import annotations

import argparse
from pathlib import Path

from czii_kit.cli import args as shared
from czii_kit.cli.common import default_config_name, exit_on_user_error, resolve_data
from czii_kit.config import load_config, resolve_config_path


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Train one leave-one-tomogram-out fold and write weights/EXP/fold{K}.pt")
    p.add_argument("--fold", type=int, required=True, help="held-out run index in the sorted train runs; -1 = all runs")
    shared.add_data(p)
    p.add_argument("--config", help="configs/NAME.yaml or a path (default: cpu_quick without GPU, unet_r34 with one)")
    p.add_argument("--out", help="experiment directory (default: weights/<config name>)")
    shared.add_overrides(p)
    shared.add_device(p, what="; sets train.device")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from fold{K}_last.pt")
    p.add_argument("--thresholds-from", metavar="REPORT",
                   help="with --fold -1: thresholds.json (or its report folder) from tools/evaluate.py over the fold "
                        "models; the full-data checkpoint stores those cross-validated thresholds")
    shared.add_progress(p)
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    name = args.config or default_config_name()
    if not args.config:
        print(f"no --config given: using configs/{name}.yaml (chosen for this device)")
    cfg = load_config(name, args.overrides + ([f"train.device={args.device}"] if args.device else []))
    root = resolve_data(args.data or cfg["data"]["root"])
    cfg["data"]["root"] = str(root)
    out = Path(args.out or Path("weights") / resolve_config_path(name).stem)

    from czii_kit.train import trainer_for
    from czii_kit.train.report import summary

    train = trainer_for(cfg)  # the 2D slice detector has its own trainer, same outputs
    result = train(cfg, args.fold, root, out, resume=args.resume, progress=not args.no_progress,
                   thresholds_from=args.thresholds_from)
    print(summary(result))
    return 0
