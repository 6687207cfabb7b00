"""python tools/predict.py --data ROOT --split test --weights weights/EXP [...] -> submission.csv"""
from __future__ import annotations

import argparse

from czii_kit.cli.common import exit_on_user_error, resolve_data
from czii_kit.data import layout
from czii_kit.errors import ConfigError
from czii_kit.infer.engines import ENGINE_KINDS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Predict particle centres for every run of a split and write submission.csv")
    p.add_argument("--data", help="competition directory or copick config JSON (default: built-in synthetic dataset)")
    p.add_argument("--split", default="test", choices=layout.SPLITS)
    p.add_argument("--weights", nargs="+", required=True, help="experiment directories or fold*.pt files")
    p.add_argument("--member-weights", help="comma list of averaging weights, one per checkpoint (default: equal)")
    p.add_argument("--folds", help="comma list of folds to use from each experiment directory (default: all)")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the checkpoint config's infer.device")
    p.add_argument("--engine", choices=list(ENGINE_KINDS),
                   help="default: the checkpoint config's infer.engine; onnx_fp16 runs the fp16 graph TensorRT "
                        "builds from, so a CPU shows what fp16 does to the submission")
    p.add_argument("--tta", help="none | flips | full | comma list (default: the checkpoint config's infer.tta)")
    p.add_argument("--time-budget", type=float, metavar="HOURS", help="drop TTA passes, then members, to fit")
    p.add_argument("--runs", help="comma list of runs (default: every run of the split)")
    p.add_argument("--thresholds-from", metavar="REPORT",
                   help="thresholds.json (or the report folder holding it) written by tools/evaluate.py: per-class "
                        "thresholds and source weights tuned on out-of-fold predictions")
    p.add_argument("--thresholds", help="per-class overrides, e.g. ribosome=0.4,thyroglobulin=0.2")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override inference keys of the checkpoint config, e.g. --set post.offsets.enabled=true")
    p.add_argument("--engine-cache", default="build/engines", help="where exported ONNX / TensorRT engines are cached")
    p.add_argument("--engines", nargs="+", default=[], metavar="DIR",
                   help="folders of prebuilt TensorRT engines (tools/build_engines.py); used when their key matches")
    p.add_argument("--copick-out", metavar="USER/SESSION",
                   help="also write the predictions into the --data copick project as picks of USER/SESSION")
    p.add_argument("--star-out", metavar="DIR", help="also write one RELION STAR file per run into DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing picks of --copick-out USER/SESSION, or STAR files in --star-out")
    p.add_argument("--score", action="store_true", help="score against the ground truth (train split, or synthetic test)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _floats(text: str | None) -> list[float] | None:
    try:
        return [float(w) for w in text.split(",")] if text else None
    except ValueError:
        raise ConfigError(f"--member-weights {text!r}: give comma-separated numbers, e.g. 1,1,2") from None


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from czii_kit.predict import predict_submission

    report = predict_submission(
        weights=args.weights, data=resolve_data(args.data), split=args.split, out=args.out, device=args.device,
        engine=args.engine, tta=args.tta, time_budget_h=args.time_budget,
        runs=args.runs.split(",") if args.runs else None,
        folds=[int(f) for f in args.folds.split(",")] if args.folds else None,
        member_weights=_floats(args.member_weights), thresholds=args.thresholds,
        thresholds_from=args.thresholds_from, overrides=args.overrides, engine_cache=args.engine_cache,
        prebuilt_engines=args.engines, copick_out=args.copick_out, star_out=args.star_out,
        overwrite=args.overwrite,
        score=args.score, progress=not args.no_progress)
    return 1 if report.result.failures else 0
