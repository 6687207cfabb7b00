"""Load train runs into memory once: normalized volumes plus particle positions in voxels."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from czii_kit.config import particle_set
from czii_kit.data.io import points_from_picks
from czii_kit.data.normalize import normalize_from_config
from czii_kit.data.source import DataSource
from czii_kit.errors import DataError


@dataclass
class RunData:
    name: str
    recon: str
    volume: np.ndarray  # normalized float32 (z, y, x)
    points: np.ndarray  # (N, 3) float voxel (z, y, x)
    labels: np.ndarray  # (N,) int class index into the config's classes
    picks: pd.DataFrame  # the Å picks (the validation solution)
    spacing: float  # Å per voxel


def load_run(data: DataSource, run: str, cfg: dict, recon: str | None = None, known_only: bool = False) -> RunData:
    """``known_only``: drop picks of classes the config does not train (other labelled data, e.g. rehearsal);
    otherwise such a pick is an error."""
    tomogram = data.read_run(run, "train", cfg["data"], recon)
    vol = normalize_from_config(tomogram.volume, cfg["normalize"], name=f"run {run} ({tomogram.recon})")
    picks, particles = data.read_picks(run, cfg["data"]), particle_set(cfg)
    if known_only:
        picks = picks[picks["particle_type"].isin(particles.names)].reset_index(drop=True)
    points, labels = points_from_picks(picks, tomogram.spacing, particles)
    return RunData(run, tomogram.recon, vol, points, labels, picks, tomogram.spacing)


def load_runs(data: DataSource, runs: list[str], cfg: dict, extra_recons: bool = True,
              known_only: bool = False) -> list[RunData]:
    recons = [cfg["data"]["recon"]] + (list(cfg["data"]["extra_recons"]) if extra_recons else [])
    return [load_run(data, run, cfg, recon, known_only) for run in runs for recon in recons]


def common_spacing(runs: list[RunData]) -> float:
    """The one voxel size of every loaded run (a model learns sizes in voxels, so they must agree)."""
    spacings = sorted({r.spacing for r in runs})
    if any(not math.isclose(s, spacings[0], rel_tol=1e-3) for s in spacings):
        detail = ", ".join(f"{r.name} ({r.recon}): {r.spacing:.4f}" for r in runs)
        raise DataError(f"runs have different voxel sizes in Å ({detail}); train on one data.level of "
                        "tomograms with one voxel size")
    return spacings[0]
