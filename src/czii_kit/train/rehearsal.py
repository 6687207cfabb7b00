"""Rehearsal while fine-tuning: a share of every epoch's patches comes from other labelled data, typically the
simulator runs the starting model was pretrained on, so that a model tuned on one or two labelled runs keeps
seeing the variety it was pretrained on (``train.rehearsal``; docs/studies/finetune.md measures it)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from czii_kit.data.folds import chosen_runs
from czii_kit.data.open_data import open_data
from czii_kit.data.source import DataSource
from czii_kit.errors import ConfigError

REHEARSAL_SEED_OFFSET = 7919  # the rehearsal patches' seed: the rank's seed plus this (their own stream)


@dataclass(frozen=True)
class RehearsalSource:
    """Where rehearsal patches come from: checked before any tomogram is read, loaded with the training runs."""

    data: DataSource
    runs: list[str]
    fraction: float


def rehearsal_source(spec: Mapping) -> RehearsalSource | None:
    """``train.rehearsal`` checked (the data opens, its runs exist, the fraction makes sense); None when off."""
    fraction = spec.get("fraction", 0.0)
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"train.rehearsal.fraction is the share of each epoch's patches drawn from the rehearsal "
                          f"data, in [0, 1); got {fraction!r}")
    if fraction == 0.0:
        return None
    if not spec.get("data"):
        raise ConfigError(f"train.rehearsal.fraction={fraction:g} needs train.rehearsal.data: the competition "
                          "directory or copick config to draw those patches from (e.g. the pretraining's "
                          "data/pretrain)")
    data = open_data(spec["data"])
    runs = chosen_runs(data.list_runs("train"), spec.get("runs"), str(data), key="train.rehearsal.runs")
    return RehearsalSource(data, runs, float(fraction))


class MixedPatches(Dataset):
    """``main``'s patches, each replaced with probability ``fraction`` by ``rehearsal``'s patch of the same index:
    the same length, the same per-(seed, epoch, index) determinism, so resume and DDP ranks behave as without."""

    def __init__(self, main: Dataset, rehearsal: Dataset, fraction: float, seed: int) -> None:
        if len(main) != len(rehearsal):
            raise ConfigError(f"the rehearsal dataset has {len(rehearsal)} patches per epoch, the main one "
                              f"{len(main)}; build both with the same length")
        self.main, self.rehearsal, self.fraction, self.seed = main, rehearsal, float(fraction), int(seed)

    @property
    def epoch(self) -> int:
        return self.main.epoch

    def set_epoch(self, epoch: int) -> None:
        self.main.set_epoch(epoch)
        self.rehearsal.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.main)

    def from_rehearsal(self, index: int) -> bool:
        """Whether patch ``index`` of this epoch is a rehearsal patch (its own random stream, not the patches')."""
        return bool(np.random.default_rng([self.seed, self.epoch, int(index), 1]).random() < self.fraction)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.rehearsal if self.from_rehearsal(index) else self.main)[index]
