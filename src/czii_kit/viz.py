"""Quick-look PNGs: a tomogram slice with its picks or with hits and misses, training and F4 curves.

Uses matplotlib's Agg canvas through ``Figure`` directly (no pyplot, no global backend state,
bundled fonts only), and writes every file atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from czii_kit.errors import DataError
from czii_kit.metric import best_thresholds, match_hits
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet, angstrom_to_voxel
from czii_kit.utils.atomic import atomic_path

CURVE_GRID = np.round(np.arange(0.0, 1.0 + 1e-9, 0.01), 6)  # thresholds of the F4 curves
HIT, MISS, FALSE_POSITIVE = "#2ca02c", "#ff7f0e", "#d62728"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2", "#8c564b", "#7f7f7f", "#bcbd22",
           "#17becf")


def class_colors(particles: ParticleSet = CZII) -> dict[str, str]:
    """One colour per class, in class order (the CZII six keep their usual colours)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(particles.names)}


def picks_in_slice(picks: pd.DataFrame, z: float, spacing: float = VOXEL_SPACING,
                   particles: ParticleSet = CZII) -> pd.DataFrame:
    """Picks whose sphere cuts slice z: their position ``row`` in ``picks``, particle_type, x, y (voxels) and the
    cross-section radius (voxels)."""
    zyx = angstrom_to_voxel(picks[["x", "y", "z"]].to_numpy(), spacing)
    radius = picks["particle_type"].map(particles.radius).to_numpy(dtype=float) / spacing
    dz = zyx[:, 0] - z
    cut = np.abs(dz) < radius
    return pd.DataFrame({"row": np.flatnonzero(cut), "particle_type": picks["particle_type"].to_numpy()[cut],
                         "x": zyx[cut, 2], "y": zyx[cut, 1], "radius": np.sqrt(radius[cut] ** 2 - dz[cut] ** 2)})


def busiest_slice(picks: pd.DataFrame, depth: int, spacing: float = VOXEL_SPACING,
                  particles: ParticleSet = CZII) -> int:
    """The z in [0, depth) that cuts the most picks (ties: the lowest z); the middle if there are none."""
    if picks is None or picks.empty:
        return depth // 2
    counts = [len(picks_in_slice(picks, z, spacing, particles)) for z in range(depth)]
    return int(np.argmax(counts))


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a half-written picture never replaces a good one)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def save_curves(path: str | Path, df: pd.DataFrame, x: str, ys: list[str], title: str = "") -> Path:
    """PNG of columns ``ys`` against column ``x`` (e.g. losses and scores per epoch)."""
    missing = [c for c in [x, *ys] if c not in df.columns]
    if missing:
        raise DataError(f"cannot plot column(s) {', '.join(missing)}: the table has {', '.join(map(str, df.columns))}")
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    for y in ys:
        rows = df[[x, y]].dropna()
        ax.plot(rows[x], rows[y], marker="o" if len(rows) <= 30 else None, ms=3, label=y)
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_f4_curves(path: str | Path, solution: pd.DataFrame, candidates: pd.DataFrame, title: str,
                   particles: ParticleSet = CZII) -> Path:
    """Per-class F4 against a shared threshold grid (exact metric counts at each threshold)."""
    _, curve = best_thresholds(solution, candidates, CURVE_GRID, particles)
    wide = curve.pivot(index="threshold", columns="particle_type", values="f4").reset_index()
    return save_curves(path, wide, x="threshold", ys=[c for c in particles.names if c in wide.columns], title=title)


def save_hit_overlay(path: str | Path, volume: np.ndarray, solution: pd.DataFrame, predictions: pd.DataFrame,
                     z: int | None = None, title: str = "", spacing: float = VOXEL_SPACING,
                     particles: ParticleSet = CZII) -> Path:
    """Slice z with ground truth circles (green hit, orange missed) and predictions (green hit, red false positive)."""
    solution, predictions = solution.reset_index(drop=True), predictions.reset_index(drop=True)
    ref_hit, pred_hit = match_hits(solution, predictions, particles)
    z = busiest_slice(solution, volume.shape[0], spacing, particles) if z is None else int(z)
    image = volume[z]
    lo, hi = np.percentile(image, [1, 99])
    fig = Figure(figsize=(8, 8 * image.shape[0] / image.shape[1]), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    for row in picks_in_slice(solution, z, spacing, particles).itertuples():
        ax.add_patch(Circle((row.x, row.y), row.radius, fill=False, lw=1.5, ec=HIT if ref_hit[row.row] else MISS))
    for row in picks_in_slice(predictions, z, spacing, particles).itertuples():
        ax.plot(row.x, row.y, marker="x", ms=7, mew=1.8, color=HIT if pred_hit[row.row] else FALSE_POSITIVE)
    handles = [Line2D([], [], ls="none", marker="o", mfc="none", ms=9, color=HIT, label="particle found"),
               Line2D([], [], ls="none", marker="o", mfc="none", ms=9, color=MISS, label="particle missed"),
               Line2D([], [], ls="none", marker="x", color=HIT, label="prediction: hit"),
               Line2D([], [], ls="none", marker="x", color=FALSE_POSITIVE, label="prediction: false positive")]
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_title(f"{title}  (z = {z})" if title else f"z = {z}")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return save_figure(fig, path)
