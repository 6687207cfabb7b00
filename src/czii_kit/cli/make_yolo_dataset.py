"""czii make-yolo-dataset --data ROOT --out DIR --fold K [--every N] [--min-box VOX]   (= tools/make_yolo_dataset.py)

Writes z-slices of fold K's train and held-out runs (the U-Net's split) as 8-bit PNGs with YOLO
labels (one box per particle per slice that cuts it, side = the disc's diameter) and data.yaml.
"""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error, resolve_data
from czii_kit.config import load_config


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Z-slice YOLO dataset (PNG + labels + data.yaml) for one fold")
    shared.add_data(p)
    p.add_argument("--out", required=True, help="new dataset folder (refused if it already holds data.yaml)")
    p.add_argument("--fold", type=int, required=True, help="held-out run index in the sorted train runs; -1 = none")
    p.add_argument("--every", type=int, default=1, help="keep every N-th slice (default 1: all)")
    p.add_argument("--min-box", type=float, default=0.0, help="skip discs thinner than this many voxels (poles)")
    p.add_argument("--config", default="yolo_cpu_quick", help="config whose data: section is used (recon, level, ...)")
    shared.add_overrides(p, "data.recon=wbp")
    shared.add_progress(p)
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.yolo.slices import write_dataset

    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    data = resolve_data(args.data)
    data_yaml, train_runs, val_runs = write_dataset(data, args.out, args.fold, cfg["data"], every=args.every,
                                                    min_diameter=args.min_box, progress=not args.no_progress)
    print(f"train runs: {', '.join(train_runs)}\nval runs:   {', '.join(val_runs) or '(none: val = train)'}")
    print(f"wrote {data_yaml}")
    return 0
