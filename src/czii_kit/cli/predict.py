"""czii predict --data ROOT --split test --weights weights/EXP [...] -> submission.csv

Same as ``python tools/predict.py``. With ``--ray local|ADDRESS`` the runs are shared out to Ray workers and each
finished run is kept in ``<out>.parts/``: the same command after a crash predicts only the missing runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error, resolve_data
from czii_kit.data import layout


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Predict particle centres for every run of a split and write submission.csv")
    shared.add_data(p)
    p.add_argument("--split", default="test", choices=layout.SPLITS,
                   help="which split to predict (default %(default)s)")
    shared.add_weights(p)
    p.add_argument("--member-weights", help="comma list of averaging weights, one per checkpoint (default: equal)")
    shared.add_folds(p)
    p.add_argument("--out", default="submission.csv")
    shared.add_device(p, what="; cuda: every visible GPU, one worker each")
    shared.add_engine(p)
    p.add_argument("--tta", help="none | flips | full | comma list (default: the checkpoint config's infer.tta)")
    p.add_argument("--time-budget", type=float, metavar="HOURS", help="drop TTA passes, then members, to fit")
    p.add_argument("--runs", help="comma list of runs (default: every run of the split)")
    p.add_argument("--thresholds-from", metavar="REPORT",
                   help="thresholds.json (or the report folder holding it) written by tools/evaluate.py: per-class "
                        "thresholds and source weights tuned on out-of-fold predictions")
    p.add_argument("--thresholds", help="per-class overrides, e.g. ribosome=0.4,thyroglobulin=0.2")
    p.add_argument("--default-fusion", action="store_true",
                   help="fuse several kinds of checkpoints (U-Net + YOLO) with the config's fusion.weights although "
                        "no tuned source weights were given (refused otherwise: tune them with czii evaluate)")
    shared.add_overrides(p, "post.offsets.enabled=true")
    p.add_argument("--engine-cache", default="build/engines", help="where exported ONNX / TensorRT engines are cached")
    p.add_argument("--engines", nargs="+", default=[], metavar="DIR",
                   help="folders of prebuilt TensorRT engines (tools/build_engines.py); used when their key matches")
    p.add_argument("--copick-out", metavar="USER/SESSION",
                   help="also write the predictions into the --data copick project as picks of USER/SESSION")
    p.add_argument("--star-out", metavar="DIR", help="also write one RELION STAR file per run into DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing picks of --copick-out USER/SESSION, STAR files in --star-out, or an --out "
                        "file that is not a submission (an earlier submission.csv is always replaced)")
    p.add_argument("--score", action="store_true",
                   help="score against the ground truth (train split, or synthetic test)")
    shared.add_progress(p)
    shared.add_ray(p, "worker", cpus=2.0)
    p.add_argument("--workers", type=int, help="with --ray: how many Ray workers (default: as many as the cluster's "
                                                "resources hold, at most one per run)")
    p.add_argument("--fresh", action="store_true", help="with --ray: delete the part files of an earlier job "
                                                         "(<out>.parts/) and predict every run again")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    shared.ray_only(args, "--gpus-per-worker", "--workers", "--fresh")
    data = resolve_data(args.data)
    if not args.ray:
        return run(args, data)
    from czii_kit.scale.predict import RayPrediction, parts_folder
    from czii_kit.scale.session import ray_session, refuse_time_budget
    from czii_kit.submission import check_submission_out
    from czii_kit.utils.checkpoint_files import find_checkpoints

    refuse_time_budget(args.time_budget)
    # what can be checked without torch, before Ray starts (seconds); the plan checks everything again later
    check_submission_out(Path(args.out), data, args.overwrite)
    for weights in args.weights:
        find_checkpoints(weights, shared.folds(args.folds))
    data.select_runs(args.split, shared.run_list(args.runs))
    executor = RayPrediction(args.ray, str(parts_folder(Path(args.out).resolve())), args.fresh, args.cpus_per_worker,
                             args.gpus_per_worker, args.workers)
    with ray_session(args.ray) as ray:
        executor.start_early(ray, args.device)  # the actors import torch while this process does and plans
        try:
            if not Path(str(data)).is_absolute():  # workers on other nodes do not share this working directory
                from czii_kit.data.open_data import open_data

                data = open_data(Path(str(data)).resolve())
            return run(args, data, executor)
        finally:
            executor.release(ray)


def run(args: argparse.Namespace, data, executor=None) -> int:
    """The prediction job; ``executor`` None: this machine's devices."""
    from czii_kit.predict import predict_submission

    report = predict_submission(
        weights=args.weights, data=data, split=args.split, out=args.out, device=args.device,
        engine=args.engine, tta=args.tta, time_budget_h=args.time_budget,
        runs=shared.run_list(args.runs),
        folds=shared.folds(args.folds),
        member_weights=shared.member_weights(args.member_weights), thresholds=args.thresholds,
        thresholds_from=args.thresholds_from, overrides=args.overrides, engine_cache=args.engine_cache,
        prebuilt_engines=args.engines, copick_out=args.copick_out, star_out=args.star_out,
        overwrite=args.overwrite, default_fusion=args.default_fusion,
        score=args.score, progress=not args.no_progress, executor=executor)
    return 1 if report.result.failures else 0
