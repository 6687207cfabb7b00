"""The six CZII particle classes, the voxel spacing, and the one unit convention.

Competition constants (radius in Å, metric weight) live here and nowhere else;
tunable per-class numbers (thresholds, target sizes, loss weights) live in
``configs/base.yaml`` keyed by the class names below.

Unit convention (used by every module, never re-derived):
    arrays are indexed (z, y, x) in voxels; picks and submissions are (x, y, z) in Å;
    voxel index = Å / VOXEL_SPACING, i.e. the centre of voxel i sits at i * VOXEL_SPACING Å.
This is the convention of the competition's picks (copick locations divided by
the spacing give array indices), with no half-voxel shift.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOXEL_SPACING = 10.012444  # Å per voxel at level 0 (the "VoxelSpacing10.000" folder)
BETA = 4  # F-beta of the metric
DISTANCE_MULTIPLIER = 0.5  # hit radius = 0.5 x particle radius


@dataclass(frozen=True)
class Particle:
    name: str
    radius: float  # Å
    weight: float  # metric weight

    @property
    def radius_vox(self) -> float:
        return self.radius / VOXEL_SPACING

    @property
    def hit_radius(self) -> float:
        """Å distance within which a prediction counts as a hit."""
        return self.radius * DISTANCE_MULTIPLIER


PARTICLES: tuple[Particle, ...] = (
    Particle("apo-ferritin", 60.0, 1.0),
    Particle("beta-amylase", 65.0, 0.0),
    Particle("beta-galactosidase", 90.0, 2.0),
    Particle("ribosome", 150.0, 1.0),
    Particle("thyroglobulin", 130.0, 2.0),
    Particle("virus-like-particle", 135.0, 1.0),
)
CLASS_NAMES: tuple[str, ...] = tuple(p.name for p in PARTICLES)
BY_NAME: dict[str, Particle] = {p.name: p for p in PARTICLES}
RADIUS: dict[str, float] = {p.name: p.radius for p in PARTICLES}
WEIGHT: dict[str, float] = {p.name: p.weight for p in PARTICLES}
# Classes the seed reports found hard (low contrast / confusable); used for offsets and sampling bias.
HARD_CLASSES: tuple[str, ...] = ("beta-amylase", "beta-galactosidase", "thyroglobulin")


def particle(name: str) -> Particle:
    """Look a class up by name, with an error that lists the valid names."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown particle type {name!r}; expected one of {', '.join(CLASS_NAMES)}"
        ) from None


def angstrom_to_voxel(xyz_angstrom, spacing: float = VOXEL_SPACING) -> np.ndarray:
    """(N, 3) picks as (x, y, z) Å -> (N, 3) float voxel coordinates as (z, y, x)."""
    xyz = np.asarray(xyz_angstrom, dtype=np.float64).reshape(-1, 3)
    return xyz[:, ::-1] / spacing


def voxel_to_angstrom(zyx_voxel, spacing: float = VOXEL_SPACING) -> np.ndarray:
    """(N, 3) voxel coordinates as (z, y, x) -> (N, 3) positions as (x, y, z) Å."""
    zyx = np.asarray(zyx_voxel, dtype=np.float64).reshape(-1, 3)
    return zyx[:, ::-1] * spacing
