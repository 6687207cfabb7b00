"""The symmetries a tomogram allows: flips on any axis, then quarter turns in the y-x plane.

One type for training augmentation (NumPy patches) and test-time augmentation (torch window
batches), so both agree on what a flip or a rotation means. Rotations never mix z: the missing
wedge makes tomograms anisotropic along z, so only y-x rotations are symmetries. A transform
acts on the last three axes (..., Z, Y, X) of a NumPy array or a torch tensor; odd quarter
turns swap Y and X, so they need a square y-x extent.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from czii_kit.errors import ConfigError

AXIS_LETTERS = "zyx"  # spatial axis 0, 1, 2 of a (..., Z, Y, X) array


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _flip(x, axes: Sequence[int]):
    """Flip the listed trailing spatial axes of a NumPy array or torch tensor."""
    dims = [x.ndim - 3 + a for a in axes]
    return x.flip(dims) if _is_torch(x) else np.flip(x, dims)


def _rot90(x, k: int):
    """k quarter turns from the y axis towards the x axis, on the last two axes."""
    dims = (x.ndim - 2, x.ndim - 1)
    return x.rot90(k, dims) if _is_torch(x) else np.rot90(x, k, axes=dims)


@dataclass(frozen=True)
class Transform:
    """Flip the listed spatial axes (0=z, 1=y, 2=x), then rotate y->x by ``rot90_k`` quarter turns."""

    flips: tuple[int, ...] = ()
    rot90_k: int = 0

    def __post_init__(self) -> None:
        flips = tuple(sorted(set(self.flips)))
        if any(axis not in (0, 1, 2) for axis in flips):
            raise ConfigError(f"flip axes must be among 0 (z), 1 (y), 2 (x); got {self.flips}")
        if not isinstance(self.rot90_k, (int, np.integer)):
            raise ConfigError(f"rot90_k must be an integer number of quarter turns, got {self.rot90_k!r}")
        object.__setattr__(self, "flips", flips)
        object.__setattr__(self, "rot90_k", int(self.rot90_k) % 4)

    @property
    def name(self) -> str:
        """The token that parses back to this transform, e.g. 'id', 'zy', 'x+rot90'."""
        parts = ["".join(AXIS_LETTERS[a] for a in self.flips)] if self.flips else []
        if self.rot90_k:
            parts.append(f"rot{90 * self.rot90_k}")
        return "+".join(parts) or "id"

    @property
    def is_identity(self) -> bool:
        return not self.flips and not self.rot90_k

    @property
    def swaps_yx(self) -> bool:
        """True when the transform needs equal y and x sizes (odd quarter turns)."""
        return self.rot90_k % 2 == 1

    def check_shape(self, shape: Sequence[int], what: str = "array") -> None:
        if self.swaps_yx and shape[-1] != shape[-2]:
            raise ConfigError(
                f"{self.name} rotates y and x, which needs a square y-x {what}, but its (z, y, x) shape is "
                f"{tuple(shape[-3:])}; use Y == X, or no 90/270-degree rotations "
                "(augment.rot90_xy: false, or --tta flips)"
            )

    def apply(self, x):
        """Transform the last three axes (a view where the array module allows it)."""
        if self.flips:
            x = _flip(x, self.flips)
        if self.rot90_k:
            x = _rot90(x, self.rot90_k)
        return x

    def invert(self, y):
        """Undo ``apply`` (on the same or a strided output grid)."""
        if self.rot90_k:
            y = _rot90(y, -self.rot90_k)
        if self.flips:
            y = _flip(y, self.flips)
        return y

    def transform_points(self, points_zyx, shape: Sequence[int]) -> np.ndarray:
        """Where voxel coordinates (N, 3) of a (Z, Y, X) array land after ``apply``."""
        pts = np.array(points_zyx, dtype=np.float64).reshape(-1, 3)
        size = np.asarray(shape[-3:], dtype=np.float64)
        for axis in self.flips:
            pts[:, axis] = size[axis] - 1 - pts[:, axis]
        for _ in range(self.rot90_k):  # a quarter turn maps (y, x) of a (Y, X) plane to (X - 1 - x, y)
            pts[:, 1], pts[:, 2] = size[2] - 1 - pts[:, 2], pts[:, 1].copy()
            size[1], size[2] = size[2], size[1]
        return pts


IDENTITY = Transform()


def check_flip_axes(flips: Sequence[str]) -> tuple[int, ...]:
    """Axis letters from a config (e.g. ['z', 'y', 'x']) as axis indices."""
    if isinstance(flips, str):
        raise ConfigError(f"flips must be a list of axis names like ['z', 'y', 'x'], got the string {flips!r}")
    unknown = [a for a in flips if a not in AXIS_LETTERS]
    if unknown:
        raise ConfigError(f"unknown flip axis {unknown}; use a subset of {list(AXIS_LETTERS)}")
    return tuple(AXIS_LETTERS.index(a) for a in flips)


def random_transform(rng: np.random.Generator, flips: Sequence[str] = tuple(AXIS_LETTERS),
                     rot90_xy: bool = True) -> Transform:
    """Each allowed axis flipped with probability 1/2 (z, y, x order of draws); k uniform in 0..3 when ``rot90_xy``."""
    allowed = check_flip_axes(flips)
    flipped = [axis for axis in range(3) if (bool(rng.random() < 0.5) if axis in allowed else False)]
    k = int(rng.integers(4)) if rot90_xy else 0
    return Transform(tuple(flipped), k)
