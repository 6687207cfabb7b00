"""Load train runs into memory once: normalized volumes plus particle positions in voxels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from czii_kit.data import io
from czii_kit.data.normalize import normalize_from_config
from czii_kit.errors import DataError
from czii_kit.particles import CLASS_NAMES, angstrom_to_voxel


@dataclass
class RunData:
    name: str
    recon: str
    volume: np.ndarray  # normalized float32 (z, y, x)
    points: np.ndarray  # (N, 3) float voxel (z, y, x)
    labels: np.ndarray  # (N,) int class index into CLASS_NAMES
    picks: pd.DataFrame  # the Å picks (the validation solution)


def points_from_picks(picks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if len(picks) == 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    unknown = sorted(set(picks["particle_type"]) - set(CLASS_NAMES))
    if unknown:
        raise DataError(f"picks name unknown particle types {unknown}; expected {', '.join(CLASS_NAMES)}")
    labels = picks["particle_type"].map({c: i for i, c in enumerate(CLASS_NAMES)}).to_numpy(np.int64)
    return angstrom_to_voxel(picks[["x", "y", "z"]].to_numpy()), labels


def load_run(root, run: str, recon: str, cfg: dict) -> RunData:
    vol = io.read_tomogram(root, run, "train", recon, cfg["data"]["level"])
    vol = normalize_from_config(vol, cfg["normalize"], name=f"run {run} ({recon})")
    picks = io.read_picks(root, run)
    points, labels = points_from_picks(picks)
    return RunData(run, recon, vol, points, labels, picks)


def load_runs(root, runs: list[str], cfg: dict, extra_recons: bool = True) -> list[RunData]:
    recons = [cfg["data"]["recon"]] + (list(cfg["data"]["extra_recons"]) if extra_recons else [])
    return [load_run(root, run, recon, cfg) for run in runs for recon in recons]
