"""Augmentations that respect the missing wedge: z is never mixed into y-x.

Allowed geometry (``czii_kit.data.geometry.Transform``, shared with test-time augmentation): a flip on
any of the three axes, then a rot90 (k = 0..3) in the y-x plane. Rotations by an odd k swap Y and X, so
they need a square y-x patch; ``apply_geometry`` raises ConfigError otherwise (``PatchDataset`` checks
this up front). The same transform is applied to the image and to its targets, and
``Transform.transform_points`` maps voxel coordinates through it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from czii_kit.config import dataclass_from_mapping
from czii_kit.data.geometry import AXIS_LETTERS, Transform, check_flip_axes
from czii_kit.errors import ConfigError



def apply_geometry(arr: np.ndarray, transform: Transform) -> np.ndarray:
    """Contiguous copy of ``arr`` (..., Z, Y, X) flipped and rotated by ``transform``."""
    transform.check_shape(arr.shape, "patch")
    return np.array(transform.apply(arr), order="C")  # always a copy: crops are views of the volume


@dataclass(frozen=True)
class Affine:
    """A rotation by ``angle_deg`` about the z axis and an isotropic zoom ``scale``, about a patch's centre.

    Free-angle rotations about z keep the missing wedge where it is (it is symmetric about the beam axis); small
    zooms teach tolerance to size. ``crop`` resamples the patch from the volume (trilinear, reflected at the
    edges) and ``points`` maps voxel coordinates the same way, so targets rendered at the moved points stay exact.
    """

    angle_deg: float = 0.0
    scale: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self.angle_deg == 0.0 and self.scale == 1.0

    def _matrix(self) -> np.ndarray:
        """Volume offset from the centre -> patch offset from the centre, (z, y, x)."""
        a = np.deg2rad(self.angle_deg)
        rotation = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
        return self.scale * rotation

    def points(self, points_zyx, origin, patch_size) -> np.ndarray:
        """Volume voxel coordinates (N, 3) -> coordinates in the resampled patch whose unrotated origin is ``origin``."""
        centre = (np.asarray(patch_size, dtype=np.float64) - 1) / 2
        offset = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3) - np.asarray(origin) - centre
        return offset @ self._matrix().T + centre

    def crop(self, volume: np.ndarray, origin, patch_size) -> np.ndarray:
        """The patch of ``patch_size`` the transform sees around the centre of the box at ``origin``."""
        from scipy.ndimage import affine_transform

        centre = (np.asarray(patch_size, dtype=np.float64) - 1) / 2
        inverse = np.linalg.inv(self._matrix())
        reach = np.abs(inverse) @ (centre + 1)  # half-extent in the volume the patch can touch
        middle = np.asarray(origin, dtype=np.float64) + centre
        lo = np.maximum(np.floor(middle - reach).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(middle + reach).astype(int) + 2, volume.shape)
        region = volume[tuple(slice(a, b) for a, b in zip(lo, hi))]
        offset = middle - lo - inverse @ centre  # patch index p reads region at inverse @ p + offset
        return affine_transform(region, inverse, offset=offset, output_shape=tuple(int(n) for n in patch_size),
                                order=1, mode="reflect").astype(np.float32, copy=False)


def random_affine(rng: np.random.Generator, rotate_z_deg: float, scale_jitter: float) -> Affine:
    """Angle ~ U(-rotate_z_deg, rotate_z_deg), scale ~ U(1 - scale_jitter, 1 + scale_jitter); identity when both are 0
    (and then no random number is drawn, so the other augmentations' draws do not move)."""
    if rotate_z_deg <= 0 and scale_jitter <= 0:
        return Affine()
    return Affine(float(rng.uniform(-rotate_z_deg, rotate_z_deg)), float(rng.uniform(1 - scale_jitter, 1 + scale_jitter)))


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

    flips: tuple[str, ...] = tuple(AXIS_LETTERS)
    rot90_xy: bool = True
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise: float = 0.05
    mixup: float = 0.0
    mixup_alpha: float = 0.4
    rotate_z: float = 0.0
    scale_jitter: float = 0.0

    def __post_init__(self) -> None:
        check_flip_axes(self.flips)
        object.__setattr__(self, "flips", tuple(self.flips))
        for name in ("intensity_scale", "intensity_shift", "noise"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"augment.mixup is a probability and must be in [0, 1], got {self.mixup!r}")
        if not self.mixup_alpha > 0:
            raise ConfigError(f"augment.mixup_alpha must be > 0, got {self.mixup_alpha!r}")
        if not 0.0 <= self.rotate_z <= 180.0:
            raise ConfigError(f"augment.rotate_z is a maximum angle in degrees, in [0, 180]; got {self.rotate_z!r}")
        if not 0.0 <= self.scale_jitter < 0.5:
            raise ConfigError(f"augment.scale_jitter is a fraction in [0, 0.5), got {self.scale_jitter!r}")

    @classmethod
    def from_config(cls, config: Mapping) -> AugmentConfig:
        """Build from a plain dict; missing keys take the defaults above, unknown keys are errors."""
        return dataclass_from_mapping(cls, config, "augment")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (validation, debugging)."""
        return cls(flips=(), rot90_xy=False, intensity_scale=0.0, intensity_shift=0.0, noise=0.0, mixup=0.0)
