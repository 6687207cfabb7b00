"""Kaggle submission files: build, validate, write atomically, read back.

A submission is one row per detected particle centre:
``id, experiment, particle_type, x, y, z`` with x/y/z in Å (see ``czii_kit.particles``).
Every validation error names the source, the column and a few offending rows (index
labels: for a file read here, 0-based data rows, header not counted) and says how to fix them.
The ``require_*`` checks are shared with ``czii_kit.metric``, which passes its own
error type for the solution frame.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit.data.io import PICK_COLUMNS, XYZ
from czii_kit.errors import CziiError, DataError, SubmissionError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.utils.atomic import atomic_path

SUBMISSION_COLUMNS = ["id", "experiment", "particle_type", "x", "y", "z"]
MAX_SHOWN = 5  # offending rows quoted in an error message


# --------------------------------------------------------------------------- shared checks
def _plain(value):
    """A numpy scalar as the Python value (its repr reads 1.5, not np.float64(1.5))."""
    return value.item() if isinstance(value, np.generic) else value


def _preview(values: pd.Series, mask: np.ndarray) -> str:
    """'rows 3 ('abc'), 7 (nan) and 2 more': index labels and values of the first offending rows."""
    positions = np.flatnonzero(mask)
    shown = ", ".join(f"{values.index[p]} ({_plain(values.iloc[p])!r})" for p in positions[:MAX_SHOWN])
    more = f" and {len(positions) - MAX_SHOWN} more" if len(positions) > MAX_SHOWN else ""
    return f"rows {shown}{more}"


def require_columns(df: pd.DataFrame, columns: list[str], source: str,
                    error: type[CziiError] = SubmissionError) -> None:
    """Raise when any of ``columns`` is missing."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(
            f"{source}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns)) or 'none'}); "
            f"it needs {', '.join(columns)}"
        )


def require_finite(df: pd.DataFrame, columns: list[str], source: str,
                   error: type[CziiError] = SubmissionError) -> None:
    """Raise when a value of ``columns`` is not a finite number (text, empty, nan, inf)."""
    for column in columns:
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            raise error(
                f"{source}: column {column!r} has {int(bad.sum())} value(s) that are not finite numbers at "
                f"{_preview(df[column], bad)}; fix or drop those rows"
            )


def require_known_types(df: pd.DataFrame, source: str, error: type[CziiError] = SubmissionError,
                        particles: ParticleSet = CZII) -> None:
    """Raise when ``particle_type`` holds a name outside ``particles``."""
    bad = ~df["particle_type"].isin(particles.names).to_numpy()
    if bad.any():
        unknown = sorted(map(str, pd.unique(df["particle_type"][bad])))
        raise error(
            f"{source}: unknown particle_type value(s) {', '.join(map(repr, unknown))} in {int(bad.sum())} row(s) "
            f"({_preview(df['particle_type'], bad)}); valid types are {', '.join(particles.names)}; rename or drop them"
        )


def require_experiment_names(df: pd.DataFrame, source: str, error: type[CziiError] = SubmissionError) -> None:
    """Raise when an experiment (run) name is missing or blank."""
    names = df["experiment"]
    bad = (names.isna() | (names.astype(str).str.strip() == "")).to_numpy()
    if bad.any():
        raise error(
            f"{source}: column 'experiment' is empty in {int(bad.sum())} row(s) ({_preview(names, bad)}); "
            "every row needs the run name, e.g. TS_5_4"
        )


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
            f"{_preview(df['id'], not_integer)}; ids must be integers, e.g. 0..n-1"
        )
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise SubmissionError(
            f"{source}: column 'id' repeats values in {int(duplicated.sum())} rows ({_preview(df['id'], duplicated)}); "
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


def solution_from_picks(picks: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth picks -> a frame shaped like the Kaggle solution (id + submission columns, pick order kept)."""
    require_columns(picks, PICK_COLUMNS, "picks", DataError)
    out = picks[PICK_COLUMNS].astype({"x": float, "y": float, "z": float}).reset_index(drop=True)
    out.insert(0, "id", np.arange(len(out), dtype=np.int64))
    return out


# --------------------------------------------------------------------------- files
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


def _read_csv(path: Path, what: str, error: type[CziiError]) -> pd.DataFrame:
    if not path.is_file():
        raise error(f"{what} file {path} does not exist; check the path")
    try:
        return pd.read_csv(path, dtype={"experiment": str, "particle_type": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise error(f"{path} is not a readable CSV {what} ({type(e).__name__}: {e}); "
                    "it must have a header line and comma-separated rows") from e


def read_submission(path: str | os.PathLike, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Read and validate a submission CSV; returns typed columns in the standard order."""
    path = Path(path)
    df = _read_csv(path, "submission", SubmissionError)
    validate_submission(df, source=str(path), particles=particles)
    return df[SUBMISSION_COLUMNS].astype(
        {"id": np.int64, "experiment": str, "particle_type": str, "x": float, "y": float, "z": float}
    )


def read_solution(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ground-truth CSV (Kaggle solution layout); its values are checked by ``czii_kit.metric``."""
    df = _read_csv(Path(path), "solution", DataError)
    require_columns(df, PICK_COLUMNS, str(path), DataError)
    return df


def select_runs(solution: pd.DataFrame, runs: list[str] | None, source: str) -> pd.DataFrame:
    """Keep the requested runs of a ground-truth table (the metric then ignores other submission runs)."""
    if not runs:
        return solution
    unknown = sorted(set(runs) - set(solution["experiment"]))
    if unknown:
        have = ", ".join(sorted(map(str, solution["experiment"].unique()))) or "none"
        raise DataError(f"run(s) {', '.join(unknown)} have no ground truth in {source} (runs there: {have}); "
                        "check --runs")
    return solution[solution["experiment"].isin(runs)]
