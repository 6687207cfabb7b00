"""czii make-synthetic --out DIR [--preset hard] [--copick] ...   (= python tools/make_synthetic.py)

A synthetic dataset in the exact Kaggle competition layout, simulated from a tilt series:

    python tools/make_synthetic.py --out data/synth                       # 4 train + 2 test, 96x256x256
    python tools/make_synthetic.py --out data/full --shape 184 630 630 --train 7 --test 3 --preview
    python tools/make_synthetic.py --out data/hard --train 0 --test 3 --seed 1 --preset hard
    python tools/make_synthetic.py --out data/mine --maps my_maps/ --set dose=80 --set distractors=300
    python tools/make_synthetic.py --out data/cp --copick                  # + a copick project over it

Writes DIR/{train,test}/static/..., DIR/train/overlay/... (picks), DIR/solution.csv (test picks),
DIR/sample_submission.csv and DIR/synthetic.json (settings); with --copick also DIR/copick/. The simulator:
czii_kit.data.synth.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error
from czii_kit.errors import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    from czii_kit.data import synth

    p = shared.parser("Write a synthetic CZII dataset in the competition layout "
                                            "(deterministic per seed)")
    p.add_argument("--out", required=True, help="new (or empty) output directory")
    p.add_argument("--train", type=int, default=synth.BUILTIN["n_train"], help="train runs (default %(default)s)")
    p.add_argument("--test", type=int, default=synth.BUILTIN["n_test"], help="test runs (default %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(synth.BUILTIN["shape"]),
                   help="volume size in voxels (default %(default)s; real runs are 184 630 630)")
    p.add_argument("--seed", type=int, default=synth.BUILTIN["seed"])
    p.add_argument("--recons", nargs="+", default=[",".join(synth.BUILTIN["recons"])],
                   help="train reconstructions, comma or space separated (default: all four)")
    p.add_argument("--test-recons", nargs="+", default=["denoised"],
                   help="test reconstructions (default denoised only, as on Kaggle; e.g. wbp to score models "
                        "that read data.recon=wbp)")
    p.add_argument("--preset", default="default", choices=list(synth.PRESETS),
                   help="named settings (default %(default)s; 'hard': half the dose, 2.5x the non-target "
                        "complexes, larger errors)")
    p.add_argument("--maps", metavar="DIR", help="your own density maps: a folder with maps.yaml and MRC files")
    p.add_argument("--procedural", action="store_true", help="procedural phantoms instead of density maps")
    p.add_argument("--noise", type=float, help="shot-noise multiplier (default 1 = the physical noise of the "
                                               "dose; 0 = noise-free)")
    low, high = synth.SynthConfig.tilt_max_deg
    p.add_argument("--tilt", type=float, metavar="DEG", help="max tilt of every run in degrees (default: "
                   + (f"{low:g}" if low == high else f"drawn in [{low:g}, {high:g}]") + ")")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any SynthConfig field (YAML value), e.g. --set dose=80 --set defocus_um=[3,5]")
    p.add_argument("--preview", nargs="?", const="", metavar="PNG",
                   help="also draw the first train run's recons at one slice with its picks "
                        "(default path: OUT/preview.png)")
    p.add_argument("--copick", action="store_true",
                   help="also write a copick project over the dataset (OUT/copick/copick_<split>.json, pass it "
                        "as --data to any tool; needs the copick extra to read)")
    shared.add_progress(p)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    """The preset, then --maps/--procedural/--noise/--tilt, then --set, then --shape."""
    import yaml

    from czii_kit.data.synth import SynthConfig

    values = {}
    if args.maps:
        values["maps"] = args.maps
    if args.procedural:
        values["templates"] = "procedural"
    if args.noise is not None:
        values["noise"] = args.noise
    if args.tilt is not None:
        values["tilt_max_deg"] = (args.tilt, args.tilt)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. --set dose=80")
        try:
            values[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: {value!r} is not a YAML value ({e})") from e
    values["shape"] = tuple(args.shape)
    return SynthConfig.preset(args.preset, **values)


def write_preview(root: Path, path: Path) -> Path:
    """The first train run's reconstructions at its busiest slice, picks overlaid."""
    from czii_kit.data import io, layout
    from czii_kit.data.synth.preview import save_recons_preview

    run = layout.list_runs(root, "train")[0]
    volumes = {r: io.read_tomogram(root, run, "train", r) for r in layout.available_recons(root, "train", run)}
    return save_recons_preview(path, volumes, io.read_picks(root, run), title=f"{run} (synthetic)")


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.data.synth import make_dataset

    args = parse_args(argv)
    recons, test_recons = ([r for item in items for r in item.split(",") if r]
                           for items in (args.recons, args.test_recons))
    if args.preview is not None and args.train < 1:
        raise ConfigError("--preview draws a train run; ask for at least one with --train")
    cfg = config_from_args(args)
    start = time.perf_counter()
    out = make_dataset(args.out, n_train=args.train, n_test=args.test, shape=args.shape, seed=args.seed,
                       recons=recons, test_recons=test_recons, cfg=cfg, progress=not args.no_progress)
    shape = "x".join(map(str, args.shape))
    print(f"wrote {args.train} train + {args.test} test runs ({shape}, preset {args.preset}) to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    if args.preview is not None:
        print(f"preview: {write_preview(out, Path(args.preview) if args.preview else out / 'preview.png')}")
    if args.copick:
        from czii_kit.data.copick import make_copick_project

        for split, count in (("train", args.train), ("test", args.test)):
            if count:
                print(f"copick project: {make_copick_project(out, out / 'copick', split)}")
    return 0

