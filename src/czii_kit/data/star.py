"""Predictions as RELION STAR files, one per run: what cryo-ET users import into RELION (and Warp, ArtiaX).

Columns: ``_rlnTomoName``; ``_rlnCoordinateX/Y/Z`` in voxels of the tomogram the particles were found in
(czii-kit's convention: the centre of the first voxel is 0, coordinate = Å / voxel size); RELION 5's
``_rlnCenteredCoordinateX/Y/ZAngst`` = (voxel - size / 2) x voxel size, relative to the tomogram's centre;
``_rlnClassNumber`` (1-based, in the class order written in the file's header comment); and
``_rlnAutopickFigureOfMerit`` (the detection score). Files are written atomically.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit.errors import DataError
from czii_kit.particles import ParticleSet, angstrom_to_voxel
from czii_kit.utils.atomic import check_output_folder, write_text_atomic

COLUMNS = ("rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnCenteredCoordinateXAngst",
           "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst", "rlnClassNumber", "rlnAutopickFigureOfMerit")


def star_path(folder: str | Path, run: str) -> Path:
    return Path(folder) / f"{run}.star"


def check_star_folder(folder: str | Path, runs: Sequence[str], overwrite: bool) -> None:
    """Before any work: ``folder`` can be written, and the files this would write do not exist (unless
    ``overwrite``)."""
    check_output_folder(folder, "--star-out")
    existing = [star_path(folder, r) for r in runs if star_path(folder, r).exists()]
    if existing and not overwrite:
        raise DataError(f"--star-out {folder} already holds {', '.join(p.name for p in existing[:3])}; choose another "
                        "folder or pass --overwrite")


def star_text(run: str, detections: pd.DataFrame, shape: Sequence[int], spacing: float,
              particles: ParticleSet) -> str:
    """The STAR file of one run's detections (experiment, particle_type, x, y, z Å, score)."""
    zyx = angstrom_to_voxel(detections[["x", "y", "z"]].to_numpy(dtype=np.float64), spacing)
    xyz_vox = zyx[:, ::-1]
    centre = np.asarray(shape, dtype=np.float64)[::-1] / 2  # (x, y, z) sizes / 2
    centred = (xyz_vox - centre) * spacing
    classes = detections["particle_type"].map({n: i + 1 for i, n in enumerate(particles.names)}).to_numpy()
    scores = detections["score"].to_numpy(dtype=np.float64) if "score" in detections else np.ones(len(detections))
    header = [f"# czii-kit predictions of {run}: voxel size {spacing:.6f} Å, tomogram (x, y, z) "
              f"{tuple(int(n) for n in shape[::-1])} voxels",
              "# classes: " + ", ".join(f"{i + 1} = {n}" for i, n in enumerate(particles.names)),
              "", "data_particles", "", "loop_"]
    header += [f"_{column} #{i + 1}" for i, column in enumerate(COLUMNS)]
    rows = [f"{run}\t{x:.3f}\t{y:.3f}\t{z:.3f}\t{cx:.3f}\t{cy:.3f}\t{cz:.3f}\t{int(c)}\t{s:.6f}"
            for (x, y, z), (cx, cy, cz), c, s in zip(xyz_vox, centred, classes, scores)]
    return "\n".join(header + rows) + "\n"


def write_star_files(detections: pd.DataFrame, folder: str | Path,
                     geometry: Mapping[str, tuple[Sequence[int], float]], particles: ParticleSet) -> list[Path]:
    """One STAR file per run of ``geometry`` (run -> (shape, voxel size)), empty loops included."""
    paths = []
    for run, (shape, spacing) in geometry.items():
        rows = detections[detections["experiment"] == run]
        path = star_path(folder, run)
        write_text_atomic(path, star_text(run, rows, shape, spacing, particles))
        paths.append(path)
    return paths


def read_star(path: str | Path) -> pd.DataFrame:
    """The particle loop of a STAR file written by ``write_star_files`` (for checks and round trips)."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln and not ln.startswith("#")]
    columns = [ln.split()[0][1:] for ln in lines if ln.startswith("_")]
    body = [ln.split("\t") for ln in lines if not ln.startswith(("_", "data_", "loop_"))]
    frame = pd.DataFrame(body, columns=columns)
    return frame.astype({c: float for c in columns if c not in ("rlnTomoName", "rlnClassNumber")}).astype(
        {"rlnClassNumber": int})
