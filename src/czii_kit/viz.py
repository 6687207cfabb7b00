"""Quick-look PNGs: a tomogram slice with its picks, and training curves.

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
from czii_kit.particles import CLASS_NAMES, RADIUS, VOXEL_SPACING, angstrom_to_voxel
from czii_kit.utils.atomic import atomic_path

CLASS_COLORS = dict(zip(CLASS_NAMES, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2")))


def picks_in_slice(picks: pd.DataFrame, z: float, spacing: float = VOXEL_SPACING) -> pd.DataFrame:
    """Picks whose sphere cuts slice z: their position ``row`` in ``picks``, particle_type, x, y (voxels) and the
    cross-section radius (voxels)."""
    zyx = angstrom_to_voxel(picks[["x", "y", "z"]].to_numpy(), spacing)
    radius = picks["particle_type"].map(RADIUS).to_numpy(dtype=float) / spacing
    dz = zyx[:, 0] - z
    cut = np.abs(dz) < radius
    return pd.DataFrame({"row": np.flatnonzero(cut), "particle_type": picks["particle_type"].to_numpy()[cut],
                         "x": zyx[cut, 2], "y": zyx[cut, 1], "radius": np.sqrt(radius[cut] ** 2 - dz[cut] ** 2)})


def busiest_slice(picks: pd.DataFrame, depth: int, spacing: float = VOXEL_SPACING) -> int:
    """The z in [0, depth) that cuts the most picks (ties: the lowest z); the middle if there are none."""
    if picks is None or picks.empty:
        return depth // 2
    counts = [len(picks_in_slice(picks, z, spacing)) for z in range(depth)]
    return int(np.argmax(counts))


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def save_slice_with_picks(path: str | Path, volume: np.ndarray, picks: pd.DataFrame | None = None,
                          z: int | None = None, predictions: pd.DataFrame | None = None, title: str = "") -> Path:
    """PNG of slice z (default: the one cutting most picks): picks as circles of their cross-section
    at that slice, predictions (within a particle radius of the slice) as crosses, one colour per class."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise DataError(f"volume has shape {volume.shape}; expected a 3-D (z, y, x) array")
    z = busiest_slice(picks, volume.shape[0]) if z is None else int(z)
    if not 0 <= z < volume.shape[0]:
        raise DataError(f"slice z={z} is outside the volume (depth {volume.shape[0]}); pick 0..{volume.shape[0] - 1}")
    image = volume[z]
    lo, hi = np.percentile(image, [1, 99])
    fig = Figure(figsize=(8, 8 * image.shape[0] / image.shape[1]), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if picks is not None:
        for row in picks_in_slice(picks, z).itertuples():
            ax.add_patch(Circle((row.x, row.y), row.radius, fill=False, lw=1.5, ec=CLASS_COLORS[row.particle_type]))
    handles = [Line2D([], [], ls="none", marker="o", mfc="none", ms=9, color=CLASS_COLORS[c], label=c)
               for c in CLASS_NAMES]
    if predictions is not None and not predictions.empty:
        near = picks_in_slice(predictions, z)
        ax.scatter(near["x"], near["y"], marker="x", s=40, linewidths=1.5,
                   c=[CLASS_COLORS[c] for c in near["particle_type"]])
        handles.append(Line2D([], [], ls="none", marker="x", color="black", label="prediction"))
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_xlabel("x (voxels)")
    ax.set_ylabel("y (voxels)")
    ax.set_title(f"{title}  (z = {z})" if title else f"z = {z}")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


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
    return _save(fig, path)
