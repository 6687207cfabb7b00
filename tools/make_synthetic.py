#!/usr/bin/env python
"""Make a realistic synthetic dataset in the exact Kaggle competition layout.

    python tools/make_synthetic.py --out data/synth                       # 4 train + 2 test, 96x256x256
    python tools/make_synthetic.py --out data/full --shape 184 630 630 --train 7 --test 3 \\
        --recons denoised,wbp,ctfdeconvolved,isonetcorrected --preview

Writes DIR/{train,test}/static/..., DIR/train/overlay/... (picks), DIR/solution.csv (test picks),
DIR/sample_submission.csv and DIR/synthetic.json (settings). Logic: czii_kit.data.synth.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import replace
from pathlib import Path

if importlib.util.find_spec("czii_kit") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from czii_kit.errors import ConfigError, CziiError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from czii_kit.data import synth

    p = argparse.ArgumentParser(description="Write a synthetic CZII dataset in the competition layout "
                                            "(deterministic per seed)")
    p.add_argument("--out", required=True, help="new (or empty) output directory")
    p.add_argument("--train", type=int, default=synth.BUILTIN["n_train"], help="train runs (default %(default)s)")
    p.add_argument("--test", type=int, default=synth.BUILTIN["n_test"], help="test runs (default %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(synth.BUILTIN["shape"]),
                   help="volume size in voxels (default %(default)s; real runs are 184 630 630)")
    p.add_argument("--seed", type=int, default=synth.BUILTIN["seed"])
    p.add_argument("--recons", nargs="+", default=["denoised"],
                   help="train reconstructions, comma or space separated (test runs get denoised only)")
    p.add_argument("--noise", type=float, help=f"noise level (default {synth.SynthConfig.noise}; 0 = noise-free)")
    p.add_argument("--tilt", type=float, metavar="DEG",
                   help=f"max tilt of every run in degrees (default: drawn in {synth.SynthConfig.tilt_max_deg})")
    p.add_argument("--preview", nargs="?", const="", metavar="PNG",
                   help="also draw a train slice with its picks (default path: OUT/preview.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    from czii_kit.data.synth import SynthConfig

    cfg = SynthConfig(shape=tuple(args.shape))
    if args.noise is not None:
        cfg = replace(cfg, noise=args.noise)
    if args.tilt is not None:
        cfg = replace(cfg, tilt_max_deg=(args.tilt, args.tilt))
    return cfg


def write_preview(root: Path, path: Path) -> Path:
    """A slice of the first train run with its picks."""
    from czii_kit.data import io, layout
    from czii_kit.viz import save_slice_with_picks

    run = layout.list_runs(root, "train")[0]
    volume = io.read_tomogram(root, run, "train", "denoised")
    return save_slice_with_picks(path, volume, io.read_picks(root, run), title=f"{run} denoised (synthetic)")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from czii_kit.data.synth import make_dataset

        recons = [r for item in args.recons for r in item.split(",") if r]
        if args.preview is not None and args.train < 1:
            raise ConfigError("--preview draws a train run; ask for at least one with --train")
        start = time.perf_counter()
        out = make_dataset(args.out, n_train=args.train, n_test=args.test, shape=args.shape, seed=args.seed,
                           recons=recons, cfg=config_from_args(args), progress=not args.no_progress)
        shape = "x".join(map(str, args.shape))
        print(f"wrote {args.train} train + {args.test} test runs ({shape}) to {out} "
              f"in {time.perf_counter() - start:.1f} s")
        if args.preview is not None:
            print(f"preview: {write_preview(out, Path(args.preview) if args.preview else out / 'preview.png')}")
    except CziiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
