"""Training patches: crop -> shared geometry for image and targets -> intensity (image only) -> optional mixup.

Each item is a pure function of (seed, epoch, index): the random generator is seeded from those
three numbers, so runs reproduce and DataLoader workers need no seeding of their own. Call
``set_epoch`` before iterating each epoch; the epoch lives in a shared-memory tensor, so workers
see it even when they persist across epochs (``persistent_workers=True``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from czii_kit.data.augment import AugmentConfig, apply_geometry, mixup, random_affine, random_intensity
from czii_kit.data.geometry import random_transform
from czii_kit.data.sampling import PatchSampler
from czii_kit.data.targets import TargetSpec, check_points, render_targets
from czii_kit.errors import ConfigError, DataError


class PatchDataset(Dataset):
    """``length`` random patches per epoch as (image (1, pz, py, px), target (6, pz/s, py/s, px/s)) float32."""

    def __init__(self, volumes: Sequence[np.ndarray], points: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                 patch_size: Sequence[int], target_spec: TargetSpec | Mapping, *, positive_fraction: float = 0.7,
                 class_weights: Sequence[float] | None = None, augment: AugmentConfig | Mapping | None = None,
                 length: int = 1000, seed: int = 0, hard_negatives: Sequence[np.ndarray] | None = None,
                 hard_negative_fraction: float = 0.0):
        """``augment=None`` means no augmentation; a dict goes through ``AugmentConfig.from_config``."""
        self.volumes = [_check_volume(v, run) for run, v in enumerate(volumes)]
        self.patch_size = tuple(int(n) for n in patch_size)
        self.target_spec = target_spec if isinstance(target_spec, TargetSpec) else TargetSpec.from_config(target_spec)
        self.augment = _augment_config(augment)
        _check_patch_fits_augment(self.patch_size, self.target_spec.stride, self.augment)
        n_classes = len(self.target_spec.particles)
        self.sampler = PatchSampler([v.shape for v in self.volumes], points, labels, self.patch_size,
                                    positive_fraction=positive_fraction, class_weights=class_weights, seed=seed,
                                    hard_negatives=hard_negatives, hard_negative_fraction=hard_negative_fraction,
                                    n_classes=n_classes)  # counts checked by the sampler
        checked = [check_points(p, lab, n_classes) for p, lab in zip(points, labels)]
        self.points = [p for p, _ in checked]
        self.labels = [lab for _, lab in checked]
        if length < 1:
            raise ConfigError(f"dataset length (samples per epoch) must be >= 1, got {length}")
        self.length = int(length)
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches ``__getitem__`` returns (in this process and in its workers)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        image, target = self._augmented_sample(rng)
        if rng.random() < self.augment.mixup:
            other_image, other_target = self._augmented_sample(rng)
            lam = rng.beta(self.augment.mixup_alpha, self.augment.mixup_alpha)
            image, target = mixup(image, target, other_image, other_target, lam)
        return torch.from_numpy(image), torch.from_numpy(target)

    def _augmented_sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        run, origin = self.sampler.sample(rng)
        affine = random_affine(rng, self.augment.rotate_z, self.augment.scale_jitter)
        if affine.is_identity:
            crop = self.volumes[run][tuple(slice(o, o + n) for o, n in zip(origin, self.patch_size))]
            points = self.points[run] - origin
        else:
            crop = affine.crop(self.volumes[run], origin, self.patch_size)
            points = affine.points(self.points[run], origin, self.patch_size)
        geometry = random_transform(rng, self.augment.flips, self.augment.rot90_xy)
        image = apply_geometry(crop[None], geometry)
        # Rendering at the transformed centres equals transforming the rendered target (test_augment checks
        # this for every geometry) and skips rotating a 6-channel array: ~6 ms less per 48x128x128 sample.
        moved = geometry.transform_points(points, self.patch_size)
        target = render_targets(moved, self.labels[run], self.patch_size, (0, 0, 0), self.target_spec)
        image = random_intensity(image, rng, self.augment.intensity_scale, self.augment.intensity_shift,
                                 self.augment.noise)
        return image, target


def _augment_config(augment: AugmentConfig | Mapping | None) -> AugmentConfig:
    if augment is None:
        return AugmentConfig.off()
    return augment if isinstance(augment, AugmentConfig) else AugmentConfig.from_config(augment)


def _check_volume(volume: np.ndarray, run: int) -> np.ndarray:
    if volume.ndim != 3 or volume.dtype != np.float32:
        raise DataError(f"volume {run} is {volume.dtype} with shape {volume.shape}; expected a normalized float32 "
                        "(z, y, x) array (run it through czii_kit.data.normalize first)")
    return volume


def _check_patch_fits_augment(patch_size: tuple[int, ...], stride: int, augment: AugmentConfig) -> None:
    """Flips keep stride-s cells aligned only if s divides the patch; odd rot90 needs Y == X."""
    if len(patch_size) != 3 or any(n % stride for n in patch_size):
        raise ConfigError(f"train.patch_size {patch_size} must be three sizes divisible by the target stride {stride}")
    if augment.rot90_xy and patch_size[1] != patch_size[2]:
        raise ConfigError(f"augment.rot90_xy needs a square y-x patch, got train.patch_size {patch_size}; "
                          "make Y == X or set augment.rot90_xy: false")
