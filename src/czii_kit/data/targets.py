"""Training targets: one soft heatmap per particle class, rendered around particle centres.

A target is float32 ``(C, ceil(Z/s), ceil(Y/s), ceil(X/s))`` in [0, 1]; channel = index into
the config's class list. At output stride ``s`` cell ``j`` covers full-res voxels ``s*j .. s*j+s-1`` and its
centre sits at full-res coordinate ``s*j + (s-1)/2`` (the peak finder uses the same convention).
Cell values are the continuous kernel evaluated at cell centres, so the kernel's value 1 at the
exact particle centre is hit exactly for integer positions at stride 1, and otherwise the peak
lands in the cell nearest the particle (the cell containing it). Overlaps of one class take the max.

Kernels (sizes relative to the particle radius from ``czii_kit.particles``):
    gaussian: exp(-d^2 / 2 sigma^2), sigma = sigma_frac x radius, cut to 0 beyond 3 sigma;
    sphere:   1 where d <= radius_frac x radius, else 0.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from czii_kit.config import dataclass_from_mapping
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet

TARGET_KINDS = ("gaussian", "sphere")
STRIDES = (1, 2)
GAUSSIAN_TRUNCATE = 3.0  # sigmas; cutting the tail keeps each render local (value there: 0.011)

PerClass = float | Mapping[str, float]


def per_class_values(value: PerClass, what: str, names: Sequence[str] = CZII.names) -> np.ndarray:
    """A scalar or a {class name: value} dict naming every class of ``names`` -> (C,) positive floats."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"{what}: unknown class name(s) {unknown}; expected names from {', '.join(names)}")
        missing = [n for n in names if n not in value]
        if missing:
            raise ConfigError(f"{what}: no value for {', '.join(missing)}; give every class or one scalar")
        values = [value[n] for n in names]
    else:
        values = [value] * len(names)
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: values must be numbers, got {value!r}") from None
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ConfigError(f"{what}: values must be positive finite numbers, got {value!r}")
    return arr


@dataclass(frozen=True)
class TargetSpec:
    """How to turn particle centres into heatmaps; sizes are fractions of each class's radius."""

    kind: str = "gaussian"
    sigma_frac: PerClass = 0.25
    radius_frac: PerClass = 0.5
    stride: int = 1
    spacing: float = VOXEL_SPACING  # Å per voxel of the tomograms (set from the data, not from config)
    particles: ParticleSet = CZII  # the classes, one target channel each (set from the data, not from config)

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"target kind {self.kind!r} is unknown; use one of {', '.join(TARGET_KINDS)}")
        if self.stride not in STRIDES:
            raise ConfigError(f"target stride {self.stride!r} is unsupported; use one of {STRIDES}")
        per_class_values(self.sigma_frac, "target sigma_frac", self.particles.names)
        per_class_values(self.radius_frac, "target radius_frac", self.particles.names)
        if not (isinstance(self.spacing, (int, float)) and math.isfinite(self.spacing) and self.spacing > 0):
            raise ConfigError(f"target spacing must be a positive number of Å per voxel, got {self.spacing!r}")

    @classmethod
    def from_config(cls, config: Mapping) -> TargetSpec:
        """Build from a plain dict such as {"kind": "gaussian", "stride": 1, "sigma_frac": 0.25}."""
        return dataclass_from_mapping(cls, config, "target")

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Grid shape at this stride of a full-res (Z, Y, X) region."""
        return tuple(math.ceil(int(n) / self.stride) for n in shape)

    def sigma_vox(self) -> np.ndarray:
        """(6,) Gaussian sigma per class in full-res voxels."""
        return per_class_values(self.sigma_frac, "target sigma_frac", self.particles.names) * self._radii_vox()

    def radius_vox(self) -> np.ndarray:
        """(6,) sphere radius per class in full-res voxels."""
        return per_class_values(self.radius_frac, "target radius_frac", self.particles.names) * self._radii_vox()

    def support_vox(self) -> np.ndarray:
        """(6,) distance in full-res voxels beyond which the kernel is exactly 0."""
        return GAUSSIAN_TRUNCATE * self.sigma_vox() if self.kind == "gaussian" else self.radius_vox()

    def _radii_vox(self) -> np.ndarray:
        return np.array([p.radius for p in self.particles]) / self.spacing


def check_points(points_zyx, labels, n_classes: int = len(CZII)) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, 3) float voxel centres and (N,) class indices < ``n_classes``; return them as float64 / int64."""
    points = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels).reshape(-1)
    if len(points) != len(labels):
        raise DataError(f"{len(points)} particle positions but {len(labels)} labels; give one label per particle")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels must lie in 0..{n_classes - 1} (indices into the class list), "
                        f"got {labels.min()}..{labels.max()}")
    if not np.all(np.isfinite(points)):
        raise DataError("particle positions contain NaN/inf; drop those picks before training")
    return points, labels.astype(np.int64)


def render_targets(points_zyx, labels, patch_shape: Sequence[int], origin: Sequence[int],
                   spec: TargetSpec) -> np.ndarray:
    """Heatmaps (C, ceil(Z/s), ceil(Y/s), ceil(X/s)) of the patch at full-res ``origin`` (z, y, x), C = len(spec.particles).

    Every particle whose kernel reaches the patch contributes, including ones centred outside it;
    only a local block around each particle is computed.
    """
    points, labels = check_points(points_zyx, labels, len(spec.particles))
    grid = np.array(spec.output_shape(patch_shape))
    out = np.zeros((len(spec.particles), *grid), dtype=np.float32)
    local = points - np.asarray(origin, dtype=np.float64).reshape(1, 3)
    support = spec.support_vox()[labels][:, None]
    first, last = _cells_within(local - support, local + support, spec.stride)
    first, last = np.maximum(first, 0), np.minimum(last, grid - 1)
    sigma, radius = spec.sigma_vox(), spec.radius_vox()
    for i in np.flatnonzero(np.all(first <= last, axis=1)):
        c = labels[i]
        block = tuple(slice(a, b + 1) for a, b in zip(first[i], last[i]))
        d2 = _squared_distances(local[i], first[i], last[i], spec.stride)
        np.maximum(out[c][block], _kernel(d2, spec.kind, sigma[c], radius[c]), out=out[c][block])
    return out


def render_volume_targets(points_zyx, labels, shape: Sequence[int], spec: TargetSpec) -> np.ndarray:
    """Heatmaps of a whole volume (origin 0), e.g. for validation losses or visual checks."""
    return render_targets(points_zyx, labels, shape, (0, 0, 0), spec)


def _cells_within(low: np.ndarray, high: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Index range of cells whose centres s*j + (s-1)/2 lie in [low, high] (full-res, per axis)."""
    half = (stride - 1) / 2
    first = np.ceil((low - half) / stride).astype(np.int64)
    last = np.floor((high - half) / stride).astype(np.int64)
    return first, last


def _squared_distances(centre: np.ndarray, first: np.ndarray, last: np.ndarray, stride: int) -> np.ndarray:
    """Squared full-res distance from ``centre`` to each cell centre of the block first..last."""
    half = (stride - 1) / 2
    dz, dy, dx = ((stride * np.arange(a, b + 1) + half - c) ** 2 for a, b, c in zip(first, last, centre))
    return dz[:, None, None] + dy[None, :, None] + dx[None, None, :]


def _kernel(d2: np.ndarray, kind: str, sigma: float, radius: float) -> np.ndarray:
    if kind == "gaussian":
        inside = d2 <= (GAUSSIAN_TRUNCATE * sigma) ** 2
        return np.where(inside, np.exp(-d2 / (2.0 * sigma**2)), 0.0).astype(np.float32)
    return (d2 <= radius**2).astype(np.float32)
