"""python tools/predict.py --data ROOT --split test --weights weights/EXP [...] -> submission.csv"""
from __future__ import annotations

import argparse
import threading
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

from czii_kit.cli.common import exit_on_user_error, resolve_data_root
from czii_kit.config import apply_overrides
from czii_kit.data import io, layout
from czii_kit.data.normalize import normalize_from_config
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES


def parse_args(argv=None) -> argparse.Namespace:
    from czii_kit.infer.engines import ENGINES

    p = argparse.ArgumentParser(description="Predict particle centres for every run of a split and write submission.csv")
    p.add_argument("--data", help="competition directory (default: built-in synthetic dataset)")
    p.add_argument("--split", default="test", choices=layout.SPLITS)
    p.add_argument("--weights", nargs="+", required=True, help="experiment directories or fold*.pt files")
    p.add_argument("--member-weights", help="comma list of averaging weights, one per checkpoint (default: equal)")
    p.add_argument("--folds", help="comma list of folds to use from each experiment directory (default: all)")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--engine", default=None, choices=list(ENGINES),
                   help="default: the checkpoint config's infer.engine; onnx_fp16 runs the fp16 graph TensorRT "
                        "builds from, so a CPU shows what fp16 does to the submission")
    p.add_argument("--tta", help="none | flips | full | comma list (default: the checkpoint config's infer.tta)")
    p.add_argument("--time-budget", type=float, metavar="HOURS", help="drop TTA passes, then members, to fit")
    p.add_argument("--runs", help="comma list of runs (default: every run of the split)")
    p.add_argument("--thresholds", help="per-class overrides, e.g. ribosome=0.4,thyroglobulin=0.2")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override inference keys of the checkpoint config, e.g. --set post.offsets.enabled=true")
    p.add_argument("--engine-cache", default="build/engines", help="where exported ONNX / TensorRT engines are cached")
    p.add_argument("--score", action="store_true", help="score against the ground truth (train split, or synthetic test)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def parse_thresholds(text: str | None, base: dict[str, float]) -> dict[str, float]:
    out = dict(base)
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        if name not in CLASS_NAMES:
            raise ConfigError(f"--thresholds: unknown particle type {name!r}; expected {', '.join(CLASS_NAMES)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--thresholds: {item!r} needs a number, e.g. {name}=0.3") from None
    return out


def available_devices(device: str) -> list[str]:
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return ["cpu"]
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def inference_config(ckpts: list[dict], args) -> dict:
    """The first checkpoint's resolved config (its own schema: no configs/ needed), with the command line's overrides."""
    cfg = ckpts[0]["config"]
    cfg = apply_overrides(cfg, args.overrides, schema=cfg)
    if args.tta:
        cfg["infer"]["tta"] = args.tta
    if args.engine:
        cfg["infer"]["engine"] = args.engine
    return cfg


def check_output(path: Path) -> None:
    """Fail before hours of inference, not after: the output directory must take a file."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".czii-probe-"):
            pass
    except OSError as e:
        raise DataError(f"--out {path}: cannot write there ({e.strerror or e}); choose another --out") from e


def predict_split(root, split: str, ckpts: list[dict], cfg: dict, thresholds: dict[str, float], devices: list[str],
                  runs: list[str], member_weights: list[float], time_budget_h: float | None,
                  cache_dir: Path, progress: bool = True):
    """Run the whole pipeline over runs; returns (detections, per-run seconds, failures, dropped-pass log).

    3D checkpoints form a probability-space ensemble; YOLO checkpoints give 3D points from z-slices;
    with both, the two point sets are fused (config ``fusion``) before post-processing.
    """
    from czii_kit.infer.budget import TimeBudget
    from czii_kit.infer.members import make_member
    from czii_kit.infer.predictor import candidates, detect, detect_fused, infer_window, predict_probabilities
    from czii_kit.infer.tta import parse_tta
    from czii_kit.infer.workers import map_over_devices
    from czii_kit.post.peaks import empty_detections
    from czii_kit.yolo.predict import is_yolo_checkpoint

    unet = [(c, w) for c, w in zip(ckpts, member_weights) if not is_yolo_checkpoint(c)]
    yolo = [c for c in ckpts if is_yolo_checkpoint(c)]
    tta = parse_tta(cfg["infer"]["tta"])
    window = infer_window(cfg)
    plan = [(i, t) for i in range(len(unet)) for t in tta]
    budget = TimeBudget(time_budget_h * 3600, len(runs), plan) if time_budget_h and unet else None
    models_on: dict[str, tuple] = {}
    lock = threading.Lock()
    timings: dict[str, float] = {}
    floor = min(thresholds.values())

    def models_for(device: str):
        with lock:
            if device not in models_on:
                from czii_kit.yolo.predict import make_runner

                engine = cfg["infer"]["engine"]
                models_on[device] = (
                    [make_member(c, engine, device, window, cfg["infer"]["batch_size"], cache_dir, w) for c, w in unet],
                    [make_runner(c, engine, device, cache_dir) for c in yolo])
            return models_on[device]

    def work(run: str, device: str) -> pd.DataFrame:
        t0 = time.monotonic()
        members, runners = models_for(device)
        raw = io.read_tomogram(root, run, split, cfg["data"]["recon"])
        sources = {}
        if members:
            passes = None
            if budget is not None:
                with lock:
                    grouped = defaultdict(list)
                    for i, t in budget.passes_for_next():
                        grouped[i].append(t)
                    passes = dict(grouped)
            c0 = members[0].meta
            vol = normalize_from_config(raw, c0["normalization"], name=f"run {run}")
            prob = predict_probabilities(members, vol, cfg, passes=passes, progress=False)
            if not runners:
                found = detect(prob, run, c0["stride"], cfg, thresholds)
            else:
                sources["unet"] = candidates(prob, run, c0["stride"], {**cfg, "post": {}}, floor)
        if runners:
            from czii_kit.yolo.predict import ensemble_points

            sources["yolo"] = ensemble_points(runners, [c["config"] for c in yolo], raw, run, floor)
            found = detect_fused(sources, cfg, thresholds)
        seconds = time.monotonic() - t0
        with lock:
            timings[run] = seconds
            if budget is not None:
                budget.record(seconds)
        print(f"{run}: {len(found)} particles in {seconds:.1f} s on {device}", flush=True)
        return found

    results, failures = map_over_devices(runs, devices, work, progress=progress)
    frames = [results[r] for r in runs if r in results]
    detections = pd.concat(frames, ignore_index=True) if frames else empty_detections()
    return detections, timings, failures, (budget.dropped if budget else [])


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from czii_kit.infer.members import load_checkpoints, mean_thresholds
    from czii_kit.submission import write_submission

    out = Path(args.out)
    check_output(out)
    root = resolve_data_root(args.data)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    ckpts = load_checkpoints(args.weights, folds)
    member_weights = [float(w) for w in args.member_weights.split(",")] if args.member_weights else [1.0] * len(ckpts)
    if len(member_weights) != len(ckpts):
        raise ConfigError(f"--member-weights has {len(member_weights)} values for {len(ckpts)} checkpoints")
    cfg = inference_config(ckpts, args)
    thresholds = parse_thresholds(args.thresholds, mean_thresholds(ckpts))
    all_runs = layout.list_runs(root, args.split)
    runs = args.runs.split(",") if args.runs else all_runs
    unknown = sorted(set(runs) - set(all_runs))
    if unknown:
        raise DataError(f"--runs: {', '.join(unknown)} not in the {args.split} split of {root}")
    devices = available_devices(args.device)
    print(f"{len(ckpts)} checkpoint(s), engine {cfg['infer']['engine']}, TTA {cfg['infer']['tta']}, "
          f"{len(runs)} run(s) on {', '.join(devices)}")
    t0 = time.monotonic()
    detections, timings, failures, dropped = predict_split(
        root, args.split, ckpts, cfg, thresholds, devices, runs, member_weights, args.time_budget,
        Path(args.engine_cache), progress=not args.no_progress)
    for line in dropped:
        print(f"time budget: {line}")
    write_submission(detections, out)
    total = time.monotonic() - t0
    mean = sum(timings.values()) / max(1, len(timings))
    print(f"wrote {out}: {len(detections)} rows from {len(timings)} run(s) in {total:.1f} s ({mean:.1f} s per run)")
    if args.score:
        from czii_kit.cli.score import load_solution
        from czii_kit.metric import format_table, score, score_table

        solution = load_solution(root, args.split, runs)
        print(format_table(score_table(solution, detections), score(solution, detections)))
    for run, err in failures.items():
        print(f"FAILED {run}: {err}")
    return 1 if failures else 0
