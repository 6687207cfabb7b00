"""Augmentations that respect the missing wedge: z is never mixed into y-x.

Allowed geometry: a flip on any of the three axes, then a rot90 (k = 0..3) in the y-x plane.
Rotations by an odd k swap Y and X, so they need a square y-x patch; ``apply_geometry`` raises
ConfigError otherwise (``PatchDataset`` checks this up front). The same ``Geometry`` is applied to the
image and to its targets, and ``transform_points`` maps voxel coordinates through it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from czii_kit.config import dataclass_from_mapping
from czii_kit.errors import ConfigError

AXES = ("z", "y", "x")


@dataclass(frozen=True)
class Geometry:
    """Flips (applied first) then ``rot90_k`` quarter turns from the y axis towards the x axis."""

    flip_z: bool = False
    flip_y: bool = False
    flip_x: bool = False
    rot90_k: int = 0

    def __post_init__(self) -> None:
        if self.rot90_k not in range(4):
            raise ConfigError(f"rot90_k must be 0..3, got {self.rot90_k!r}")


def _check_flip_axes(flips: Sequence[str]) -> tuple[str, ...]:
    if isinstance(flips, str):
        raise ConfigError(f"flips must be a list of axis names like ['z', 'y', 'x'], got the string {flips!r}")
    unknown = [a for a in flips if a not in AXES]
    if unknown:
        raise ConfigError(f"unknown flip axis {unknown}; use a subset of {list(AXES)}")
    return tuple(flips)


def random_geometry(rng: np.random.Generator, flips: Sequence[str] = AXES, rot90_xy: bool = True) -> Geometry:
    """Each allowed axis flipped with probability 1/2; k uniform in 0..3 when ``rot90_xy``."""
    allowed = _check_flip_axes(flips)
    flipped = {a: bool(rng.random() < 0.5) if a in allowed else False for a in AXES}
    k = int(rng.integers(4)) if rot90_xy else 0
    return Geometry(flipped["z"], flipped["y"], flipped["x"], k)


def apply_geometry(arr: np.ndarray, g: Geometry) -> np.ndarray:
    """Contiguous copy of ``arr`` (..., Z, Y, X) flipped and rotated by ``g``."""
    if g.rot90_k % 2 and arr.shape[-1] != arr.shape[-2]:
        raise ConfigError(
            f"rot90 by {g.rot90_k} of a non-square y-x patch {arr.shape[-3:]} would change its shape; "
            "use a patch with Y == X or set augment.rot90_xy: false"
        )
    steps = [-1 if f else 1 for f in (g.flip_z, g.flip_y, g.flip_x)]
    flipped = arr[(..., *(slice(None, None, s) for s in steps))]
    return np.rot90(flipped, g.rot90_k, axes=(-2, -1)).copy()


def transform_points(points_zyx, shape: Sequence[int], g: Geometry) -> np.ndarray:
    """Where voxel coordinates (N, 3) of a (Z, Y, X) array land after ``apply_geometry(arr, g)``."""
    pts = np.array(points_zyx, dtype=np.float64).reshape(-1, 3)
    size = np.asarray(shape[-3:], dtype=np.float64)
    for axis, flip in enumerate((g.flip_z, g.flip_y, g.flip_x)):
        if flip:
            pts[:, axis] = size[axis] - 1 - pts[:, axis]
    for _ in range(g.rot90_k):  # np.rot90 maps (y, x) of a (Y, X) plane to (X - 1 - x, y)
        pts[:, 1], pts[:, 2] = size[2] - 1 - pts[:, 2], pts[:, 1].copy()
        size[1], size[2] = size[2], size[1]
    return pts


def random_intensity(img: np.ndarray, rng: np.random.Generator, scale: float = 0.1, shift: float = 0.1,
                     noise: float = 0.05) -> np.ndarray:
    """img x U(1-scale, 1+scale) + U(-shift, shift) + N(0, noise) per voxel; inputs have unit std."""
    gain = 1.0 + rng.uniform(-scale, scale)
    offset = rng.uniform(-shift, shift)
    out = np.asarray(img, dtype=np.float32) * np.float32(gain)
    out += np.float32(offset)
    if noise > 0:  # torch draws normals ~2x faster than numpy; seeded from rng so results stay reproducible
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        out += torch.randn(out.shape, generator=generator).mul_(noise).numpy()
    return out


def mixup(img_a: np.ndarray, tgt_a: np.ndarray, img_b: np.ndarray, tgt_b: np.ndarray,
          lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Convex blend ``lam * a + (1 - lam) * b`` of two images and of their targets."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mixup lam must be in [0, 1], got {lam}")
    if img_a.shape != img_b.shape or tgt_a.shape != tgt_b.shape:
        raise ValueError(f"mixup needs equal shapes, got images {img_a.shape}/{img_b.shape} "
                         f"and targets {tgt_a.shape}/{tgt_b.shape}")
    return _blend(img_a, img_b, lam), _blend(tgt_a, tgt_b, lam)


def _blend(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    out = a * np.float32(lam)  # float32 scalars keep float32 arrays float32
    out += b * np.float32(1.0 - lam)
    return out


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings; ``mixup`` is the per-sample probability, lam ~ Beta(alpha, alpha)."""

    flips: tuple[str, ...] = AXES
    rot90_xy: bool = True
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise: float = 0.05
    mixup: float = 0.0
    mixup_alpha: float = 0.4

    def __post_init__(self) -> None:
        object.__setattr__(self, "flips", _check_flip_axes(self.flips))
        for name in ("intensity_scale", "intensity_shift", "noise"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"augment.mixup is a probability and must be in [0, 1], got {self.mixup!r}")
        if not self.mixup_alpha > 0:
            raise ConfigError(f"augment.mixup_alpha must be > 0, got {self.mixup_alpha!r}")

    @classmethod
    def from_config(cls, config: Mapping) -> AugmentConfig:
        """Build from a plain dict; missing keys take the defaults above, unknown keys are errors."""
        return dataclass_from_mapping(cls, config, "augment")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (validation, debugging)."""
        return cls(flips=(), rot90_xy=False, intensity_scale=0.0, intensity_shift=0.0, noise=0.0, mixup=0.0)
