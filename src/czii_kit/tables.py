"""The bottom floor for tables: column names, the checks every table gets, and ground-truth (solution) I/O.

Picks, detections, solutions and submissions are pandas frames with (x, y, z) in Å. Their column names
and validators live here, below every reader and writer, so that ``data`` (readers), ``post``
(detections), ``metric`` (scoring) and ``submission`` (writing) share them without importing each other.
Every validation error names the source, the column and a few offending rows (index labels: for a file
read here, 0-based data rows, header not counted) and says how to fix them; callers pass the error type
that fits their input (``DataError`` for ground truth, ``SubmissionError`` for predictions).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit.errors import CziiError, DataError, SubmissionError
from czii_kit.particles import CZII, ParticleSet

XYZ = ["x", "y", "z"]  # Å coordinate columns of picks, detections and submissions
PICK_COLUMNS = ["experiment", "particle_type", *XYZ]  # picks and ground truth
DETECTION_COLUMNS = [*PICK_COLUMNS, "score"]  # what the peak finder, fusion and post-processing pass along
SUBMISSION_COLUMNS = ["id", *PICK_COLUMNS]  # Kaggle's submission (and solution) layout
MAX_SHOWN = 5  # offending rows quoted in an error message


# --------------------------------------------------------------------------- checks
def _plain(value):
    """A numpy scalar as the Python value (its repr reads 1.5, not np.float64(1.5))."""
    return value.item() if isinstance(value, np.generic) else value


def preview_rows(values: pd.Series, mask: np.ndarray) -> str:
    """'rows 3 ('abc'), 7 (nan) and 2 more': index labels and values of the first offending rows."""
    positions = np.flatnonzero(mask)
    shown = ", ".join(f"{values.index[p]} ({_plain(values.iloc[p])!r})" for p in positions[:MAX_SHOWN])
    more = f" and {len(positions) - MAX_SHOWN} more" if len(positions) > MAX_SHOWN else ""
    return f"rows {shown}{more}"


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str,
                    error: type[CziiError] = SubmissionError) -> None:
    """Raise when any of ``columns`` is missing."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(
            f"{source}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns)) or 'none'}); "
            f"it needs {', '.join(columns)}"
        )


def require_finite(df: pd.DataFrame, columns: Sequence[str], source: str,
                   error: type[CziiError] = SubmissionError) -> None:
    """Raise when a value of ``columns`` is not a finite number (text, empty, nan, inf)."""
    for column in columns:
        values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            raise error(
                f"{source}: column {column!r} has {int(bad.sum())} value(s) that are not finite numbers at "
                f"{preview_rows(df[column], bad)}; fix or drop those rows"
            )


def require_known_types(df: pd.DataFrame, source: str, error: type[CziiError] = SubmissionError,
                        particles: ParticleSet = CZII) -> None:
    """Raise when ``particle_type`` holds a name outside ``particles``."""
    bad = ~df["particle_type"].isin(particles.names).to_numpy()
    if bad.any():
        unknown = sorted(map(str, pd.unique(df["particle_type"][bad])))
        raise error(
            f"{source}: unknown particle_type value(s) {', '.join(map(repr, unknown))} in {int(bad.sum())} row(s) "
            f"({preview_rows(df['particle_type'], bad)}); valid types are {', '.join(particles.names)}; "
            "rename or drop them"
        )


def require_experiment_names(df: pd.DataFrame, source: str, error: type[CziiError] = SubmissionError) -> None:
    """Raise when an experiment (run) name is missing or blank."""
    names = df["experiment"]
    bad = (names.isna() | (names.astype(str).str.strip() == "")).to_numpy()
    if bad.any():
        raise error(
            f"{source}: column 'experiment' is empty in {int(bad.sum())} row(s) ({preview_rows(names, bad)}); "
            "every row needs the run name, e.g. TS_5_4"
        )


# --------------------------------------------------------------------------- ground truth
def solution_from_picks(picks: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth picks -> a frame shaped like the Kaggle solution (id + submission columns, pick order kept)."""
    require_columns(picks, PICK_COLUMNS, "picks", DataError)
    out = picks[PICK_COLUMNS].astype({"x": float, "y": float, "z": float}).reset_index(drop=True)
    out.insert(0, "id", np.arange(len(out), dtype=np.int64))
    return out


def read_table(path: str | os.PathLike, what: str, error: type[CziiError]) -> pd.DataFrame:
    """A CSV with a header line (experiment and particle_type read as text), or ``error`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} file {path} is a folder; give the CSV file itself")
    if not path.is_file():
        raise error(f"{what} file {path} does not exist; check the path")
    try:
        return pd.read_csv(path, dtype={"experiment": str, "particle_type": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise error(f"{path} is not a readable CSV {what} ({type(e).__name__}: {e}); "
                    "it must have a header line and comma-separated rows") from e


def read_solution(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ground-truth CSV (Kaggle solution layout); its values are checked by ``czii_kit.metric``."""
    df = read_table(path, "solution", DataError)
    require_columns(df, PICK_COLUMNS, str(path), DataError)
    return df


def solution_for_runs(solution: pd.DataFrame, runs: Sequence[str] | None, source: str) -> pd.DataFrame:
    """The rows of the requested runs of a ground-truth table (the metric then ignores other submission runs)."""
    if not runs:
        return solution
    unknown = sorted(set(runs) - set(solution["experiment"]))
    if unknown:
        have = ", ".join(sorted(map(str, solution["experiment"].unique()))) or "none"
        raise DataError(f"run(s) {', '.join(unknown)} have no ground truth in {source} (runs there: {have}); "
                        "check --runs")
    return solution[solution["experiment"].isin(list(runs))]
