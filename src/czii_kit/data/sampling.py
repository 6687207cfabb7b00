"""Where to cut training patches: around particles (positives) or anywhere (negatives).

Positives pick a class by ``class_weights`` among the classes present (weight 0: never), then one
particle of that class uniformly over all runs, and put it at a uniform position inside the patch
at least ``margin`` voxels from the patch border (less only where the volume border forces it).
Hard negatives (``hard_negative_fraction`` of the patches, when given) are centred like positives on
look-alikes (``czii_kit.data.lookalikes``); the remaining negatives are uniform over all patch positions
of all runs.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from czii_kit.data.targets import check_points
from czii_kit.errors import ConfigError
from czii_kit.particles import CZII

DEFAULT_MARGIN = 4  # voxels between a positive's centre and the patch border


class PatchSampler:
    """Draws (run index, full-res patch origin (z, y, x)) for training crops."""

    def __init__(self, shapes: Sequence[Sequence[int]], points: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                 patch_size: Sequence[int], positive_fraction: float = 0.7,
                 class_weights: Sequence[float] | None = None, seed: int = 0, margin: int = DEFAULT_MARGIN,
                 hard_negatives: Sequence[np.ndarray] | None = None, hard_negative_fraction: float = 0.0,
                 n_classes: int | None = None):
        """``n_classes`` defaults to the length of ``class_weights``, else to the six CZII classes."""
        if not len(shapes) == len(points) == len(labels) or not shapes:
            raise ConfigError(f"need one shape, points array and labels array per run and at least one run; got "
                              f"{len(shapes)} shapes, {len(points)} points, {len(labels)} labels")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ConfigError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
        if not (0.0 <= hard_negative_fraction and positive_fraction + hard_negative_fraction <= 1.0):
            raise ConfigError(f"hard_negative_fraction must be >= 0 with positive_fraction + hard_negative_fraction "
                              f"<= 1, got {hard_negative_fraction!r} (+ {positive_fraction!r})")
        self.hard_negative_fraction = float(hard_negative_fraction)
        self.shapes = np.array([tuple(int(n) for n in s) for s in shapes], dtype=np.int64).reshape(-1, 3)
        self.patch_size = _check_patch_size(patch_size, self.shapes)
        self.positive_fraction = float(positive_fraction)
        self.margin = np.minimum(int(margin), (self.patch_size - 1) // 2)
        self.rng = np.random.default_rng(seed)
        if n_classes is None:
            n_classes = len(class_weights) if class_weights is not None else len(CZII)
        self.n_classes = int(n_classes)
        self._index_particles(points, labels)
        self.class_probs = self._class_probabilities(class_weights)
        self._index_hard_negatives(hard_negatives)

    def _index_particles(self, points: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
        """Flatten all runs' particles into (run, index in run, centre voxel) arrays, grouped by class."""
        runs, indices, centres, classes = [], [], [], []
        for run, (shape, pts, lab) in enumerate(zip(self.shapes, points, labels)):
            pts, lab = check_points(pts, lab, self.n_classes)
            runs.append(np.full(len(lab), run))
            indices.append(np.arange(len(lab)))
            centres.append(np.clip(np.floor(pts + 0.5).astype(np.int64), 0, shape - 1))
            classes.append(lab)
        self.particle_run = np.concatenate(runs).astype(np.int64)
        self.particle_index = np.concatenate(indices).astype(np.int64)
        self.particle_centre = np.concatenate(centres).reshape(-1, 3)
        particle_class = np.concatenate(classes).astype(np.int64)
        self.particles_of_class = [np.flatnonzero(particle_class == c) for c in range(self.n_classes)]

    def _class_probabilities(self, class_weights: Sequence[float] | None) -> np.ndarray:
        weights = np.ones(self.n_classes) if class_weights is None else np.asarray(class_weights, dtype=np.float64)
        if weights.shape != (self.n_classes,) or not np.all(np.isfinite(weights) & (weights >= 0)):
            raise ConfigError(f"class_weights must be one non-negative number per class, in the config's class "
                              f"order; got {class_weights!r}")
        present = np.array([len(p) > 0 for p in self.particles_of_class])
        eligible = weights * present
        if eligible.sum() == 0:
            if self.positive_fraction > 0:
                raise ConfigError("no particle of a class with positive class weight exists in these runs, so no "
                                  "positive patch can be drawn; set positive_fraction to 0 or fix class_weights")
            return eligible
        return eligible / eligible.sum()

    def _index_hard_negatives(self, hard_negatives: Sequence[np.ndarray] | None) -> None:
        hard = [np.zeros((0, 3))] * len(self.shapes) if hard_negatives is None else list(hard_negatives)
        if len(hard) != len(self.shapes):
            raise ConfigError(f"need one hard-negative array per run, got {len(hard)} for {len(self.shapes)} runs")
        self.hard_run = np.concatenate([np.full(len(h), r) for r, h in enumerate(hard)]).astype(np.int64)
        self.hard_centre = np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1, 3) for h in hard])

    def sample(self, rng: np.random.Generator | None = None) -> tuple[int, np.ndarray]:
        """A positive patch with probability ``positive_fraction``, a hard negative with probability
        ``hard_negative_fraction`` (when there are any), else a uniform one."""
        rng = self.rng if rng is None else rng
        u = rng.random()
        if u < self.positive_fraction:
            run, origin, _ = self.sample_positive(rng)
            return run, origin
        if u < self.positive_fraction + self.hard_negative_fraction and len(self.hard_run):
            return self.sample_hard_negative(rng)
        return self.sample_negative(rng)

    def sample_hard_negative(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """A look-alike at a uniform position inside the patch, as for positives."""
        k = rng.integers(len(self.hard_run))
        run = int(self.hard_run[k])
        return run, self._origin_around(self.hard_centre[k], run, rng)

    def sample_positive(self, rng: np.random.Generator) -> tuple[int, np.ndarray, int]:
        """(run, origin, index of the chosen particle within that run's points)."""
        cls = rng.choice(self.n_classes, p=self.class_probs)
        members = self.particles_of_class[cls]
        k = members[rng.integers(len(members))]
        run = int(self.particle_run[k])
        return run, self._origin_around(self.particle_centre[k], run, rng), int(self.particle_index[k])

    def _origin_around(self, centre: np.ndarray, run: int, rng: np.random.Generator) -> np.ndarray:
        """A patch origin that puts ``centre`` at a uniform position at least ``margin`` inside the patch."""
        offset = rng.integers(self.margin, self.patch_size - self.margin)
        return np.clip(centre - offset, 0, self.shapes[run] - self.patch_size)

    def sample_negative(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """Uniform over every patch position of every run."""
        positions = np.prod(self.shapes - self.patch_size + 1, axis=1).astype(np.float64)
        run = int(rng.choice(len(self.shapes), p=positions / positions.sum()))
        origin = rng.integers(0, self.shapes[run] - self.patch_size + 1)
        return run, origin


def _check_patch_size(patch_size: Sequence[int], shapes: np.ndarray) -> np.ndarray:
    patch = np.array([int(n) for n in patch_size], dtype=np.int64)
    if patch.shape != (3,) or np.any(patch <= 0):
        raise ConfigError(f"train.patch_size must be three positive ints (z, y, x), got {patch_size!r}")
    for run, shape in enumerate(shapes):
        if np.any(patch > shape):
            raise ConfigError(f"patch size {tuple(patch.tolist())} is larger than volume {run} of shape "
                              f"{tuple(shape.tolist())}; lower train.patch_size to fit every volume")
    return patch
