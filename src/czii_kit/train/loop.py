"""Train one fold: patches -> model -> EMA -> full-tomogram validation with the exact metric.

Everything a later user needs travels in the checkpoint (see czii_kit.train.checkpoint).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from czii_kit.config import class_dict, class_values, dump_config, save_config
from czii_kit.data import layout
from czii_kit.data.dataset import PatchDataset
from czii_kit.data.targets import TargetSpec
from czii_kit.errors import CheckpointError, ConfigError, DataError
from czii_kit.infer.engines import TorchEngine, resolve_device
from czii_kit.infer.predictor import Member, candidates, infer_window, predict_probabilities
from czii_kit.losses import build_loss
from czii_kit.metric import tuned_score
from czii_kit.models import build_model
from czii_kit.models.activation import ProbabilityModel
from czii_kit.particles import CLASS_NAMES
from czii_kit.train import checkpoint as ckpt_io
from czii_kit.train.data import RunData, load_runs
from czii_kit.train.ema import ModelEMA
from czii_kit.train.folds import split_runs
from czii_kit.utils.cpu import keep_freed_memory


@dataclass
class FoldPaths:
    out: Path
    fold: int

    @property
    def best(self) -> Path:
        return self.out / f"fold{self.fold}.pt"

    @property
    def last(self) -> Path:
        return self.out / f"fold{self.fold}_last.pt"

    @property
    def log(self) -> Path:
        return self.out / f"fold{self.fold}_log.csv"

    @property
    def curve(self) -> Path:
        return self.out / f"fold{self.fold}_curve.png"

    @property
    def config(self) -> Path:
        return self.out / "config.yaml"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _comparable(cfg: dict) -> dict:
    """Config fields that define an experiment (data location and run-time knobs excluded)."""
    c = {k: v for k, v in cfg.items() if k not in ("data",)}
    c["train"] = {k: v for k, v in cfg["train"].items() if k not in ("device", "num_workers", "time_limit_min")}
    return c


def guard_output(paths: FoldPaths, cfg: dict, resume: bool) -> None:
    """Refuse to clobber: an existing experiment with another config, or an existing fold without --resume."""
    import yaml

    if paths.config.exists():
        old = yaml.safe_load(paths.config.read_text())
        if _comparable(old) != _comparable(cfg):
            raise CheckpointError(
                f"{paths.out} holds an experiment with a different config ({paths.config}); "
                "choose a new --out directory (nothing was changed)")
    if not resume and (paths.best.exists() or paths.last.exists()):
        raise CheckpointError(
            f"{paths.best if paths.best.exists() else paths.last} exists; pass --resume to continue that run, "
            "or --out for a new experiment (nothing was overwritten)")


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model for training; on CPU also keep freed memory and use channels-last (1.2-1.5x faster 3D convs)."""
    model.to(device)
    if device.type == "cpu":
        keep_freed_memory()
        model.to(memory_format=torch.channels_last_3d)
    return model


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def threshold_grid(cfg: dict) -> np.ndarray:
    start, stop, step = cfg["validate"]["threshold_grid"]
    return np.round(np.arange(start, stop + step / 2, step), 6)


def validate(model, activation: str, stride: int, val_runs: list[RunData], cfg: dict, device) -> dict:
    """Full-tomogram inference on the held-out run(s), per-class threshold sweep, exact metric."""
    engine = TorchEngine(ProbabilityModel(model, activation), infer_window(cfg), device=device)
    grid = threshold_grid(cfg)
    cands, sols = [], []
    for run in val_runs:
        prob = predict_probabilities([Member(engine)], run.volume, cfg, tta=None)
        cands.append(candidates(prob, run.name, stride, cfg, floor=float(grid[0])))
        sols.append(run.picks)
    return validation_summary(pd.concat(sols, ignore_index=True), pd.concat(cands, ignore_index=True), cfg,
                              [r.name for r in val_runs])


def validation_summary(solution: pd.DataFrame, cand: pd.DataFrame, cfg: dict, runs: list[str]) -> dict:
    """Tuned thresholds and exact per-class scores of a model's held-out candidates (what checkpoints store).

    Classes absent from the held-out run keep the config's default threshold.
    """
    thresholds, table, score = tuned_score(solution, cand, threshold_grid(cfg), class_dict(cfg, "threshold"))
    return {"score": score, "thresholds": thresholds, "per_class": table.reset_index().to_dict(orient="records"),
            "runs": list(runs)}


def _check_data(train_runs: list[RunData], val_runs: list[RunData]) -> None:
    if sum(len(r.points) for r in train_runs) == 0:
        raise DataError("the training runs hold no picks at all; check ROOT/train/overlay/ExperimentRuns/*/Picks")
    for r in train_runs:
        if len(r.points) == 0:
            tqdm.write(f"warning: run {r.name} has zero particles; it only provides negative patches")
    for r in val_runs:
        if len(r.points) == 0:
            raise DataError(f"validation run {r.name} has zero particles, so F4 is undefined; pick another --fold")


def train_fold(cfg: dict, fold: int, data_root: str | Path, out_dir: str | Path, resume: bool = False,
               progress: bool = True) -> dict:
    paths = FoldPaths(Path(out_dir), fold)
    guard_output(paths, cfg, resume)
    fold_seed = cfg["seed"] + fold + 1  # distinct per fold, non-negative for fold -1
    seed_everything(fold_seed)
    device = resolve_device(cfg["train"]["device"])
    use_amp = bool(cfg["train"]["amp"]) and device.type == "cuda"

    runs = layout.list_runs(data_root, "train")
    train_names, val_names = split_runs(runs, fold, cfg["data"]["fold_file"])
    train_data = load_runs(data_root, train_names, cfg)
    val_data = load_runs(data_root, val_names, cfg, extra_recons=False)
    _check_data(train_data, val_data)

    model = build_model(cfg["model"]["name"], **cfg["model"]["args"])
    spec = TargetSpec.from_config(cfg["targets"])
    if model.output_stride != spec.stride:
        raise ConfigError(f"model output stride {model.output_stride} != targets.stride {spec.stride}; "
                          "set both to the same value")
    for name, shape in (("train.patch_size", cfg["train"]["patch_size"]), ("infer.window", infer_window(cfg))):
        if any(s % model.input_multiple for s in shape):
            raise ConfigError(f"{name} {list(shape)} must be a multiple of {model.input_multiple} for this model")
    loss_fn = build_loss(cfg["loss"]["name"], class_weights=class_values(cfg, "loss_weight"), **cfg["loss"]["args"])
    place_model(model, device)
    ema = ModelEMA(model, cfg["train"]["ema_decay"])

    tc = cfg["train"]
    dataset = PatchDataset(
        [r.volume for r in train_data], [r.points for r in train_data], [r.labels for r in train_data],
        patch_size=tuple(tc["patch_size"]), target_spec=spec,
        positive_fraction=tc["positive_fraction"], class_weights=class_values(cfg, "sample_weight"),
        augment=cfg["augment"], length=tc["samples_per_epoch"], seed=fold_seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=tc["batch_size"], shuffle=False,
                                         num_workers=tc["num_workers"], drop_last=True,
                                         persistent_workers=tc["num_workers"] > 0)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * tc["epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, total_steps, tc["warmup_epochs"] * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, log_rows, best = 0, [], {"score": -1.0}
    if resume and paths.last.exists():
        state = ckpt_io.load_state(paths.last)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, log_rows, best = state["epoch"] + 1, state["log"], state["best"]
        torch.set_rng_state(state["torch_rng"])
        tqdm.write(f"resuming fold {fold} from epoch {start_epoch} ({paths.last})")
    paths.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)

    t_start = time.monotonic()
    time_limit = tc["time_limit_min"] * 60 if tc["time_limit_min"] else None
    every = cfg["validate"]["every"]
    for epoch in range(start_epoch, tc["epochs"]):
        dataset.set_epoch(epoch)
        model.train()
        losses, t_epoch = [], time.monotonic()
        bar = tqdm(loader, desc=f"fold {fold} epoch {epoch + 1}/{tc['epochs']}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        for image, target in bar:
            image = image.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(image), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ema.update(model)
            losses.append(loss.item())
            rate = len(losses) * tc["batch_size"] / (time.monotonic() - t_epoch)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", patches_s=f"{rate:.1f}")
        out_of_time = time_limit is not None and time.monotonic() - t_start > time_limit
        last_epoch = epoch == tc["epochs"] - 1 or out_of_time
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0],
               "seconds": time.monotonic() - t_epoch, "val_f4": np.nan}
        if val_data and ((epoch + 1) % every == 0 or last_epoch):
            result = validate(ema.module, loss_fn.activation, spec.stride, val_data, cfg, device)
            row["val_f4"] = result["score"]
            row.update({f"f4_{r['particle_type']}": r["f4"] for r in result["per_class"]})
            if result["score"] > best["score"]:
                best = {**result, "epoch": epoch + 1}
                _save_best(paths, cfg, ema, model, loss_fn.activation, spec.stride, best, fold)
        elif not val_data and last_epoch:
            best = {"score": float("nan"), "thresholds": class_dict(cfg, "threshold"), "per_class": [],
                    "runs": [], "epoch": epoch + 1}
            _save_best(paths, cfg, ema, model, loss_fn.activation, spec.stride, best, fold)
        log_rows.append(row)
        _write_log(paths, log_rows)
        ckpt_io.save_state({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch, "log": log_rows, "best": best,
                            "torch_rng": torch.get_rng_state()}, paths.last)
        tqdm.write(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}"
                   + (f"  val F4 {row['val_f4']:.4f} (best {best['score']:.4f})" if not np.isnan(row["val_f4"]) else ""))
        if out_of_time:
            tqdm.write(f"time limit of {tc['time_limit_min']} min reached after epoch {epoch + 1}")
            break
    return {"paths": paths, "best": best, "log": pd.DataFrame(log_rows), "train_runs": train_names,
            "val_runs": val_names}


def _save_best(paths: FoldPaths, cfg, ema, model, activation, stride, best, fold) -> None:
    ckpt_io.save_checkpoint({
        "model": {"name": cfg["model"]["name"], "args": dict(cfg["model"]["args"])},
        "state_dict": ema.state_dict(), "config": cfg, "config_yaml": dump_config(cfg),
        "classes": list(CLASS_NAMES), "activation": activation, "stride": stride,
        "normalization": dict(cfg["normalize"]), "window": list(infer_window(cfg)),
        "thresholds": best["thresholds"], "validation": best, "epoch": best["epoch"], "fold": fold,
        "input_multiple": model.input_multiple,
    }, paths.best)


def _write_log(paths: FoldPaths, rows: list[dict]) -> None:
    from czii_kit.utils.atomic import atomic_path
    from czii_kit.viz import save_curves

    df = pd.DataFrame(rows)
    with atomic_path(paths.log) as tmp:
        df.to_csv(tmp, index=False)
    save_curves(paths.curve, df, x="epoch", ys=["train_loss", "val_f4"], title=f"fold {paths.fold}")
