"""Where the data comes from: the Kaggle competition directory, or any copick project.

``DataSource`` is what training, evaluation and prediction read through; ``KaggleDirectory`` reads the
competition layout with the kit's own reader (CZII classes), ``czii_kit.data.copick.CopickProject`` a
copick project through the copick library (any runs, tomogram types, voxel spacings, picks and particle
set). ``czii_kit.data.open_data`` picks one from what the user passed as ``--data``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from czii_kit.data import io, layout
from czii_kit.errors import DataError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.tables import PICK_COLUMNS, read_solution, solution_for_runs, solution_from_picks


class DataSource(ABC):
    """Runs, tomograms (with their true voxel size), picks and the particle set of a dataset."""

    particles: ParticleSet
    location: str  # what the user passed, for messages

    @abstractmethod
    def list_runs(self, split: str) -> list[str]:
        """Sorted run names of a split (the order folds are numbered in)."""

    @abstractmethod
    def read_run(self, run: str, split: str, data_cfg: Mapping, recon: str | None = None) -> io.Tomogram:
        """One reconstruction (``data.recon``, or ``recon``) at ``data.level``, with its voxel size."""

    @abstractmethod
    def run_geometry(self, run: str, split: str, data_cfg: Mapping,
                     recon: str | None = None) -> tuple[tuple[int, ...], float]:
        """((z, y, x) shape, Å per voxel) of what ``read_run`` would read, from metadata only."""

    @abstractmethod
    def read_picks(self, run: str, data_cfg: Mapping | None = None) -> pd.DataFrame:
        """Ground-truth picks of a run (experiment, particle_type, x, y, z Å)."""

    def select_runs(self, split: str, runs: Sequence[str] | None = None) -> list[str]:
        """``runs`` (default: every run of ``split``), refused when one is not in the split: names only, no
        tomogram opened, so a job can check --runs before it starts anything heavy."""
        every = self.list_runs(split)
        unknown = sorted(set(runs or ()) - set(every))
        if unknown:
            raise DataError(f"--runs: {', '.join(unknown)} not in the {split} split of {self}")
        return list(runs) if runs else every

    def solution(self, split: str, runs: Sequence[str] | None = None, data_cfg: Mapping | None = None) -> pd.DataFrame:
        """Ground truth of a split for scoring: every run's picks."""
        runs = list(runs) if runs is not None else self.list_runs(split)
        frames = [self.read_picks(run, data_cfg) for run in runs]
        return solution_from_picks(pd.concat(frames, ignore_index=True) if frames else
                                   pd.DataFrame(columns=PICK_COLUMNS))

    def data_dirs(self) -> list[Path]:
        """The folders that hold the data itself, where nothing is ever written."""
        return []

    def run_stamp(self, run: str, split: str, data_cfg: Mapping) -> str | None:
        """Something that changes when a run's tomogram is written again (resumable jobs compare it), or None
        where the source cannot tell."""
        return None

    def check_outside(self, path: str | Path, flag: str = "--out") -> None:
        """Refuse, before any work, an output inside the data."""
        target = Path(path).resolve()
        for folder in self.data_dirs():
            if target.is_relative_to(folder.resolve()):
                raise DataError(f"{flag} {path} is inside the data directory {folder}, and nothing is written there; "
                                f"choose an {flag} outside it")

    def __str__(self) -> str:
        return self.location


class KaggleDirectory(DataSource):
    """The competition directory: ROOT/{train,test}/static/ExperimentRuns/<run>/VoxelSpacing10.000/<recon>.zarr
    and ROOT/train/overlay/ExperimentRuns/<run>/Picks/<particle>.json; the six CZII classes."""

    def __init__(self, root: str | Path, particles: ParticleSet = CZII) -> None:
        self.root = layout.check_root(root)
        self.location = str(self.root)
        self.particles = particles

    def data_dirs(self) -> list[Path]:
        return [self.root]

    def list_runs(self, split: str) -> list[str]:
        return layout.list_runs(self.root, split)

    def read_run(self, run, split, data_cfg, recon=None) -> io.Tomogram:
        return io.read_run(self.root, run, split, data_cfg, recon)

    def run_geometry(self, run, split, data_cfg, recon=None) -> tuple[tuple[int, ...], float]:
        return io.run_geometry(self.root, run, split, data_cfg, recon)

    def run_stamp(self, run, split, data_cfg) -> str | None:
        """The modification time of the level's array metadata: a regenerated or re-copied store gets a new one
        (a copy that keeps times, such as rsync -a, keeps it, and holds the same data)."""
        meta = io.tomogram_location(self.root, run, split, data_cfg["recon"]) / str(data_cfg["level"]) / ".zarray"
        return str(meta.stat().st_mtime_ns) if meta.is_file() else None

    def read_picks(self, run, data_cfg=None) -> pd.DataFrame:
        return io.read_picks(self.root, run, self.particles)

    def solution(self, split, runs=None, data_cfg=None) -> pd.DataFrame:
        """Train: the picks; test: ROOT/solution.csv (written by the synthetic generator only)."""
        if split == "train":
            return super().solution(split, runs, data_cfg)
        path = self.root / layout.SOLUTION_CSV
        if not path.is_file():
            raise DataError(f"no test ground truth at {path}: test labels exist only for synthetic data "
                            "(tools/make_synthetic.py writes solution.csv); for real data score train runs with "
                            "--split train")
        return solution_for_runs(read_solution(path), list(runs) if runs else None, str(path))
