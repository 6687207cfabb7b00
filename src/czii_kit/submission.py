"""Kaggle submission files: build, validate, write atomically, read back.

A submission is one row per detected particle centre:
``id, experiment, particle_type, x, y, z`` with x/y/z in Å (see ``czii_kit.particles``).
Every validation error names the source, the column and a few offending rows and says how to
fix them; the column checks are ``czii_kit.tables``', shared with the readers and the metric.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit.errors import DataError, SubmissionError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.tables import (PICK_COLUMNS, SUBMISSION_COLUMNS, XYZ, preview_rows, read_table,
                             require_columns, require_experiment_names, require_finite, require_known_types)
from czii_kit.utils.atomic import atomic_path, check_output_folder


def _require_exact_columns(df: pd.DataFrame, source: str) -> None:
    require_columns(df, SUBMISSION_COLUMNS, source)
    extra = [str(c) for c in df.columns if c not in SUBMISSION_COLUMNS]
    if extra:
        raise SubmissionError(
            f"{source}: unexpected column(s) {', '.join(extra)}; a submission has exactly "
            f"{', '.join(SUBMISSION_COLUMNS)} (write it with czii_kit.submission.write_submission)"
        )


def _require_integer_unique_ids(df: pd.DataFrame, source: str) -> None:
    ids = pd.to_numeric(df["id"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    not_integer = ~np.isfinite(ids) | (np.mod(ids, 1.0) != 0)
    if not_integer.any():
        raise SubmissionError(
            f"{source}: column 'id' has {int(not_integer.sum())} non-integer value(s) at "
            f"{preview_rows(df['id'], not_integer)}; ids must be integers, e.g. 0..n-1"
        )
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise SubmissionError(
            f"{source}: column 'id' repeats values in {int(duplicated.sum())} rows "
            f"({preview_rows(df['id'], duplicated)}); "
            "ids must be unique: renumber them 0..n-1"
        )


def validate_submission(df: pd.DataFrame, source: str = "<submission>", particles: ParticleSet = CZII) -> None:
    """Raise ``SubmissionError`` unless ``df`` is a well-formed Kaggle submission (column order is free)."""
    _require_exact_columns(df, source)
    _require_integer_unique_ids(df, source)
    require_experiment_names(df, source)
    require_known_types(df, source, particles=particles)
    require_finite(df, XYZ, source)


# --------------------------------------------------------------------------- building
def to_submission(detections: pd.DataFrame) -> pd.DataFrame:
    """Detections (experiment, particle_type, x, y, z[, score, ...]) -> exact submission columns.

    Rows are stably sorted by experiment then particle_type, ids are 0..n-1; extra columns are dropped.
    """
    require_columns(detections, PICK_COLUMNS, "detections")
    require_experiment_names(detections, "detections")
    require_finite(detections, XYZ, "detections")
    out = detections[PICK_COLUMNS].sort_values(["experiment", "particle_type"], kind="stable")
    out = out.astype({"experiment": str, "particle_type": str, "x": float, "y": float, "z": float})
    out.insert(0, "id", np.arange(len(out), dtype=np.int64))
    return out.reset_index(drop=True)


def write_submission(detections: pd.DataFrame, path: str | os.PathLike, particles: ParticleSet = CZII) -> Path:
    """Convert, validate and write ``submission.csv`` atomically (an old file survives a failed write)."""
    path = Path(path)
    submission = to_submission(detections)
    validate_submission(submission, source=f"submission for {path}", particles=particles)
    try:
        with atomic_path(path) as tmp:
            submission.to_csv(tmp, index=False)
    except OSError as e:
        raise SubmissionError(f"cannot write submission to {path} ({e}); choose a writable path") from e
    return path


def is_submission_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with the submission header (an earlier prediction, safe to replace)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == ",".join(SUBMISSION_COLUMNS)
    except OSError:
        return False


def check_submission_out(path: Path, data, overwrite: bool = False) -> None:
    """Fail before hours of inference, not after: ``path`` (predict's --out) must be a file name in a writable
    directory, outside the data (a ``DataSource``), and either new or an earlier submission (any other file of the
    user's needs --overwrite)."""
    if path.is_dir():
        raise DataError(f"--out {path} is a directory; give a file name such as {path / 'submission.csv'}")
    check_output_folder(path.parent, "--out")
    data.check_outside(path)
    if path.is_file() and not overwrite and not is_submission_file(path):
        raise DataError(f"--out {path} exists and is not a submission CSV (its first line is not "
                        f"{','.join(SUBMISSION_COLUMNS)}); choose another --out, or pass --overwrite to replace it")


def read_submission(path: str | os.PathLike, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Read and validate a submission CSV; returns typed columns in the standard order."""
    path = Path(path)
    df = read_table(path, "submission", SubmissionError)
    validate_submission(df, source=str(path), particles=particles)
    return df[SUBMISSION_COLUMNS].astype(
        {"id": np.int64, "experiment": str, "particle_type": str, "x": float, "y": float, "z": float}
    )


