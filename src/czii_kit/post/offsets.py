"""Extra candidates around detections of hard classes (a seed report's recall trick).

With F-beta 4 a false positive costs far less than a missed particle, so a detection whose
centre is a bit off gets neighbours at small offsets, one of which may fall inside the hit
radius. For each detection of a chosen class with radius R, 14 candidates are proposed:

* 6 at ``primary_frac * R`` along +x, -x, +y, -y, +z, -z;
* 8 at ``diagonal_frac * R`` along the diagonals (+-1, +-1, +-1) / sqrt(3)
  (so each lies ``diagonal_frac * R`` from its source).

A candidate is kept only if no existing detection of the same class and experiment other
than its source lies within ``min_spacing_frac * R`` of it: that neighbourhood is already
covered by another detection. 0.5 (``DISTANCE_MULTIPLIER``, the hit-radius fraction, the value in
configs/base.yaml) drops exactly the candidates that sit inside another detection's hit radius.
New candidates are not checked against each other: each stays within
max(primary_frac, diagonal_frac) * R (0.116 R in configs/base.yaml) of its own source.

New rows get ``score = source score * score_factor`` (0.9 in configs/base.yaml: they rank just below
their source, so a threshold sweep removes a weak source's offsets first) and
``source = "offset"``; the input rows get ``source = "peak"`` unless they already have one.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from czii_kit.errors import ConfigError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.post.merging import check_detections, class_groups
from czii_kit.tables import XYZ

def offset_vectors(primary: float, diagonal: float) -> np.ndarray:
    """(14, 3) (x, y, z) offsets: +-x, +-y, +-z at ``primary``, then the 8 diagonals at ``diagonal``."""
    axes = np.concatenate([np.eye(3), -np.eye(3)])[[0, 3, 1, 4, 2, 5]]
    diagonals = np.array(list(itertools.product((1.0, -1.0), repeat=3))) / np.sqrt(3.0)
    return np.concatenate([primary * axes, diagonal * diagonals])


def _check_classes(classes: Sequence[str], particles: ParticleSet) -> None:
    unknown = [name for name in classes if name not in particles]
    if unknown:
        raise ConfigError(
            f"offsets.classes has unknown particle type(s) {', '.join(unknown)}; valid: {', '.join(particles.names)}"
        )


def _unblocked(xyz: np.ndarray, candidates: np.ndarray, source: np.ndarray, min_spacing: float) -> np.ndarray:
    """Mask of candidates with no detection except their source within ``min_spacing``.

    The two nearest detections suffice: if the source is not among them, the nearest is
    another detection closer than the source; if it is, the other one is the nearest rival.
    """
    distance, index = cKDTree(xyz).query(candidates, k=2, distance_upper_bound=min_spacing)
    blocked = np.isfinite(distance) & (index != source[:, None])
    return ~blocked.any(axis=1)


def add_hard_particle_offsets(df: pd.DataFrame, *, classes: Sequence[str], primary_frac: float,
                              diagonal_frac: float, min_spacing_frac: float, score_factor: float,
                              particles: ParticleSet = CZII) -> pd.DataFrame:
    """The detections plus their offset candidates (appended after them), with a ``source`` column."""
    check_detections(df)
    _check_classes(classes, particles)
    original = df.assign(source=df["source"] if "source" in df.columns else "peak")
    scores = df["score"].to_numpy(dtype=np.float64)
    all_xyz = df[XYZ].to_numpy(dtype=np.float64)
    new_rows = []
    for name, rows in class_groups(df):
        if name not in classes:
            continue
        radius = particles[name].radius
        steps = offset_vectors(primary_frac * radius, diagonal_frac * radius)
        xyz = all_xyz[rows]
        candidates = (xyz[:, None, :] + steps[None]).reshape(-1, 3)
        source = np.repeat(np.arange(len(rows)), len(steps))
        keep = _unblocked(xyz, candidates, source, min_spacing_frac * radius)
        new_rows.append(pd.DataFrame({
            "experiment": df["experiment"].iloc[rows[source[keep]]].to_numpy(),
            "particle_type": name,
            "x": candidates[keep, 0], "y": candidates[keep, 1], "z": candidates[keep, 2],
            "score": scores[rows[source[keep]]] * score_factor,
            "source": "offset",
        }))
    return pd.concat([original, *new_rows], ignore_index=True)
