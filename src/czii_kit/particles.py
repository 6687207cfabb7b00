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
    """Look a CZII class up by name, with an error that lists the valid names."""
    return CZII[name]


@dataclass(frozen=True)
class ParticleSet:
    """The classes a model predicts, in channel order, with their radius (Å) and metric weight.

    The six CZII classes (``CZII``) are the default and exact for the competition metric; a copick project
    brings its own (its ``pickable_objects``). A resolved config carries its set under ``classes`` (names in
    order, with ``radius`` and ``weight``), so checkpoints, evaluation and prediction all know it.
    """

    particles: tuple[Particle, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.particles]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a particle set needs distinct class names, got {names}")
        for p in self.particles:
            if not (np.isfinite(p.radius) and p.radius > 0 and np.isfinite(p.weight) and p.weight >= 0):
                raise ValueError(f"class {p.name!r}: radius must be > 0 Å and weight >= 0, got {p.radius}, {p.weight}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.particles)

    @property
    def radius(self) -> dict[str, float]:
        return {p.name: p.radius for p in self.particles}

    def __len__(self) -> int:
        return len(self.particles)

    def __iter__(self):
        return iter(self.particles)

    def __contains__(self, name) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> Particle:
        for p in self.particles:
            if p.name == name:
                return p
        raise KeyError(f"unknown particle type {name!r}; expected one of {', '.join(self.names)}")


    @classmethod
    def from_config(cls, cfg) -> ParticleSet:
        """The set a resolved config's ``classes`` section names, in its order; a CZII class may omit radius and
        weight (the competition's constants fill them in), any other class must give its radius."""
        out = []
        for name, entry in cfg["classes"].items():
            known = BY_NAME.get(name)
            radius = entry.get("radius", known.radius if known else None)
            if radius is None:
                raise KeyError(f"class {name!r} is not a CZII class and has no radius: give classes.{name}.radius (Å)")
            out.append(Particle(name, float(radius), float(entry.get("weight", known.weight if known else 1.0))))
        return cls(tuple(out))


CZII = ParticleSet(PARTICLES)


def angstrom_to_voxel(xyz_angstrom, spacing: float = VOXEL_SPACING) -> np.ndarray:
    """(N, 3) picks as (x, y, z) Å -> (N, 3) float voxel coordinates as (z, y, x)."""
    xyz = np.asarray(xyz_angstrom, dtype=np.float64).reshape(-1, 3)
    return xyz[:, ::-1] / spacing


def voxel_to_angstrom(zyx_voxel, spacing: float = VOXEL_SPACING) -> np.ndarray:
    """(N, 3) voxel coordinates as (z, y, x) -> (N, 3) positions as (x, y, z) Å."""
    zyx = np.asarray(zyx_voxel, dtype=np.float64).reshape(-1, 3)
    return zyx[:, ::-1] * spacing
