"""Train one fold: patches -> model -> EMA -> full-tomogram validation with the exact metric.

``train_fold`` is four steps: ``setup`` (data, model, optimizer, resume), ``train_epoch``,
``validate`` (the prediction plan itself on the held-out runs, thresholds tuned per class) and
``save_best`` / ``save_resume_state``. Everything a later user needs travels in the checkpoint
(see czii_kit.checkpoints).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from czii_kit import checkpoints
from czii_kit.config import class_values, dump_config, infer_window, particle_set, save_config, with_particle_set
from czii_kit.data import io
from czii_kit.data.dataset import PatchDataset
from czii_kit.data.folds import fold_runs
from czii_kit.data.lookalikes import lookalike_centres
from czii_kit.data.open_data import open_data
from czii_kit.data.targets import TargetSpec
from czii_kit.errors import CheckpointError, ConfigError, DataError
from czii_kit.infer.engines import resolve_device
from czii_kit.infer.plan import PredictionPlan, check_infer_settings
from czii_kit.losses import DeepSupervision, build_loss
from czii_kit.models import build_model
from czii_kit.train import distributed
from czii_kit.train.data import RunData, common_spacing, load_runs
from czii_kit.train.distributed import DistInfo
from czii_kit.train.ema import ModelEMA
from czii_kit.train.experiment import (FoldPaths, fold_seed, guard_output, no_validation, seed_everything,
                                       threshold_grid, thresholds_for, validation_summary, write_log)
from czii_kit.train.finetune import load_initial_weights, parameter_groups, set_encoder_frozen
from czii_kit.train.rehearsal import REHEARSAL_SEED_OFFSET, MixedPatches, rehearsal_source
from czii_kit.tuning import Tuning
from czii_kit.utils.cpu import keep_freed_memory
from czii_kit.utils.progress import progress_bar


@dataclass
class FoldRun:
    """One fold's training, set up: data, model, optimisation state, and where it all goes."""

    cfg: dict
    fold: int
    paths: FoldPaths
    device: torch.device
    use_amp: bool
    train_names: list[str]
    val_runs: list[tuple[io.Tomogram, pd.DataFrame]]  # raw held-out tomograms and their picks
    spacing: float
    model: torch.nn.Module
    ema: ModelEMA
    loss_fn: torch.nn.Module
    stride: int
    loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    start_epoch: int = 0
    log_rows: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": -1.0})
    tuning: Tuning | None = None  # cross-validated thresholds for a full-data model (fold -1)
    lineage: dict | None = None  # where the weights started (train.init_from), recorded in the checkpoint
    dist: DistInfo = DistInfo()  # this process's rank under torchrun (rank 0 of 1 otherwise)
    ddp: torch.nn.Module | None = None  # ``model`` wrapped for gradient averaging across ranks

    @property
    def val_names(self) -> list[str]:
        return [t.run for t, _ in self.val_runs]


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model for training; on CPU also keep freed memory and use channels-last (1.2-1.5x faster 3D convs)."""
    model.to(device)
    if device.type == "cpu":
        keep_freed_memory()
        model.to(memory_format=torch.channels_last_3d)
    return model


def training_loss(cfg: dict) -> torch.nn.Module:
    """The config's loss with its per-class weights; it also scores a deep-supervised model's auxiliary outputs."""
    return DeepSupervision(build_loss(cfg["loss"]["name"], class_weights=class_values(cfg, "loss_weight"),
                                      **cfg["loss"]["args"]))


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _check_data(train_runs: list[RunData], val_runs: list[tuple[io.Tomogram, pd.DataFrame]]) -> None:
    if sum(len(r.points) for r in train_runs) == 0:
        raise DataError("the training runs hold no picks at all; check ROOT/train/overlay/ExperimentRuns/*/Picks")
    for r in train_runs:
        if len(r.points) == 0:
            tqdm.write(f"warning: run {r.name} has zero particles; it only provides negative patches")
        outside = np.flatnonzero(~np.all((r.points >= -0.5) & (r.points <= np.array(r.volume.shape) - 0.5), axis=1))
        if len(outside):
            first = r.picks.iloc[outside[0]]
            tqdm.write(f"warning: run {r.name}: {len(outside)} of {len(r.points)} picks lie outside its "
                       f"{'x'.join(map(str, r.volume.shape))} volume (first: {first['particle_type']} at x, y, z = "
                       f"{first['x']:.0f}, {first['y']:.0f}, {first['z']:.0f} Å); they teach nothing: check the picks' "
                       "units (Å) and that they belong to this run")
    for tomogram, picks in val_runs:
        if len(picks) == 0:
            raise DataError(f"validation run {tomogram.run} has zero particles, so F4 is undefined; "
                            "pick another --fold")


def _check_geometry(model: torch.nn.Module, spec: TargetSpec, cfg: dict) -> None:
    if model.output_stride != spec.stride:
        raise ConfigError(f"model output stride {model.output_stride} != targets.stride {spec.stride}; "
                          "set both to the same value")
    for name, shape in (("train.patch_size", cfg["train"]["patch_size"]), ("infer.window", infer_window(cfg))):
        if any(s % model.input_multiple for s in shape):
            raise ConfigError(f"{name} {list(shape)} must be a multiple of {model.input_multiple} for this model")


def setup(cfg: dict, fold: int, data_root, out_dir, resume: bool = False, thresholds_from=None) -> FoldRun:
    """Everything before the first step; every check of config and data happens here. The classes are the data's
    (written into the config with their radius and weight)."""
    check_infer_settings(cfg)  # validation predicts with them
    data = open_data(data_root)
    cfg = with_particle_set(cfg, data.particles)
    info = distributed.join(cfg["train"]["device"], cfg["train"]["dist_timeout_s"])
    cfg["train"].update(world_size=info.world_size, dist_backend=info.backend)  # recorded next to the checkpoint
    particles = particle_set(cfg)
    tuning = thresholds_for(cfg, fold, thresholds_from)
    paths = FoldPaths(Path(out_dir), fold)
    data.check_outside(paths.out)
    guard_output(paths, cfg, resume)
    if resume and not paths.last.exists():
        raise CheckpointError(f"--resume: {paths.out} has no {paths.last.name} to continue from; give the --out of "
                              f"the run to continue, or drop --resume to start fold {fold}")
    seed = fold_seed(cfg, fold)
    seed_everything(seed)  # the same on every rank: the same initial weights
    device = resolve_device(distributed.training_device(info, cfg["train"]["device"]))
    tc = cfg["train"]

    train_names, val_names = fold_runs(data, cfg["data"], fold)
    rehearsal = rehearsal_source(tc["rehearsal"])
    model = build_model(cfg["model"]["name"], num_classes=len(particles) + 1, **cfg["model"]["args"])
    lineage = None
    if tc["init_from"] and not (resume and paths.last.exists()):  # checked before any tomogram is read
        lineage = load_initial_weights(model, cfg["model"], particles.names, tc["init_from"])
    train_data = load_runs(data, train_names, cfg)
    rehearsal_data = load_runs(rehearsal.data, rehearsal.runs, cfg, known_only=True) if rehearsal else []
    val_runs = [(data.read_run(run, "train", cfg["data"]), data.read_picks(run, cfg["data"])) for run in val_names]
    _check_data(train_data, val_runs)
    spacing = common_spacing(train_data + rehearsal_data)

    spec = TargetSpec.from_config({**cfg["targets"], "spacing": spacing, "particles": particles})
    _check_geometry(model, spec, cfg)
    loss_fn = training_loss(cfg)
    place_model(model, device)
    ema = ModelEMA(model, tc["ema_decay"])

    seed_of_rank = distributed.rank_seed(seed, info)

    def patches(runs: list[RunData], seed: int) -> PatchDataset:
        return PatchDataset(
            [r.volume for r in runs], [r.points for r in runs], [r.labels for r in runs],
            patch_size=tuple(tc["patch_size"]), target_spec=spec,
            positive_fraction=tc["positive_fraction"], class_weights=class_values(cfg, "sample_weight"),
            augment=cfg["augment"], length=tc["samples_per_epoch"] // info.world_size, seed=seed,
            hard_negatives=hard_negatives(runs, particles, tc["hard_negative_fraction"]),
            hard_negative_fraction=tc["hard_negative_fraction"])

    dataset = patches(train_data, seed_of_rank)
    if rehearsal:
        dataset = MixedPatches(dataset, patches(rehearsal_data, seed_of_rank + REHEARSAL_SEED_OFFSET),
                               rehearsal.fraction, seed_of_rank)
    loader = torch.utils.data.DataLoader(dataset, batch_size=tc["batch_size"], shuffle=False,
                                         num_workers=tc["num_workers"], drop_last=True,
                                         persistent_workers=tc["num_workers"] > 0)
    total_steps = len(loader) * tc["epochs"]
    lr = tc["lr"] * (info.world_size if tc["scale_lr"] else 1)
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, tc["encoder_lr_mult"]), lr=lr,
                                  weight_decay=tc["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, total_steps, tc["warmup_epochs"] * len(loader)))
    use_amp = bool(tc["amp"]) and device.type == "cuda"
    run = FoldRun(cfg, fold, paths, device, use_amp, train_names, val_runs, spacing, model, ema, loss_fn,
                  spec.stride, loader, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp),
                  tuning=tuning, lineage=lineage, dist=info, ddp=distributed.wrap(model, info, device))
    if resume and paths.last.exists():
        _resume(run)
    if info.is_main:
        paths.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, paths.config)
    distributed.barrier(info)
    return run


def hard_negatives(runs: list[RunData], particles, fraction: float) -> list[np.ndarray] | None:
    """Look-alike centres per run (as many as it has particles), at the particle set's typical size; None when off."""
    if fraction <= 0:
        return None
    radius = float(np.exp(np.mean(np.log([p.radius for p in particles]))))
    return [lookalike_centres(r.volume, r.points, radius / r.spacing, len(r.points)) for r in runs]


def _resume(run: FoldRun) -> None:
    state = checkpoints.load_state(run.paths.last)
    run.model.load_state_dict(state["model"])
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.start_epoch, run.log_rows, run.best = state["epoch"] + 1, state["log"], state["best"]
    run.lineage = state.get("lineage")
    torch.set_rng_state(state["torch_rng"])
    epochs = run.cfg["train"]["epochs"]
    tqdm.write(f"fold {run.fold} finished all {epochs} epochs already ({run.paths.last}): nothing left to train"
               if state.get("finished") else
               f"resuming fold {run.fold} after epoch {run.start_epoch} of {epochs} ({run.paths.last})")


def train_step(run: FoldRun, image: torch.Tensor, target: torch.Tensor) -> float:
    """One optimizer step exactly as training takes it (AMP, gradient clipping, LR schedule, EMA); the loss."""
    image = image.to(run.device, non_blocking=True)
    target = target.to(run.device, non_blocking=True)
    with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.use_amp):
        loss = run.loss_fn((run.ddp or run.model)(image), target)  # DDP averages the gradients across ranks
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg["train"]["grad_clip"])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    distributed.broadcast_buffers(run.model, run.dist)
    run.ema.update(run.model)
    return loss.item()


def train_epoch(run: FoldRun, epoch: int, progress: bool = True) -> dict:
    """One pass over the epoch's patches; returns the log row (loss, lr, seconds)."""
    tc = run.cfg["train"]
    run.loader.dataset.set_epoch(epoch)
    run.model.train()
    set_encoder_frozen(run.model, epoch < tc["freeze_encoder_epochs"])
    losses, t_epoch = [], time.monotonic()
    bar = progress_bar(run.loader, total=len(run.loader), desc=f"fold {run.fold} epoch {epoch + 1}/{tc['epochs']}",
                       enabled=progress and run.dist.is_main, leave=False)
    for image, target in bar:
        losses.append(train_step(run, image, target))
        rate = len(losses) * tc["batch_size"] / (time.monotonic() - t_epoch)
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", patches_s=f"{rate:.1f}")
    return {"epoch": epoch + 1, "train_loss": distributed.mean(float(np.mean(losses)), run.dist),
            "lr": run.scheduler.get_last_lr()[-1],
            "seconds": time.monotonic() - t_epoch, "val_f4": np.nan}


def model_fields(run: FoldRun) -> dict:
    """The checkpoint fields that describe the model (not its weights, nor what validation found): what the
    prediction plan needs to run the model in memory during validation, and what ``save_best`` writes."""
    cfg = run.cfg
    return {"path": str(run.paths.best), "model": {"name": cfg["model"]["name"], "args": dict(cfg["model"]["args"])},
            "config": cfg, "config_yaml": dump_config(cfg), "classes": list(cfg["classes"]),
            "activation": run.loss_fn.activation, "stride": run.stride, "normalization": dict(cfg["normalize"]),
            "window": list(infer_window(cfg)), "voxel_spacing": run.spacing, "fold": run.fold,
            "input_multiple": run.model.input_multiple, **({"init_from": run.lineage} if run.lineage else {})}


def validate(run: FoldRun) -> dict:
    """The EMA model through its prediction plan on the held-out runs (candidates down to the threshold grid's
    floor), then a per-class threshold sweep with the exact metric."""
    cfg = run.cfg
    predictor = PredictionPlan.for_training(model_fields(run)).with_model(run.ema.module, run.device)
    floor = float(threshold_grid(cfg)[0])
    cands = [predictor.candidates(tomogram, floor) for tomogram, _ in run.val_runs]
    solution = pd.concat([picks for _, picks in run.val_runs], ignore_index=True)
    return validation_summary(solution, pd.concat(cands, ignore_index=True), cfg, run.val_names)


def save_best(run: FoldRun, best: dict) -> None:
    fields = {k: v for k, v in model_fields(run).items() if k != "path"}
    checkpoints.save_checkpoint({**fields, "state_dict": run.ema.state_dict(), "thresholds": best["thresholds"],
                                 "validation": best, "epoch": best["epoch"]}, run.paths.best)


def save_resume_state(run: FoldRun, epoch: int, finished: bool = False) -> None:
    checkpoints.save_state({"model": run.model.state_dict(), "ema": run.ema.state_dict(),
                            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                            "epoch": epoch, "log": run.log_rows, "best": run.best, "lineage": run.lineage,
                            "finished": finished, "torch_rng": torch.get_rng_state()}, run.paths.last)


def train_fold(cfg: dict, fold: int, data_root, out_dir: str | Path, resume: bool = False,
               progress: bool = True, thresholds_from=None) -> dict:
    """Train fold ``fold`` of ``data_root`` (a directory, a copick config, or a DataSource) into ``out_dir``.
    ``thresholds_from`` (fold -1 only): tools/evaluate.py's thresholds.json, stored in the checkpoint. Under torchrun
    every rank trains and rank 0 alone validates and writes (``czii_kit.train.distributed``)."""
    run = setup(cfg, fold, data_root, out_dir, resume, thresholds_from)
    try:
        return _train(run, progress)
    finally:
        distributed.leave(run.dist)


def _train(run: FoldRun, progress: bool) -> dict:
    cfg = run.cfg
    tc = cfg["train"]
    t_start = time.monotonic()
    time_limit = tc["time_limit_min"] * 60 if tc["time_limit_min"] else None
    for epoch in range(run.start_epoch, tc["epochs"]):
        row = train_epoch(run, epoch, progress)
        out_of_time = distributed.agree(time_limit is not None and time.monotonic() - t_start > time_limit, run.dist)
        last_epoch = epoch == tc["epochs"] - 1 or out_of_time
        if not run.dist.is_main:
            distributed.barrier(run.dist)  # rank 0 validates and writes meanwhile
            if out_of_time:
                break
            continue
        if run.val_runs and ((epoch + 1) % cfg["validate"]["every"] == 0 or last_epoch):
            result = validate(run)
            row["val_f4"] = result["score"]
            row.update({f"f4_{r['particle_type']}": r["f4"] for r in result["per_class"]})
            if result["score"] > run.best["score"]:
                run.best = {**result, "epoch": epoch + 1}
                save_best(run, run.best)
        elif not run.val_runs and last_epoch:
            run.best = {**no_validation(cfg, run.tuning, run.lineage), "epoch": epoch + 1}
            save_best(run, run.best)
        run.log_rows.append(row)
        write_log(run.paths, run.log_rows)
        save_resume_state(run, epoch, finished=last_epoch)
        tqdm.write(f"{run.paths.out.name} fold {run.fold} epoch {epoch + 1}/{tc['epochs']}: "
                   f"loss {row['train_loss']:.4f}"
                   + (f"  val F4 {row['val_f4']:.4f} (best {run.best['score']:.4f})" if not np.isnan(row["val_f4"])
                      else ""))
        distributed.barrier(run.dist)
        if out_of_time:
            tqdm.write(f"time limit of {tc['time_limit_min']} min reached after epoch {epoch + 1}")
            break
    return {"paths": run.paths, "best": run.best, "log": pd.DataFrame(run.log_rows), "train_runs": run.train_names,
            "val_runs": run.val_names, "main": run.dist.is_main}
