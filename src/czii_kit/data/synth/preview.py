"""One PNG with every reconstruction of a run side by side at the same slice, picks overlaid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from czii_kit.particles import CZII, ParticleSet
from czii_kit.viz import busiest_slice, class_colors, picks_in_slice, save_figure


def save_recons_preview(path: str | Path, volumes: dict[str, np.ndarray], picks: pd.DataFrame,
                        z: int | None = None, title: str = "", panel_inches: float = 4.0, dpi: int = 72,
                        particles: ParticleSet = CZII) -> Path:
    """A 2 x 2 (or 1 x n) grid of slice z of each volume (1-99 % grey levels), picks as circles."""
    names = list(volumes)
    depth = next(iter(volumes.values())).shape[0]
    z = busiest_slice(picks, depth, particles=particles) if z is None else int(z)
    colors = class_colors(particles)
    cols = 2 if len(names) == 4 else len(names)
    rows = int(np.ceil(len(names) / cols))
    fig = Figure(figsize=(panel_inches * cols, panel_inches * rows + 0.6), dpi=dpi)
    cut = picks_in_slice(picks, z, particles=particles)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = volumes[name][z]
        lo, hi = np.percentile(image, [1, 99])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        for p in cut.itertuples():
            ax.add_patch(Circle((p.x, p.y), p.radius, fill=False, lw=1.0, color=colors[p.particle_type]))
        ax.set_title(f"{name} (std {volumes[name].std():.1e})", fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=c, marker="o", ls="", mfc="none", label=n) for n, c in colors.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{title} z = {z}".strip(), fontsize=10)
    return save_figure(fig, path)
