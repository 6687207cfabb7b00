"""Train the 2D YOLO branch for one fold and write a czii-kit checkpoint scored in 3D.

Same entry point and return value as ``czii_kit.train.loop.train_fold``: the fold's runs are
split exactly like the U-Net's, slices of the train runs go to ultralytics (model built from its
yaml definition, never a downloaded .pt; fully offline), and the best ultralytics weights are
scored the way the leaderboard scores them: slices -> boxes -> 3D points on the held-out run,
per-class thresholds by ``best_thresholds``, the exact metric. fold{K}.pt embeds the weights as a
plain state dict plus the model yaml, so ``load_checkpoint`` (weights_only=True) reads it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from czii_kit import checkpoints
from czii_kit.config import dump_config, save_config, with_particle_set
from czii_kit.data.folds import fold_runs
from czii_kit.data.open_data import open_data
from czii_kit.data.source import DataSource
from czii_kit.errors import ConfigError
from czii_kit.infer.engines import resolve_device
from czii_kit.infer.plan import PredictionPlan
from czii_kit.train.experiment import (FoldPaths, fold_seed, guard_output, no_validation, seed_everything,
                                       threshold_grid, thresholds_for, validation_summary, write_log)
from czii_kit.yolo.detector import build_detection_model
from czii_kit.yolo.offline import import_ultralytics
from czii_kit.yolo.slices import write_dataset

NORMALIZATION = {"method": "percentile_uint8", "low": 0.5, "high": 99.5}
LOSS_COLUMNS = ("train/box_loss", "train/cls_loss", "train/dfl_loss")
FITNESS = "metrics/mAP50-95(B)"


class YoloFoldPaths(FoldPaths):
    """FoldPaths whose resume state is ultralytics' own last.pt (so guard_output and --resume see it)."""

    @property
    def run_dir(self) -> Path:
        return self.out / "yolo_runs" / f"fold{self.fold}"

    @property
    def last(self) -> Path:
        return self.run_dir / "weights" / "last.pt"

    @property
    def nothing_to_resume(self) -> bool:
        return False  # fold{K}.pt is written once, at the end: without last.pt it is a finished training

    @property
    def dataset(self) -> Path:
        return self.out / "yolo_data" / f"fold{self.fold}"


def ultralytics_dir(out: Path) -> Path:
    """Where ultralytics keeps its settings and fonts for this experiment."""
    return out / ".ultralytics"


def train_arguments(cfg: Mapping, data_yaml: Path, paths: YoloFoldPaths, device: torch.device,
                    progress: bool = True) -> dict:
    """Keyword arguments of ultralytics' ``model.train`` (no plots: they need fonts and time; AMP only on GPU)."""
    y = cfg["yolo"]
    return {"data": str(data_yaml), "epochs": int(y["epochs"]), "imgsz": int(y["imgsz"]), "batch": int(y["batch"]),
            "workers": int(y["workers"]), "device": "cpu" if device.type == "cpu" else device.index or 0,
            "project": str(paths.run_dir.parent.resolve()), "name": paths.run_dir.name, "exist_ok": True,
            "plots": False, "amp": device.type == "cuda" and bool(cfg["train"]["amp"]),
            "seed": fold_seed(cfg, paths.fold),
            "pretrained": False, "verbose": progress, **dict(y["args"])}


def fit(cfg: Mapping, data_yaml: Path, paths: YoloFoldPaths, device: torch.device, resume: bool,
        progress: bool = True) -> Path:
    """Run ultralytics training (or resume it from its last.pt); returns its best.pt."""
    import_ultralytics(ultralytics_dir(paths.out))
    from ultralytics import YOLO

    if resume and paths.last.exists():
        model = YOLO(str(paths.last))
        model.train(resume=True)
    else:
        model = YOLO(cfg["yolo"]["model"])
        model.train(**train_arguments(cfg, data_yaml, paths, device, progress))
    weights = Path(model.trainer.save_dir) / "weights"
    return weights / "best.pt" if (weights / "best.pt").exists() else weights / "last.pt"


def exported_weights(best: Path) -> dict:
    """Model yaml (a plain dict) and float state dict of an ultralytics checkpoint: loadable with weights_only."""
    state = torch.load(best, map_location="cpu", weights_only=False)
    model = (state.get("ema") or state["model"]).float()
    return {"yaml": dict(model.yaml), "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def read_results(run_dir: Path) -> pd.DataFrame:
    results = pd.read_csv(run_dir / "results.csv")
    results.columns = [c.strip() for c in results.columns]
    return results


def best_epoch(results: pd.DataFrame) -> int:
    """The epoch best.pt comes from: ultralytics keeps the first maximum of mAP50-95 (its fitness)."""
    return int(results["epoch"].iloc[int(results[FITNESS].to_numpy().argmax())])


def model_fields(weights: dict, classes: list[str]) -> dict:
    """The checkpoint fields ``build_detection_model`` needs."""
    return {"model": {"name": "yolo", "args": {"yaml": weights["yaml"], "nc": len(classes)}},
            "state_dict": weights["state_dict"], "classes": list(classes)}


def checkpoint_payload(cfg: dict, weights: dict, validation: dict, fold: int, spacing: float) -> dict:
    imgsz = int(cfg["yolo"]["imgsz"])
    return {**model_fields(weights, list(cfg["classes"])), "config": cfg, "config_yaml": dump_config(cfg),
            "activation": "none", "stride": 1, "normalization": dict(NORMALIZATION),
            "window": [imgsz, imgsz], "voxel_spacing": spacing, "thresholds": validation["thresholds"],
            "validation": validation, "epoch": validation["epoch"], "fold": fold, "input_multiple": 32}


def validate_3d(ckpt: Mapping, cfg: dict, data: DataSource, val_runs: list[str], device: torch.device) -> dict:
    """This detector alone through its prediction plan on the held-out runs (candidates down to the threshold
    grid's floor), then per-class thresholds tuned with the exact metric."""
    fields = {**ckpt, "config": cfg}
    predictor = PredictionPlan.for_training(fields).with_model(build_detection_model(fields), device)
    floor = float(threshold_grid(cfg)[0])
    cands = [predictor.candidates(data.read_run(run, "train", cfg["data"]), floor) for run in val_runs]
    solution = pd.concat([data.read_picks(run, cfg["data"]) for run in val_runs], ignore_index=True)
    return validation_summary(solution, pd.concat(cands, ignore_index=True), cfg, val_runs)


def training_log(results: pd.DataFrame, final: dict) -> list[dict]:
    """Rows for fold{K}_log.csv: ultralytics' per-epoch losses and mAP, the 3D F4 of best.pt on its epoch's row."""
    losses = [c for c in LOSS_COLUMNS if c in results.columns]
    return [{"epoch": int(r["epoch"]), "train_loss": float(sum(r[c] for c in losses)),
             "map50_95": float(r[FITNESS]), "val_f4": final["score"] if int(r["epoch"]) == final["epoch"] else np.nan}
            for _, r in results.iterrows()]


def check_yolo_config(cfg: Mapping) -> None:
    if cfg["train"].get("init_from"):
        raise ConfigError("train.init_from (--init-from) starts 3D models from a checkpoint; the YOLO slice detector "
                          "trains from its architecture yaml: drop --init-from for a YOLO config")
    section = cfg.get("yolo")
    if not isinstance(section, Mapping):
        raise ConfigError("config has no 'yolo' section; train YOLO with a YOLO config (configs/yolo_cpu_quick.yaml)")
    if not str(section["model"]).endswith(".yaml"):
        raise ConfigError(f"yolo.model must be an architecture yaml such as yolov8n.yaml (got {section['model']!r}); "
                          "pretrained .pt files are never downloaded")


def train_yolo_fold(cfg: dict, fold: int, data_root: str | Path, out_dir: str | Path, resume: bool = False,
                    progress: bool = True, thresholds_from=None) -> dict:
    """Train YOLO on fold ``fold``; writes out_dir/fold{K}.pt; returns {paths, best, log, train_runs, val_runs}."""
    check_yolo_config(cfg)
    data = open_data(data_root)
    cfg = with_particle_set(cfg, data.particles)
    tuning = thresholds_for(cfg, fold, thresholds_from)
    paths = YoloFoldPaths(Path(out_dir), fold)
    guard_output(paths, cfg, resume)
    seed_everything(fold_seed(cfg, fold))
    device = resolve_device(cfg["train"]["device"])
    train_runs, val_runs = fold_runs(data, cfg["data"], fold)
    if (paths.dataset / "data.yaml").exists():
        data_yaml = paths.dataset / "data.yaml"
    else:
        data_yaml, _, _ = write_dataset(data, paths.dataset, fold, cfg["data"], every=int(cfg["yolo"]["every"]),
                                        min_diameter=float(cfg["yolo"]["min_box"]), progress=progress)
    save_config(cfg, paths.config)
    best_pt = fit(cfg, data_yaml, paths, device, resume, progress)
    weights = exported_weights(best_pt)
    spacing = data.run_geometry(train_runs[0], "train", cfg["data"])[1]
    fields = {**model_fields(weights, list(cfg["classes"])), "voxel_spacing": spacing}
    validation = validate_3d(fields, cfg, data, val_runs, device) if val_runs else no_validation(cfg, tuning)
    results = read_results(paths.run_dir)
    best = {**validation, "epoch": best_epoch(results)}
    checkpoints.save_checkpoint(checkpoint_payload(cfg, weights, best, fold, spacing), paths.best)
    log = training_log(results, best)
    write_log(paths, log)
    return {"paths": paths, "best": best, "log": pd.DataFrame(log), "train_runs": train_runs, "val_runs": val_runs}
