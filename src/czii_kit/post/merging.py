"""Fuse detections that belong to one particle: radius-scaled proximity merging or DBSCAN.

Both work per (experiment, particle_type), never across tomograms or classes, with
distances in Å scaled by the class radius, and collapse each group of rows into one row:
position = (weighted) mean of the members, score = max of the members, every other column
(e.g. ``source``) taken from the highest-scoring member.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd

from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.post.peaks import class_value, proximity_components
from czii_kit.tables import DETECTION_COLUMNS, XYZ

GroupLabeller = Callable[[np.ndarray, str], np.ndarray]  # (xyz of one group, class) -> label per row, -1 drops


def check_detections(df: pd.DataFrame) -> None:
    missing = [c for c in DETECTION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"detections lack column(s) {', '.join(missing)}; expected {', '.join(DETECTION_COLUMNS)} "
            "(as returned by find_peaks)"
        )


def check_positive(value: float, key: str) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def class_groups(df: pd.DataFrame) -> Iterator[tuple[str, np.ndarray]]:
    """(particle_type, positional row indices) of every (experiment, particle_type) group."""
    for (_, name), rows in df.groupby(["experiment", "particle_type"], sort=True).indices.items():
        yield name, rows


def label_groups(df: pd.DataFrame, labeller: GroupLabeller) -> np.ndarray:
    """Cluster label per row, unique across groups; -1 marks rows to drop."""
    labels = np.full(len(df), -1, dtype=np.int64)
    xyz = df[XYZ].to_numpy(dtype=np.float64)
    next_label = 0
    for name, rows in class_groups(df):
        local = np.asarray(labeller(xyz[rows], name))
        kept = local >= 0
        labels[rows[kept]] = local[kept] + next_label
        next_label += int(local.max()) + 1 if kept.any() else 0
    return labels


def collapse_groups(df: pd.DataFrame, labels: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    """One row per label >= 0: ``weights``-averaged position, max score, other columns of the best member."""
    rows = np.flatnonzero(labels >= 0)
    score = df["score"].to_numpy(dtype=np.float64)[rows]
    member = rows[np.lexsort((-score, labels[rows]))]  # grouped by label, best score first
    _, first, group = np.unique(labels[member], return_index=True, return_inverse=True)
    merged = df.iloc[member[first]].reset_index(drop=True)
    weight = weights[member]
    total = np.bincount(group, weight, minlength=len(first))
    for axis in XYZ:
        coordinate = df[axis].to_numpy(dtype=np.float64)[member]
        merged[axis] = np.bincount(group, weight * coordinate, minlength=len(first)) / total
    return merged


def merge_close(df: pd.DataFrame, *, radius_frac: float, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Collapse chains of detections at most ``radius_frac`` x class radius apart into their mean position."""
    check_detections(df)
    check_positive(radius_frac, "merge.radius_frac")

    def components(xyz: np.ndarray, name: str) -> np.ndarray:
        return proximity_components(xyz, radius_frac * particles[name].radius)

    return collapse_groups(df, label_groups(df, components), np.ones(len(df)))


def dbscan_merge(df: pd.DataFrame, *, eps_frac: float | Mapping[str, float],
                 min_samples: int | Mapping[str, int], particles: ParticleSet = CZII) -> pd.DataFrame:
    """DBSCAN per class (eps = eps_frac x radius, Å); clusters -> score-weighted centroid, max score.

    Points DBSCAN calls noise (possible only when min_samples > 1) are dropped. Weights are
    the scores, floored at the smallest positive float so an all-zero cluster gets its plain mean.
    """
    from sklearn.cluster import DBSCAN  # sklearn costs ~1 s to import and only this step needs it

    check_detections(df)

    def clusters(xyz: np.ndarray, name: str) -> np.ndarray:
        eps = class_value(eps_frac, name, "dbscan.eps_frac")
        samples = class_value(min_samples, name, "dbscan.min_samples")
        check_positive(eps, "dbscan.eps_frac")
        if not (isinstance(samples, int) and samples >= 1):
            raise ConfigError(f"dbscan.min_samples must be an integer >= 1, got {samples!r} for {name}")
        return DBSCAN(eps=eps * particles[name].radius, min_samples=samples).fit_predict(xyz)

    weights = np.maximum(df["score"].to_numpy(dtype=np.float64), np.finfo(np.float64).tiny)
    return collapse_groups(df, label_groups(df, clusters), weights)
