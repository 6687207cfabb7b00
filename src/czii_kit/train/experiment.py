"""What every trainer shares: the files of a fold, refusing to clobber them, seeding, the training log,
and how a model's held-out candidates become the thresholds and scores a checkpoint stores."""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from czii_kit.config import class_dict, particle_set, with_new_defaults, with_particle_set
from czii_kit.errors import CheckpointError, ConfigError, first_few
from czii_kit.metric import tuned_score
from czii_kit.tuning import DEFAULT_THRESHOLDS, INIT_THRESHOLDS, Tuning, load_tuning
from czii_kit.utils.atomic import atomic_path, check_output_folder


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

    @property
    def nothing_to_resume(self) -> bool:
        """A best checkpoint without its resume state: a training stopped between its first two writes."""
        return self.best.is_file() and not self.last.is_file()


def fold_seed(cfg: dict, fold: int) -> int:
    """Distinct per fold, non-negative for fold -1."""
    return int(cfg["seed"]) + fold + 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _comparable(cfg: dict) -> dict:
    """Config fields that define an experiment (data location and run-time knobs excluded)."""
    c = {k: v for k, v in cfg.items() if k not in ("data",)}
    c["train"] = {k: v for k, v in cfg["train"].items() if k not in ("device", "num_workers", "time_limit_min")}
    return c


def config_differences(old: dict, new: dict, where: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (a key only one side has shows as None)."""
    out = []
    for k in dict.fromkeys([*old, *new]):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{where}{k}.")
        elif a != b:
            out.append(f"{where}{k}: {a!r} -> {b!r}")
    return out


def guard_output(paths: FoldPaths, cfg: dict, resume: bool) -> None:
    """Refuse to clobber: an experiment with another config (its config.yaml; another job may be training into the
    folder right now), or an existing fold without --resume."""
    import yaml

    check_output_folder(paths.out)
    if paths.config.exists():
        old = with_new_defaults(yaml.safe_load(paths.config.read_text()))
        old = with_particle_set(old, particle_set(old))  # written before classes carried their radius and weight
        differences = config_differences(_comparable(old), _comparable(cfg))
        if differences:
            fresh = "" if any(paths.out.glob("fold*")) else (
                f" (no fold has written anything there yet: if that config is left from a start that failed, delete "
                f"{paths.config})")
            raise CheckpointError(
                f"{paths.out} holds an experiment with another config ({paths.config}: "
                f"{first_few(differences, 5, '; ')}); choose a new --out directory, or run with that experiment's "
                f"settings{fresh} (nothing was changed)")
    if not resume and paths.nothing_to_resume:
        raise CheckpointError(
            f"{paths.best} exists without {paths.last.name}: its training stopped in its first epoch, so there is "
            f"nothing to resume; delete {paths.best} to train the fold again, or choose another --out")
    if not resume and (paths.best.exists() or paths.last.exists()):
        raise CheckpointError(
            f"{paths.best if paths.best.exists() else paths.last} exists; pass --resume to continue that run, "
            "or --out for a new experiment (nothing was overwritten)")


def write_log(paths: FoldPaths, rows: list[dict]) -> None:
    """fold{K}_log.csv (atomically) and its curve PNG."""
    from czii_kit.viz import save_curves  # matplotlib writes a font cache on import: not before the offline guard

    df = pd.DataFrame(rows)
    with atomic_path(paths.log) as tmp:
        df.to_csv(tmp, index=False)
    save_curves(paths.curve, df, x="epoch", ys=["train_loss", "val_f4"], title=f"fold {paths.fold}")


def threshold_grid(cfg: dict) -> np.ndarray:
    start, stop, step = cfg["validate"]["threshold_grid"]
    return np.round(np.arange(start, stop + step / 2, step), 6)


def validation_summary(solution: pd.DataFrame, cand: pd.DataFrame, cfg: dict, runs: list[str]) -> dict:
    """Tuned thresholds and exact per-class scores of a model's held-out candidates (what checkpoints store).

    Classes absent from the held-out run keep the config's default threshold.
    """
    thresholds, table, score = tuned_score(solution, cand, threshold_grid(cfg), class_dict(cfg, "threshold"),
                                           particle_set(cfg))
    return {"score": score, "thresholds": thresholds, "per_class": table.reset_index().to_dict(orient="records"),
            "runs": list(runs)}


def inherited_thresholds(cfg: dict, lineage: Mapping) -> dict[str, float]:
    """The thresholds of the checkpoint a model started from (``train.init_from``) for the classes it knows, the
    config's default for the others."""
    return {c: float(lineage["thresholds"].get(c, t)) for c, t in class_dict(cfg, "threshold").items()}


def no_validation(cfg: dict, tuning: Tuning | None = None, lineage: dict | None = None) -> dict:
    """What a fold without a held-out run (fold -1) stores, and which rule set its thresholds (``thresholds_from``):
    those tuned by cross-validation (``tools/evaluate.py``'s thresholds.json) when given; else, for a model that
    started from a checkpoint (``train.init_from``), that checkpoint's thresholds (tuned on its own held-out runs)
    for the classes it knows and the config's default for the others; else the config's defaults, marked as such
    (prediction warns loudly about those)."""
    empty = {"score": float("nan"), "per_class": [], "runs": []}
    if tuning is not None:
        return {**empty, "thresholds": dict(tuning.thresholds), "thresholds_from": str(tuning.path),
                "cv_score": tuning.meta.get("score"), "source_weights": tuning.source_weights}
    if lineage is not None:
        return {**empty, "thresholds": inherited_thresholds(cfg, lineage),
                "thresholds_from": f"{INIT_THRESHOLDS}: {lineage['path']}"}
    return {**empty, "thresholds": class_dict(cfg, "threshold"), "thresholds_from": DEFAULT_THRESHOLDS}


def thresholds_for(cfg: dict, fold: int, thresholds_from) -> Tuning | None:
    """The thresholds file a full-data model (fold -1) takes, checked before any training."""
    if thresholds_from is None:
        return None
    if fold != -1:
        raise ConfigError(f"--thresholds-from is for --fold -1 (a model trained on every run, with no held-out run to "
                          f"tune on); fold {fold} tunes its thresholds on its held-out run")
    return load_tuning(thresholds_from, list(cfg["classes"]))
