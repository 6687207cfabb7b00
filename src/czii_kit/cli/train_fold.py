"""czii train --fold K [--data ROOT] [--config NAME] [--out DIR] [--set k=v ...] [--resume] [--device D]
                  [--init-from CKPT_OR_EXP] [--thresholds-from REPORT]   (fold -1: every run)
czii train --folds all|0,2,5 [--ray local|ADDRESS --cpus-per-trial N --gpus-per-trial N] [...]

Same as ``python tools/train_fold.py``. Under ``torchrun --nproc-per-node N`` one fold trains on N processes."""
from __future__ import annotations

import argparse
from pathlib import Path

from czii_kit.cli import args as shared
from czii_kit.cli.common import default_config_name, exit_on_user_error, resolve_data
from czii_kit.config import load_config, resolve_config_path
from czii_kit.errors import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Train one leave-one-tomogram-out fold and write weights/EXP/fold{K}.pt")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--fold", type=int, help="held-out run index in the sorted train runs; -1 = all runs")
    which.add_argument("--folds", nargs="+", metavar="all|K",
                       help="several folds as one job: all, or a list such as 0 2 5 or 0,2,5; rerun to finish it "
                            "(finished folds are skipped, stopped ones resume)")
    shared.add_data(p)
    p.add_argument("--config", help="configs/NAME.yaml or a path (default: cpu_quick without GPU, unet_r34 with one)")
    p.add_argument("--out", help="experiment directory (default: weights/<config name>, or "
                                 "weights/<config name>_finetuned with --init-from)")
    shared.add_overrides(p)
    shared.add_device(p, what="; sets train.device")
    p.add_argument("--init-from", metavar="CKPT_OR_EXP",
                   help="start from a checkpoint, or an experiment folder's best checkpoint (e.g. "
                        "weights/pretrained/cpu_quick): classes matched by name; sets train.init_from")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from fold{K}_last.pt")
    p.add_argument("--thresholds-from", metavar="REPORT",
                   help="with --fold -1: thresholds.json (or its report folder) from tools/evaluate.py over the fold "
                        "models; the full-data checkpoint stores those cross-validated thresholds")
    shared.add_progress(p)
    shared.add_ray(p, "trial", cpus=2.0)
    return p.parse_args(argv)


def fold_list(values: list[str]) -> list[int] | None:
    """``--folds all`` -> None (every fold of the data); ``--folds 0,2,5`` or ``--folds 0 2 5`` -> [0, 2, 5]."""
    return None if [v.strip().lower() for v in values] == ["all"] else shared.folds(values)


def train_several(cfg: dict, args: argparse.Namespace, root, out: Path) -> int:
    from czii_kit.train.distributed import environment_world_size
    from czii_kit.train.jobs import train_folds

    runner = None
    if args.ray:
        if environment_world_size() > 1:
            raise ConfigError("--ray under torchrun: Ray schedules whole folds and torchrun splits one fold; use one")
        from czii_kit.scale.tasks import RayTrials

        runner = RayTrials(args.ray, args.cpus_per_trial, args.gpus_per_trial, cfg["train"]["device"],
                           progress=not args.no_progress)
    done, failures = train_folds(cfg, fold_list(args.folds), root, out, progress=not args.no_progress and not args.ray,
                                 thresholds_from=args.thresholds_from, **({"runner": runner} if runner else {}))
    for fold, s in done.items():
        print(f"fold {fold}: best F4 {s['score']:.4f} at epoch {s['best_epoch']} of {s['epochs']} "
              f"({s['minutes']:.1f} min) -> {s['checkpoint']}")
    for fold, why in failures.items():
        print(f"FAILED fold {fold}: {why}")
    if failures:
        print(f"{len(failures)} fold(s) failed; rerun the same command to train only those")
    return 1 if failures else 0


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    shared.ray_only(args, "--gpus-per-trial")
    if args.ray and args.folds is None:
        raise ConfigError("--ray runs folds as Ray trials: give --folds (all, or e.g. 0,2,5) instead of --fold")
    if args.folds is not None and args.thresholds_from:
        raise ConfigError("--thresholds-from belongs to the full-data model: train it with --fold -1 after the folds")
    name = args.config or default_config_name()
    if not args.config:
        print(f"no --config given: using configs/{name}.yaml (chosen for this device)")
    extra = ([f"train.device={args.device}"] if args.device else []) + (
        [f"train.init_from={args.init_from}"] if args.init_from else [])
    cfg = load_config(name, args.overrides + extra)
    root = resolve_data(args.data or cfg["data"]["root"])
    cfg["data"]["root"] = str(root)
    finetuned = "_finetuned" if cfg["train"]["init_from"] else ""
    out = Path(args.out or Path("weights") / f"{resolve_config_path(name).stem}{finetuned}")
    if args.folds is not None:
        return train_several(cfg, args, root, out)

    from czii_kit.train import trainer_for
    from czii_kit.train.report import summary

    train = trainer_for(cfg)  # the 2D slice detector has its own trainer, same outputs
    result = train(cfg, args.fold, root, out, resume=args.resume, progress=not args.no_progress,
                   thresholds_from=args.thresholds_from)
    if result.get("main", True):  # under torchrun, rank 0 speaks for the job
        print(summary(result))
    return 0
