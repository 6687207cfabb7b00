"""Paths of the competition layout, exactly as Kaggle ships it.

    ROOT/{train,test}/static/ExperimentRuns/<run>/VoxelSpacing10.000/<recon>.zarr
    ROOT/train/overlay/ExperimentRuns/<run>/Picks/<particle>.json
         (or copick's <user>_<session>_<particle>.json)

Only path logic lives here; reading and writing is in ``czii_kit.data.io``.
"""
from __future__ import annotations

from pathlib import Path

from czii_kit.errors import DataError

SPLITS = ("train", "test")
RECONS = ("denoised", "wbp", "ctfdeconvolved", "isonetcorrected")
VOXEL_SPACING_DIR = "VoxelSpacing10.000"
SOLUTION_CSV = "solution.csv"  # written by the synthetic generator for its test split


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist; pass the competition directory (the one holding "
            "train/ and test/), a copick config JSON, or make a directory with `czii make-synthetic --out DIR`"
        )
    return root


def runs_dir(root: str | Path, split: str) -> Path:
    _check_split(split)
    return Path(root) / split / "static" / "ExperimentRuns"


def run_dir(root: str | Path, split: str, run: str) -> Path:
    return runs_dir(root, split) / run / VOXEL_SPACING_DIR


def tomogram_path(root: str | Path, split: str, run: str, recon: str = "denoised") -> Path:
    if recon not in RECONS:
        raise DataError(f"unknown reconstruction {recon!r}; expected one of {', '.join(RECONS)}")
    return run_dir(root, split, run) / f"{recon}.zarr"


def picks_dir(root: str | Path, run: str) -> Path:
    return Path(root) / "train" / "overlay" / "ExperimentRuns" / run / "Picks"


def list_runs(root: str | Path, split: str) -> list[str]:
    """Sorted run names of a split (the order folds are numbered in)."""
    root = check_root(root)
    base = runs_dir(root, split)
    if not base.is_dir():
        raise DataError(
            f"no {split} runs: {base} does not exist; is {root} the competition directory "
            "(it should contain train/static/ExperimentRuns and test/static/ExperimentRuns)?"
        )
    # every run folder counts, so that one without its tomograms fails loudly by name instead of being left out
    runs = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not runs:
        raise DataError(f"no runs found under {base} (expected <run>/{VOXEL_SPACING_DIR}/<recon>.zarr)")
    return runs


def available_recons(root: str | Path, split: str, run: str) -> list[str]:
    d = run_dir(root, split, run)
    return [r for r in RECONS if (d / f"{r}.zarr").exists()]
