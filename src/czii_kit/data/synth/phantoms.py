"""Procedural particle phantoms (sums of Gaussians) and the point groups and rotations shapes are built with.

Why keep phantoms next to the real maps: they need no files, any size renders them, and their
shapes are known exactly, which is what tiny test volumes and debugging want
(``SynthConfig(templates="procedural")``). Each class has its true radius and a caricature of its
shape: hollow 24-mer apo-ferritin shell, compact beta-amylase, D2 beta-galactosidase, two-subunit
ribosome, elongated thyroglobulin dimer, hollow VLP capsid.
"""
from __future__ import annotations

import itertools
import zlib
from functools import lru_cache

import numpy as np
from scipy.spatial.transform import Rotation

from czii_kit.data.synth.templates import Template, TemplateSet, mass_radius, normalize
from czii_kit.particles import CLASS_NAMES, HARD_CLASSES, RADIUS, VOXEL_SPACING


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform over SO(3): a normalised Gaussian quaternion."""
    return Rotation.from_quat(rng.standard_normal(4)).as_matrix()


def octahedral_group() -> np.ndarray:
    """The 24 rotations of a cube (signed permutation matrices with det +1): ferritin's symmetry."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                mats.append(m)
    return np.array(mats)


C1 = np.eye(3)[None]
C2 = np.array([np.eye(3), np.diag([-1.0, -1.0, 1.0])])
D2 = np.array([np.diag(s) for s in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))], dtype=float)


def symmetrize(points: np.ndarray, group: np.ndarray) -> np.ndarray:
    """All copies of a subunit's points under a point group: (G * K, 3)."""
    return np.einsum("gij,kj->gki", group, points).reshape(-1, 3)


def in_ellipsoid(rng: np.random.Generator, n: int, semi_axes) -> np.ndarray:
    """n points uniform inside an axis-aligned ellipsoid."""
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * rng.random((n, 1)) ** (1 / 3) * np.asarray(semi_axes, float)


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly evenly spread unit vectors."""
    i = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1)


# --------------------------------------------------------------------------- class shapes (Å)
def _apo_ferritin(r: float, rng) -> tuple[np.ndarray, float]:
    v = np.array([1.0, 0.42, 0.18]) / np.linalg.norm([1.0, 0.42, 0.18])
    t = np.cross(v, [0.0, 0.0, 1.0])
    t /= np.linalg.norm(t)
    subunit = np.stack([0.74 * r * v + 0.15 * r * t, 0.74 * r * v - 0.15 * r * t])
    return symmetrize(subunit, octahedral_group()), 0.14 * r


def _beta_amylase(r: float, rng) -> tuple[np.ndarray, float]:
    return symmetrize(np.array([0.32, 0.26, 0.15]) * r + rng.normal(0, 0.1 * r, (3, 3)), D2), 0.2 * r


def _beta_galactosidase(r: float, rng) -> tuple[np.ndarray, float]:
    along = np.outer(np.linspace(-0.25, 0.25, 4) * r, [0.2, 0.0, 1.0])
    return symmetrize(np.array([0.16, 0.28, 0.3]) * r + along + rng.normal(0, 0.04 * r, (4, 3)), D2), 0.17 * r


def _ribosome(r: float, rng) -> tuple[np.ndarray, float]:
    large = in_ellipsoid(rng, 45, [0.62 * r] * 3) + [-0.2 * r, 0, 0]
    small = in_ellipsoid(rng, 22, np.array([0.2, 0.6, 0.45]) * r) + [0.55 * r, 0, 0.05 * r]
    return np.vstack([large, small]), 0.12 * r


def _thyroglobulin(r: float, rng) -> tuple[np.ndarray, float]:
    t = np.linspace(-1, 1, 10)
    arms = [np.stack([s * 0.12 * r * np.sin(np.pi * t), s * (0.25 * r + 0.08 * r * np.cos(np.pi * t)),
                      0.75 * r * t], axis=1) for s in (1.0, -1.0)]
    return np.vstack(arms), 0.14 * r


def _virus_like_particle(r: float, rng) -> tuple[np.ndarray, float]:
    return fibonacci_sphere(240) * 0.85 * r, 0.075 * r


_SHAPES = {"apo-ferritin": _apo_ferritin, "beta-amylase": _beta_amylase, "beta-galactosidase": _beta_galactosidase,
           "ribosome": _ribosome, "thyroglobulin": _thyroglobulin, "virus-like-particle": _virus_like_particle}


def _gaussian_profile(axis: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """(K, len(axis)) 1-D Gaussians, exactly 0 beyond 6 sigma (float32 denormals make matmuls crawl)."""
    q = ((axis[None] - centres[:, None]) / sigma) ** 2
    return np.where(q < 36, np.exp(-0.5 * np.minimum(q, 36)), 0).astype(np.float32)


def blob_template(name: str, centres_angstrom: np.ndarray, sigma_angstrom: float) -> Template:
    """Render equal Gaussians (Å) into a box at VOXEL_SPACING centred on their centre of mass."""
    centres = centres_angstrom - centres_angstrom.mean(axis=0)
    centres, sigma = centres / VOXEL_SPACING, sigma_angstrom / VOXEL_SPACING
    half = int(np.ceil(np.abs(centres).max() + 3 * sigma)) + 1
    axis = np.arange(-half, half + 1, dtype=float)
    gz, gy, gx = (_gaussian_profile(axis, centres[:, i], sigma) for i in range(3))
    zy = (gz[:, :, None] * gy[:, None, :]).reshape(len(centres), -1)
    density = normalize((zy.T @ gx).reshape(len(axis), len(axis), len(axis)), VOXEL_SPACING, None)
    return Template(name, density, mass_radius(density, 1.0, 0.97))


@lru_cache(maxsize=1)
def phantom_templates() -> TemplateSet:
    """The six class phantoms (identical in every run); distractors are drawn per run (``random_protein``)."""
    targets = {}
    for name in CLASS_NAMES:
        centres, sigma = _SHAPES[name](RADIUS[name], np.random.default_rng(zlib.crc32(name.encode())))
        targets[name] = blob_template(name, centres, sigma)
    return TemplateSet(targets, ())


def random_protein(rng: np.random.Generator) -> Template:
    """A non-target phantom: half the time the size of a hard class, else 30-160 Å; a random
    blob cluster or a C2/D2 oligomer."""
    if rng.random() < 0.5:
        radius = RADIUS[HARD_CLASSES[rng.integers(len(HARD_CLASSES))]] * rng.uniform(0.85, 1.15)
    else:
        radius = float(np.exp(rng.uniform(np.log(30.0), np.log(160.0))))
    sigma = float(np.clip(0.17 * radius, 8.0, 18.0))
    reach = max(radius - 1.5 * sigma, 1.0)
    group = (None, C2, D2)[rng.integers(3)]
    if group is None:
        n = int(np.clip((reach / sigma) ** 2, 2, 40))
        centres = in_ellipsoid(rng, n, reach * rng.uniform([1.0, 0.5, 0.4], [1.0, 1.0, 0.8]))
    else:
        offset = rng.standard_normal(3)
        offset *= 0.5 * reach / np.linalg.norm(offset)
        n_sub = int(np.clip((reach / sigma) ** 2 / len(group), 1, 8))
        centres = symmetrize(offset + in_ellipsoid(rng, n_sub, [0.5 * reach] * 3), group)
    return blob_template("distractor", centres, sigma)
