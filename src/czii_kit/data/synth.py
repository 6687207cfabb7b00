"""Realistic synthetic cryo-ET runs, written in the exact competition layout.

Why: every tool must run end to end (train, predict, score) without the Kaggle download, and
what works here should have a chance on real data. So a run is simulated the way a real
denoised tomogram comes about:

1. Scene. The six classes at their true sizes (radius from ``czii_kit.particles``) as fixed
   procedural models (sums of Gaussian sub-blobs), uniformly random orientations, the real
   per-run counts scaled to the volume, no heavy overlaps, inside a slightly tilted ice slab
   with soft edges. Plus things that are not targets: protein-like complexes of assorted
   sizes (half of them the size of the hard classes), bilayer vesicles and membrane
   fragments, gold beads at the ice surfaces, ice texture.
2. Imaging, in Fourier space after one forward FFT: CTF at 300 kV with a per-run defocus and a
   B-factor envelope, the missing wedge of a +-tilt series about y, reconstruction noise
   (drawn directly in Fourier space) shaped by the same wedge. Protein comes out dark.
3. Reconstructions from that one spectrum, one inverse FFT each: ``wbp`` (as imaged),
   ``denoised`` (low-pass), ``ctfdeconvolved`` (Wiener CTF correction), ``isonetcorrected``
   (partly filled wedge, low-pass). Values are float32 on the real data's scale (std ~1e-5).

Units: scene coordinates are (z, y, x) voxels; picks are converted once with
``voxel_to_angstrom`` so ``angstrom_to_voxel(pick)`` lands on the rendered centre (+ jitter).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import shutil
import zlib
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
from scipy.spatial.transform import Rotation
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from czii_kit import __version__
from czii_kit.data import io, layout
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, HARD_CLASSES, RADIUS, VOXEL_SPACING, voxel_to_angstrom

FULL_SHAPE = (184, 630, 630)  # (z, y, x) of a real run
TRAIN_RUN_NAMES = ("TS_5_4", "TS_6_4", "TS_6_6", "TS_69_2", "TS_73_6", "TS_86_3", "TS_99_9")
_COUNT_COLUMNS = ("apo-ferritin", "beta-amylase", "beta-galactosidase", "ribosome", "thyroglobulin",
                  "virus-like-particle")
# Picks per class in the 7 real training runs (184 x 630 x 630 voxels).
REAL_COUNTS: dict[str, dict[str, int]] = {
    run: dict(zip(_COUNT_COLUMNS, row)) for run, row in {
        "TS_5_4": (46, 10, 12, 31, 30, 11),
        "TS_6_4": (58, 9, 12, 74, 30, 10),
        "TS_6_6": (41, 14, 11, 23, 35, 19),
        "TS_69_2": (35, 12, 16, 37, 34, 9),
        "TS_73_6": (95, 12, 14, 46, 28, 22),
        "TS_86_3": (64, 9, 23, 55, 45, 29),
        "TS_99_9": (36, 21, 24, 65, 49, 13),
    }.items()
}
# Typical density of each class above the surrounding ice (protein = 1): RNA-rich ribosomes and
# dense capsids stand out; the hard classes are fainter, as in the real data.
CLASS_DENSITY = {"apo-ferritin": 1.0, "beta-amylase": 0.7, "beta-galactosidase": 0.75, "ribosome": 1.3,
                 "thyroglobulin": 0.7, "virus-like-particle": 1.15}
GOLD_DENSITY = 6.0  # gold fiducials are far denser than protein
MEMBRANE_DENSITY = 0.9  # per lipid headgroup layer
LEAFLET_OFFSET = 2.0  # voxels from the bilayer mid-plane to each headgroup layer (~40 Å apart)
LEAFLET_SIGMA = 0.7  # voxels
OVERLAP = 0.85  # centres at least this x the sum of radii apart: touching, never heavily overlapping
TARGET_STD = 1e-5  # std of a real denoised tomogram
WIENER_EPS = 0.1  # regularisation of the ctfdeconvolved Wiener filter
DECONV_LOWPASS = 1.5  # ctfdeconvolved is low-passed this much more gently than denoised
ISONET_EXTRA_DEG = 25.0  # how far the isonet recon widens the measured tilt range
ISONET_FILL = 0.6  # fraction of the signal it recovers there
# The built-in dataset every tool falls back to without --data.
BUILTIN = dict(n_train=4, n_test=2, shape=(96, 256, 256), seed=0)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the simulation. The defaults are hard but learnable: ribosomes and capsids are
    obvious in the denoised recon, apo-ferritin clear, the hard classes faint, the ice slab visible.

    ``noise`` is the per-voxel std of the reconstruction noise (power rising like |k|) before the
    wedge and the denoising low-pass, in units of protein density above ice (protein = 1); the
    denoised recon keeps about 6 % of it. Ranges are (low, high), drawn per run. Counts are
    the real ones scaled to the volume; ``density`` multiplies the target counts;
    ``distractors``, ``membranes`` and ``gold`` are counts per full-size (184 x 630 x 630) run.
    """

    shape: tuple[int, int, int] = FULL_SHAPE
    noise: float = 0.3
    tilt_max_deg: tuple[float, float] = (50.0, 60.0)  # +- tilt range of the series (missing wedge)
    defocus_um: tuple[float, float] = (2.5, 4.5)  # underfocus
    bfactor: tuple[float, float] = (150.0, 400.0)  # Å², CTF envelope exp(-B k^2 / 4)
    voltage_kv: float = 300.0
    amplitude_contrast: float = 0.07
    lowpass: float = 0.3  # denoising low-pass: Gaussian sigma as a fraction of Nyquist
    jitter_angstrom: float = 4.0  # per-axis std of the curators' pick error
    density: float = 1.0
    distractors: float = 150.0
    membranes: float = 4.0
    gold: float = 8.0
    ice_fraction: tuple[float, float] = (0.55, 0.8)  # ice thickness as a fraction of z
    ice_contrast: float = 0.3  # ice above vacuum, relative to protein above ice
    ice_texture: float = 0.5  # per-voxel std of the ice's fine structure

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 32:
            raise ConfigError(f"shape {self.shape} must be three sizes (z, y, x), each at least 32 voxels")
        object.__setattr__(self, "shape", shape)
        for name in ("tilt_max_deg", "defocus_um", "bfactor", "ice_fraction"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0 <= lo <= hi:
                raise ConfigError(f"{name} = {getattr(self, name)} must be a range (low, high) with 0 <= low <= high")
            object.__setattr__(self, name, (lo, hi))
        if not (0 < self.tilt_max_deg[0] and self.tilt_max_deg[1] < 90):
            raise ConfigError(f"tilt_max_deg {self.tilt_max_deg} must lie strictly between 0 and 90 degrees")
        if not (0 < self.ice_fraction[0] and self.ice_fraction[1] <= 1):
            raise ConfigError(f"ice_fraction {self.ice_fraction} must lie in (0, 1]")
        bad = [n for n in ("noise", "jitter_angstrom", "distractors", "membranes", "gold", "ice_contrast",
                           "ice_texture") if getattr(self, n) < 0]
        bad += [n for n in ("density", "lowpass", "voltage_kv") if getattr(self, n) <= 0]
        if bad:
            raise ConfigError(f"SynthConfig: {', '.join(bad)} must be >= 0 (density, lowpass, voltage_kv > 0)")


# --------------------------------------------------------------------------- particle models
@dataclass(frozen=True)
class Blobs:
    """A sum of isotropic Gaussians: centres (K, 3), sigmas (K,) and peak amplitudes (K,)."""

    centres: np.ndarray
    sigma: np.ndarray
    amp: np.ndarray

    def rotated(self, matrix: np.ndarray) -> Blobs:
        return Blobs(self.centres @ matrix.T, self.sigma, self.amp)

    def scaled(self, factor: float) -> Blobs:
        return Blobs(self.centres * factor, self.sigma * factor, self.amp)


def _blobs(centres, sigma, amp=1.0) -> Blobs:
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    n = len(centres)
    return Blobs(centres, np.broadcast_to(np.asarray(sigma, float), n).copy(),
                 np.broadcast_to(np.asarray(amp, float), n).copy())


def _octahedral_group() -> np.ndarray:
    """The 24 rotations of a cube (signed permutation matrices with det +1): ferritin's symmetry."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                mats.append(m)
    return np.array(mats)


_C2 = np.array([np.eye(3), np.diag([-1.0, -1.0, 1.0])])
_D2 = np.array([np.diag(s) for s in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))], dtype=float)


def _symmetrize(points: np.ndarray, group: np.ndarray) -> np.ndarray:
    """All copies of a subunit's points under a point group: (G * K, 3)."""
    return np.einsum("gij,kj->gki", group, points).reshape(-1, 3)


def _in_ellipsoid(rng: np.random.Generator, n: int, semi_axes) -> np.ndarray:
    """n points uniform inside an axis-aligned ellipsoid."""
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * rng.random((n, 1)) ** (1 / 3) * np.asarray(semi_axes, float)


def _fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly evenly spread unit vectors."""
    i = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1)


def _apo_ferritin(r: float, rng: np.random.Generator) -> Blobs:
    """Hollow 24-mer shell: two lobes per subunit at 0.75 r, octahedral symmetry."""
    v = np.array([1.0, 0.42, 0.18]) / np.linalg.norm([1.0, 0.42, 0.18])
    t = np.cross(v, [0.0, 0.0, 1.0])
    t /= np.linalg.norm(t)
    subunit = np.stack([0.74 * r * v + 0.15 * r * t, 0.74 * r * v - 0.15 * r * t])
    return _blobs(_symmetrize(subunit, _octahedral_group()), 0.14 * r)


def _beta_amylase(r: float, rng: np.random.Generator) -> Blobs:
    """Small compact D2 tetramer of globular subunits."""
    subunit = np.array([0.32, 0.26, 0.15]) * r + rng.normal(0, 0.1 * r, (3, 3))
    return _blobs(_symmetrize(subunit, _D2), 0.2 * r)


def _beta_galactosidase(r: float, rng: np.random.Generator) -> Blobs:
    """D2 tetramer of four elongated lobes (~1.8 x 1.3 x 1.0 r)."""
    along = np.outer(np.linspace(-0.25, 0.25, 4) * r, [0.2, 0.0, 1.0])
    subunit = np.array([0.16, 0.28, 0.3]) * r + along + rng.normal(0, 0.04 * r, (4, 3))
    return _blobs(_symmetrize(subunit, _D2), 0.17 * r)


def _ribosome(r: float, rng: np.random.Generator) -> Blobs:
    """Large lumpy subunit plus a flattened small subunit on top."""
    large = _in_ellipsoid(rng, 45, [0.62 * r] * 3) + [-0.2 * r, 0, 0]
    small = _in_ellipsoid(rng, 22, np.array([0.2, 0.6, 0.45]) * r) + [0.55 * r, 0, 0.05 * r]
    return Blobs(np.vstack([large, small]), np.r_[np.full(45, 0.13 * r), np.full(22, 0.11 * r)],
                 np.r_[np.ones(45), np.full(22, 0.92)])


def _thyroglobulin(r: float, rng: np.random.Generator) -> Blobs:
    """Elongated C2 dimer: two gently curved arms side by side."""
    t = np.linspace(-1, 1, 10)
    arms = [np.stack([s * 0.12 * r * np.sin(np.pi * t), s * (0.25 * r + 0.08 * r * np.cos(np.pi * t)),
                      0.75 * r * t], axis=1) for s in (1.0, -1.0)]
    return _blobs(np.vstack(arms), 0.14 * r)


def _virus_like_particle(r: float, rng: np.random.Generator) -> Blobs:
    """Large hollow capsid: a thin lumpy shell at 0.85 r."""
    return _blobs(_fibonacci_sphere(240) * 0.85 * r, 0.075 * r)


_BUILDERS = {"apo-ferritin": _apo_ferritin, "beta-amylase": _beta_amylase,
             "beta-galactosidase": _beta_galactosidase, "ribosome": _ribosome,
             "thyroglobulin": _thyroglobulin, "virus-like-particle": _virus_like_particle}


def _normalized(blobs: Blobs, density: float) -> Blobs:
    """Centre on the centre of mass (where curators pick) and scale the typical inner density."""
    mass = blobs.amp * blobs.sigma ** 3
    centres = blobs.centres - (mass[:, None] * blobs.centres).sum(0) / mass.sum()
    d2 = ((centres[:, None] - centres[None]) ** 2).sum(-1)
    field_at_blobs = (blobs.amp[None] * np.exp(-0.5 * d2 / blobs.sigma[None] ** 2)).sum(1)
    return Blobs(centres, blobs.sigma, blobs.amp * density / np.median(field_at_blobs))


@lru_cache(maxsize=None)
def class_template(name: str) -> Blobs:
    """The fixed model of a class in Å, centred on its centre of mass: identical in every run."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return _normalized(_BUILDERS[name](RADIUS[name], rng), CLASS_DENSITY[name])


def _random_protein(rng: np.random.Generator, radius: float) -> Blobs:
    """A non-target complex of the given radius (Å): a random blob cluster or C2/D2 oligomer."""
    sigma = float(np.clip(0.17 * radius, 8.0, 18.0))
    reach = max(radius - 1.5 * sigma, 1.0)
    group = (None, _C2, _D2)[rng.integers(3)]
    if group is None:
        n = int(np.clip((reach / sigma) ** 2, 2, 40))
        centres = _in_ellipsoid(rng, n, reach * rng.uniform([1.0, 0.5, 0.4], [1.0, 1.0, 0.8]))
    else:
        n_sub = int(np.clip((reach / sigma) ** 2 / len(group), 1, 8))
        offset = rng.standard_normal(3)
        offset *= 0.5 * reach / np.linalg.norm(offset)
        centres = _symmetrize(offset + _in_ellipsoid(rng, n_sub, [0.5 * reach] * 3), group)
    return _normalized(_blobs(centres, sigma), rng.uniform(0.55, 1.0))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform over SO(3): a normalised Gaussian quaternion."""
    return Rotation.from_quat(rng.standard_normal(4)).as_matrix()


# --------------------------------------------------------------------------- scene
@dataclass(frozen=True)
class Slab:
    """The ice layer: a slightly tilted plane of given thickness (voxels) with soft faces."""

    shape: tuple[int, int, int]
    centre: float  # z of the mid-plane at the volume's centre
    slope_y: float
    slope_x: float
    thickness: float
    edge: float = 2.0  # voxels over which the ice fades out

    def mid_z(self, y, x):
        _, ny, nx = self.shape
        dy, dx = np.asarray(y) - (ny - 1) / 2, np.asarray(x) - (nx - 1) / 2
        return self.centre + self.slope_y * dy + self.slope_x * dx

    def depth(self, zyx: np.ndarray) -> np.ndarray:
        """Distance (voxels) of (N, 3) points from the mid-plane along z."""
        zyx = np.asarray(zyx, float).reshape(-1, 3)
        return np.abs(zyx[:, 0] - self.mid_z(zyx[:, 1], zyx[:, 2]))

    def mask(self) -> np.ndarray:
        """1 inside the ice, 0 outside, a linear ramp over `edge` voxels either side of each face; float32 (z, y, x)."""
        nz, ny, nx = self.shape
        mid = self.mid_z(np.arange(ny)[:, None], np.arange(nx)[None, :]).astype(np.float32)
        mask = np.subtract(np.arange(nz, dtype=np.float32)[:, None, None], mid[None])
        np.abs(mask, out=mask)  # depth below/above the mid-plane; in-place ops: this is the volume's size
        mask *= np.float32(-0.5 / self.edge)
        mask += np.float32(0.5 + self.thickness / 4 / self.edge)
        return np.clip(mask, 0, 1, out=mask)


@dataclass(frozen=True)
class Placed:
    """One object of the scene: a class name (targets) or "protein"/"gold" (distractors)."""

    kind: str
    centre: np.ndarray  # (z, y, x) voxels
    radius: float  # voxels, for overlap checks
    blobs: Blobs  # voxels, relative to the centre, already rotated


@dataclass(frozen=True)
class Membrane:
    """A lipid bilayer on a sphere: a closed vesicle (half_angle = pi) or a cap-shaped fragment."""

    centre: np.ndarray  # (z, y, x) voxels of the sphere's centre
    radius: float  # voxels
    axis: np.ndarray  # unit vector from the centre to the middle of the cap
    half_angle: float  # radians


@dataclass(frozen=True)
class Scene:
    """Everything drawn for one run before imaging; ``render_density`` turns it into a volume."""

    name: str
    shape: tuple[int, int, int]
    slab: Slab
    objects: tuple[Placed, ...]
    membranes: tuple[Membrane, ...]
    ice_contrast: float
    ice_texture: float
    texture_seed: int
    picks: pd.DataFrame  # the curated (jittered) picks: experiment, particle_type, x, y, z in Å

    @property
    def targets(self) -> list[Placed]:
        return [o for o in self.objects if o.kind in CLASS_NAMES]


def volume_scale(shape) -> float:
    """Volume relative to a real run: counts scale with it."""
    return float(np.prod(shape, dtype=float) / np.prod(FULL_SHAPE, dtype=float))


def expected_counts(shape, density: float = 1.0, profile: dict[str, float] | None = None) -> dict[str, float]:
    """Mean number of picks per class: a real run's counts (default: their average) scaled to the volume."""
    profile = profile or {c: np.mean([row[c] for row in REAL_COUNTS.values()]) for c in CLASS_NAMES}
    scale = density * volume_scale(shape)
    return {c: float(profile[c]) * scale for c in CLASS_NAMES}


def _stochastic_round(value: float, rng: np.random.Generator) -> int:
    """Floor or ceil with probabilities that keep the expectation exact."""
    whole = int(np.floor(value))
    return whole + int(rng.random() < value - whole)


def sample_counts(expected: dict[str, float], rng: np.random.Generator) -> dict[str, int]:
    """Integer counts per class with the given expectations, at least one of each class."""
    return {c: max(1, _stochastic_round(v, rng)) for c, v in expected.items()}


def _count_profile(name: str, rng: np.random.Generator) -> dict[str, int]:
    """A real run's counts: the namesake's (also for cycled names like TS_5_4_2), else a random one."""
    for key in (name, name.rsplit("_", 1)[0]):
        if key in REAL_COUNTS:
            return REAL_COUNTS[key]
    return REAL_COUNTS[TRAIN_RUN_NAMES[rng.integers(len(TRAIN_RUN_NAMES))]]


def _sample_slab(shape, rng: np.random.Generator, cfg: SynthConfig) -> Slab:
    nz, ny, nx = shape
    thickness = rng.uniform(*cfg.ice_fraction) * nz
    room = max((nz - thickness) / 2 - 1, 0.0)  # free z on either side; offset + tilt stay within it
    offset, tilt_y, tilt_x = rng.uniform(-1, 1, 3) * room / 3
    return Slab(tuple(shape), (nz - 1) / 2 + offset, tilt_y / max((ny - 1) / 2, 1), tilt_x / max((nx - 1) / 2, 1),
                thickness)


class _Packer:
    """Rejection sampler for centres inside the ice, never closer than OVERLAP x the sum of radii."""

    def __init__(self, slab: Slab, rng: np.random.Generator):
        self.slab, self.rng = slab, rng
        self.centres = np.empty((0, 3))
        self.radii = np.empty(0)

    def candidates(self, radius: float, n: int, at_surface: bool) -> np.ndarray:
        _, ny, nx = self.slab.shape
        y = self.rng.uniform(min(radius, (ny - 1) / 2), max(ny - 1 - radius, (ny - 1) / 2), n)
        x = self.rng.uniform(min(radius, (nx - 1) / 2), max(nx - 1 - radius, (nx - 1) / 2), n)
        half = self.slab.thickness / 2
        room = half - min(radius, half - 1)  # the whole particle in the ice when it fits
        if at_surface:
            dz = self.rng.choice([-1.0, 1.0], n) * (room - self.rng.uniform(0, min(room, 1.0), n))
        else:
            dz = self.rng.uniform(-room, room, n)
        return np.stack([self.slab.mid_z(y, x) + dz, y, x], axis=1)

    def place(self, radius: float, at_surface: bool = False, tries: int = 256, batch: int = 32) -> np.ndarray | None:
        """A free centre for a new object (and book it), or None if the volume is too crowded."""
        for _ in range(tries // batch):
            cand = self.candidates(radius, batch, at_surface)
            dist = np.linalg.norm(cand[:, None] - self.centres[None], axis=-1)
            free = np.all(dist >= OVERLAP * (radius + self.radii[None]), axis=1)
            if free.any():
                centre = cand[np.argmax(free)]
                self.centres = np.vstack([self.centres, centre])
                self.radii = np.append(self.radii, radius)
                return centre
        return None


def _place_targets(packer: _Packer, counts: dict[str, int], rng: np.random.Generator, shape) -> list[Placed]:
    """Largest classes first (packs best); at least one of every class or a DataError."""
    placed = []
    for name in sorted(CLASS_NAMES, key=lambda c: -RADIUS[c]):
        radius = RADIUS[name] / VOXEL_SPACING
        for _ in range(counts[name]):
            centre = packer.place(radius)
            if centre is None:
                break
            blobs = class_template(name).rotated(_random_rotation(rng)).scaled(1 / VOXEL_SPACING)
            placed.append(Placed(name, centre, radius, blobs))
        if not any(p.kind == name for p in placed):
            raise DataError(
                f"could not fit a single {name} into a {shape} volume; use a larger --shape or a lower density"
            )
    return placed


def _distractor_radius(rng: np.random.Generator) -> float:
    """Å: half the time the size of a hard class (the confusable ones), else log-uniform 30-160 Å."""
    if rng.random() < 0.5:
        return RADIUS[HARD_CLASSES[rng.integers(len(HARD_CLASSES))]] * rng.uniform(0.85, 1.15)
    return float(np.exp(rng.uniform(np.log(30.0), np.log(160.0))))


def _place_distractors(packer: _Packer, n: int, rng: np.random.Generator) -> list[Placed]:
    placed = []
    for _ in range(n):
        radius = _distractor_radius(rng)
        centre = packer.place(radius / VOXEL_SPACING, tries=64)
        if centre is not None:
            blobs = _random_protein(rng, radius).rotated(_random_rotation(rng)).scaled(1 / VOXEL_SPACING)
            placed.append(Placed("protein", centre, radius / VOXEL_SPACING, blobs))
    return placed


def _place_gold(packer: _Packer, n: int, rng: np.random.Generator) -> list[Placed]:
    """Gold fiducials (radius 25-50 Å) sit on the ice surfaces."""
    placed = []
    for _ in range(n):
        radius = rng.uniform(25.0, 50.0) / VOXEL_SPACING
        centre = packer.place(radius, at_surface=True, tries=64)
        if centre is not None:
            placed.append(Placed("gold", centre, radius, _blobs(np.zeros(3), 0.55 * radius, GOLD_DENSITY)))
    return placed


def _sample_membranes(packer: _Packer, n: int, rng: np.random.Generator) -> list[Membrane]:
    """Half closed vesicles (kept clear of particles), half fragments of large curved sheets."""
    membranes = []
    half = packer.slab.thickness / 2
    for _ in range(n):
        if rng.random() < 0.5 and half > 10:
            radius = rng.uniform(8.0, min(35.0, half - 2))
            centre = packer.place(radius + LEAFLET_OFFSET, tries=64)
            if centre is not None:
                membranes.append(Membrane(centre, radius, np.array([1.0, 0.0, 0.0]), np.pi))
            continue
        radius = rng.uniform(40.0, 200.0)
        axis = rng.standard_normal(3)
        axis /= np.linalg.norm(axis)
        point = packer.candidates(0.0, 1, at_surface=False)[0]
        half_angle = min(rng.uniform(20.0, 80.0) / radius, np.pi / 2)  # arcs of 20-80 voxels either side
        membranes.append(Membrane(point - radius * axis, radius, axis, half_angle))
    return membranes


def sample_scene(name: str, cfg: SynthConfig, rng: np.random.Generator) -> Scene:
    """Everything in a run and where, without rendering: cheap even at full size."""
    shape = cfg.shape
    slab = _sample_slab(shape, rng, cfg)
    packer = _Packer(slab, rng)
    counts = sample_counts(expected_counts(shape, cfg.density, _count_profile(name, rng)), rng)
    targets = _place_targets(packer, counts, rng, shape)
    scale = volume_scale(shape)
    membranes = _sample_membranes(packer, _stochastic_round(cfg.membranes * scale, rng), rng)
    distractors = _place_distractors(packer, _stochastic_round(cfg.distractors * scale, rng), rng)
    gold = _place_gold(packer, _stochastic_round(cfg.gold * scale, rng), rng)
    return Scene(name, shape, slab, tuple(targets + distractors + gold), tuple(membranes), cfg.ice_contrast,
                 cfg.ice_texture, int(rng.integers(2 ** 31)), _jittered_picks(name, targets, cfg.jitter_angstrom, rng))


def _jittered_picks(name: str, targets: list[Placed], jitter: float, rng: np.random.Generator) -> pd.DataFrame:
    """Curated picks in Å: the true centres plus the curators' few-Å error, in class order."""
    centres = np.array([t.centre for t in targets]).reshape(-1, 3)
    xyz = voxel_to_angstrom(centres) + rng.normal(0.0, jitter, centres.shape)
    picks = pd.DataFrame({"experiment": name, "particle_type": [t.kind for t in targets],
                          "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    order = picks["particle_type"].map(CLASS_NAMES.index)
    return picks.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


# --------------------------------------------------------------------------- rendering
def _gaussian_profile(axis: np.ndarray, centres: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(K, len(axis)) 1-D Gaussians, exactly 0 beyond 6 sigma: float32 denormals would make the matmul crawl."""
    q = ((axis[None] - centres[:, None]) / sigma[:, None]) ** 2
    return np.where(q < 36, np.exp(-0.5 * np.minimum(q, 36)), 0).astype(np.float32)


def _add_blobs(vol: np.ndarray, centres: np.ndarray, sigma: np.ndarray, amp: np.ndarray) -> None:
    """Add a sum of Gaussians (voxel units) over its 3-sigma box; separable, so one matmul."""
    lo = np.maximum(np.floor((centres - 3 * sigma[:, None]).min(0)).astype(int), 0)
    hi = np.minimum(np.ceil((centres + 3 * sigma[:, None]).max(0)).astype(int) + 1, vol.shape)
    if np.any(hi <= lo):
        return
    gz, gy, gx = (_gaussian_profile(np.arange(lo[i], hi[i]), centres[:, i], sigma) for i in range(3))
    zy = ((amp.astype(np.float32)[:, None, None] * gz[:, :, None]) * gy[:, None, :]).reshape(len(amp), -1)
    vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += (zy.T @ gx).reshape(hi - lo)


def _cap_box(m: Membrane, pad: float, shape) -> tuple[np.ndarray, np.ndarray]:
    """Voxel box holding a spherical cap: along each axis the cap spans cos(angle to axis -+ half_angle)."""
    angle = np.arccos(np.clip(m.axis, -1, 1))
    far = m.radius * np.cos(np.minimum(angle + m.half_angle, np.pi))
    near = m.radius * np.cos(np.maximum(angle - m.half_angle, 0))
    lo = np.maximum(np.floor(m.centre + far - pad).astype(int), 0)
    hi = np.minimum(np.ceil(m.centre + near + pad).astype(int) + 1, shape)
    return lo, hi


def _add_membrane(vol: np.ndarray, m: Membrane, ice: np.ndarray) -> None:
    """Two headgroup layers (Gaussian profiles) around the sphere, faded at the cap's rim, only in ice."""
    lo, hi = _cap_box(m, LEAFLET_OFFSET + 3 * LEAFLET_SIGMA, vol.shape)
    if np.any(hi <= lo):
        return
    z, y, x = (np.arange(lo[i], hi[i], dtype=np.float32) - np.float32(m.centre[i]) for i in range(3))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    dist = np.sqrt(z * z + y * y + x * x)
    off = dist - np.float32(m.radius)
    profile = (np.exp(-0.5 * ((off - LEAFLET_OFFSET) / LEAFLET_SIGMA) ** 2)
               + np.exp(-0.5 * ((off + LEAFLET_OFFSET) / LEAFLET_SIGMA) ** 2))
    if m.half_angle < np.pi:
        cos_angle = (z * m.axis[0] + y * m.axis[1] + x * m.axis[2]) / np.maximum(dist, 1e-3)
        profile *= 0.5 + 0.5 * np.tanh((cos_angle - np.cos(m.half_angle)) / 0.02)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    vol[box] += np.float32(MEMBRANE_DENSITY) * profile * ice[box]


def render_density(scene: Scene) -> np.ndarray:
    """The sample's density above vacuum, float32 (z, y, x): objects, membranes, ice. Deterministic."""
    vol = np.zeros(scene.shape, dtype=np.float32)
    with threadpool_limits(1, user_api="blas"):  # tiny matmuls: threading only adds overhead (100x here)
        for obj in scene.objects:
            _add_blobs(vol, obj.centre + obj.blobs.centres, obj.blobs.sigma, obj.blobs.amp)
    if scene.membranes or scene.ice_contrast or scene.ice_texture:
        ice = scene.slab.mask()
        for membrane in scene.membranes:
            _add_membrane(vol, membrane, ice)
        if scene.ice_texture:
            ice *= _white(np.random.default_rng(scene.texture_seed), scene.shape, scene.ice_texture) \
                + np.float32(scene.ice_contrast)
        else:
            ice *= np.float32(scene.ice_contrast)
        vol += ice
    return vol


# --------------------------------------------------------------------------- imaging
@dataclass(frozen=True)
class Imaging:
    """Per-run microscope and reconstruction parameters."""

    defocus_um: float
    tilt_max_deg: float
    bfactor: float
    gain: float  # the run's scale relative to TARGET_STD, as real runs differ a little


def sample_imaging(cfg: SynthConfig, rng: np.random.Generator) -> Imaging:
    """Defocus, tilt range, envelope and scale of one run, each drawn in its configured range."""
    return Imaging(float(rng.uniform(*cfg.defocus_um)), float(rng.uniform(*cfg.tilt_max_deg)),
                   float(rng.uniform(*cfg.bfactor)), float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))))


def _frequencies(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kz, ky, kx in cycles/Å, broadcastable over the rfftn half-spectrum."""
    nz, ny, nx = shape
    kz = scipy.fft.fftfreq(nz, VOXEL_SPACING).astype(np.float32)[:, None, None]
    ky = scipy.fft.fftfreq(ny, VOXEL_SPACING).astype(np.float32)[None, :, None]
    kx = scipy.fft.rfftfreq(nx, VOXEL_SPACING).astype(np.float32)[None, None, :]
    return kz, ky, kx


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å (0.0197 Å at 300 kV)."""
    volts = voltage_kv * 1e3
    return 12.2643 / np.sqrt(volts * (1 + 0.978466e-6 * volts))


def ctf(k2: np.ndarray, imaging: Imaging, cfg: SynthConfig) -> np.ndarray:
    """-sin(chi + amplitude phase) x B envelope: negative at low k, so protein comes out dark.

    chi = pi * lambda * defocus * k^2; spherical aberration (Cs 2.7 mm) adds < 0.01 rad below
    the 20 Å Nyquist of 10 Å voxels, so it is left out.
    """
    lam = electron_wavelength(cfg.voltage_kv)
    transfer = k2 * np.float32(np.pi * lam * imaging.defocus_um * 1e4)
    transfer += np.float32(np.arcsin(cfg.amplitude_contrast))
    np.sin(transfer, out=transfer)
    envelope = k2 * np.float32(-imaging.bfactor / 4)
    transfer *= np.exp(envelope, out=envelope)
    return np.negative(transfer, out=transfer)


def wedge(kz: np.ndarray, kx: np.ndarray, tilt_max_deg: float) -> np.ndarray:
    """Measured region of a +-tilt series about y: |kz| <= tan(tilt) |kx| (broadcastable, no ky)."""
    return np.abs(kz) <= np.float32(np.tan(np.radians(tilt_max_deg))) * np.abs(kx)


def gaussian_lowpass(k2: np.ndarray, fraction_of_nyquist: float) -> np.ndarray:
    """exp(-k^2 / 2 sigma^2) with sigma a fraction of Nyquist: the stand-in for denoising."""
    lowpass = k2 * np.float32(-0.5 / (fraction_of_nyquist * 0.5 / VOXEL_SPACING) ** 2)
    return np.exp(lowpass, out=lowpass)


def _white(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Zero-mean float32 noise of the given std; uniform (3x faster to draw than normal) because
    every voxel of a filtered volume sums millions of them, which makes it Gaussian anyway."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(std * np.sqrt(12))
    return noise


def _std_from_rfft(spec: np.ndarray, nx: int) -> float:
    """Std of irfftn(spec, norm='ortho') via Parseval, without the inverse FFT."""
    power = sum((part ** 2).sum(axis=(0, 1), dtype=np.float64) for part in (spec.real, spec.imag))
    weight = np.full(spec.shape[-1], 2.0)  # columns 1..nx/2-1 stand for their conjugates too
    weight[0] = 1.0
    if nx % 2 == 0:
        weight[-1] = 1.0
    n = spec.shape[0] * spec.shape[1] * nx
    mean = float(spec[0, 0, 0].real) / np.sqrt(n)
    return float(np.sqrt(max((power * weight).sum() / n - mean ** 2, 0.0)))


def _fourier_noise(k2: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Reconstruction noise drawn directly in Fourier space. Its power grows like |k| (the
    back-projection ramp filter over ever sparser central slices); scaled so that its ortho
    inverse rfftn has per-voxel std ``std``."""
    noise = _white(rng, (*k2.shape, 2), std / np.sqrt(2)).view(np.complex64)[..., 0]
    ramp = np.sqrt(k2)
    ramp *= np.float32(1 / ramp.mean(dtype=np.float64))
    noise *= np.sqrt(ramp, out=ramp)
    return noise


def reconstruct(density: np.ndarray, imaging: Imaging, cfg: SynthConfig, rng: np.random.Generator,
                recons=("denoised",)) -> dict[str, np.ndarray]:
    """Image a density (one forward FFT) and make each requested recon (one inverse FFT each)."""
    shape = density.shape
    fft = dict(norm="ortho", workers=-1)
    kz, ky, kx = _frequencies(shape)
    k2 = kz * kz + ky * ky + kx * kx
    transfer = ctf(k2, imaging, cfg)
    measured_region = wedge(kz, kx, imaging.tilt_max_deg)
    lowpass = gaussian_lowpass(k2, cfg.lowpass)

    signal = scipy.fft.rfftn(density, **fft)
    signal *= transfer
    measured = _fourier_noise(k2, cfg.noise, rng) if cfg.noise else np.zeros_like(signal)
    measured += signal
    measured *= measured_region
    measured[0, 0, 0] = 0  # back-projection's ramp filter removes the mean
    denoised = measured * lowpass
    gain = np.float32(TARGET_STD * imaging.gain / max(_std_from_rfft(denoised, shape[-1]), 1e-30))

    def spectrum(recon: str) -> np.ndarray:
        if recon == "denoised":
            return denoised
        if recon == "wbp":
            return measured
        if recon == "ctfdeconvolved":
            # corrected towards -1 (not +1), so protein stays dark as in the real ctfdeconvolved recons
            wiener = -transfer / (transfer * transfer + np.float32(WIENER_EPS))
            return measured * (wiener * gaussian_lowpass(k2, DECONV_LOWPASS * cfg.lowpass))
        filled = wedge(kz, kx, min(imaging.tilt_max_deg + ISONET_EXTRA_DEG, 89.0)) & ~measured_region
        return (measured + signal * (np.float32(ISONET_FILL) * filled)) * lowpass

    volumes = {}
    for recon in recons:
        volumes[recon] = scipy.fft.irfftn(spectrum(recon), s=shape, **fft).astype(np.float32, copy=False)
        volumes[recon] *= gain
    return volumes


# --------------------------------------------------------------------------- runs and datasets
def _check_recons(recons) -> tuple[str, ...]:
    recons = tuple(recons)
    unknown = [r for r in recons if r not in layout.RECONS]
    if unknown or not recons:
        raise ConfigError(f"unknown reconstruction(s) {unknown or recons}; choose from {', '.join(layout.RECONS)}")
    return tuple(dict.fromkeys(recons))


def simulate_run(name: str, seed: int, cfg: SynthConfig | None = None, recons=("denoised",)):
    """(volumes, picks, scene, imaging): generate_run plus what was drawn, for metadata and tests."""
    cfg = cfg or SynthConfig()
    recons = _check_recons(recons)
    scene_rng, imaging_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    scene = sample_scene(name, cfg, scene_rng)
    imaging = sample_imaging(cfg, imaging_rng)
    volumes = reconstruct(render_density(scene), imaging, cfg, noise_rng, recons)
    return volumes, scene.picks, scene, imaging


def generate_run(name: str, seed: int, cfg: SynthConfig | None = None,
                 recons=("denoised",)) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """One run: ({recon: float32 (z, y, x) volume}, picks DataFrame experiment, particle_type, x, y, z in Å)."""
    volumes, picks, _, _ = simulate_run(name, seed, cfg, recons)
    return volumes, picks


def run_names(split: str, n: int) -> list[str]:
    """Train: the real run names, cycled with a suffix (_2, _3, ...) past seven. Test: TS_T1_1, TS_T2_1, ..."""
    if split == "test":
        return [f"TS_T{i + 1}_1" for i in range(n)]
    k = len(TRAIN_RUN_NAMES)
    return [TRAIN_RUN_NAMES[i % k] + (f"_{i // k + 1}" if i >= k else "") for i in range(n)]


def run_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, layout.SPLITS.index(split), index]).generate_state(1)[0])


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output directory {out} already exists and is not empty; pass a new --out or remove it")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished dataset into place in one rename (an empty existing --out is replaced)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    try:
        os.rename(tmp, out)
    except OSError as e:
        raise DataError(f"could not move the finished dataset to {out} ({e}); did another process create it?") from e


def _sample_submission(test_runs: list[str], shape, seed: int) -> pd.DataFrame:
    """One made-up row per class and test run, like Kaggle's sample_submission.csv."""
    rng = np.random.default_rng([seed, 7])
    rows = [(run, name, *voxel_to_angstrom(rng.uniform(0, np.array(shape) - 1))[0])
            for run in test_runs for name in CLASS_NAMES]
    return _with_id(pd.DataFrame(rows, columns=io.PICK_COLUMNS))


def _with_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.reset_index(drop=True).rename_axis("id").reset_index()


def make_dataset(out: str | Path, n_train: int = 4, n_test: int = 2, shape=(96, 256, 256), seed: int = 0,
                 recons=("denoised",), cfg: SynthConfig | None = None, progress: bool = True) -> Path:
    """Write a synthetic competition directory at ``out`` (``shape`` overrides ``cfg.shape``).

    Train runs get ``recons`` and all six picks files; test runs get ``denoised`` only, with their
    picks in ``solution.csv``. Built in a hidden sibling directory and renamed at the end, so a
    crash leaves nothing half-made. Deterministic for a seed.
    """
    out = Path(out)
    _check_out(out)
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ConfigError(f"need at least one run (got n_train={n_train}, n_test={n_test})")
    cfg = replace(cfg or SynthConfig(), shape=tuple(shape))
    recons = _check_recons(recons)
    jobs = ([("train", name, i, recons) for i, name in enumerate(run_names("train", n_train))]
            + [("test", name, i, ("denoised",)) for i, name in enumerate(run_names("test", n_test))])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # plain mkdir (not mkdtemp) so the dataset gets the user's usual permissions
    try:
        solution, runs_info = [], {}
        for split, name, index, run_recons in tqdm(jobs, desc="synthetic runs", unit="run",
                                                   disable=None if progress else True):
            volumes, picks, scene, imaging = simulate_run(name, run_seed(seed, split, index), cfg, run_recons)
            _write_run(tmp, split, name, volumes, picks)
            if split == "test":
                solution.append(picks)
            runs_info[name] = _run_info(split, scene, imaging)
        test_runs = run_names("test", n_test)
        solution_df = pd.concat(solution) if solution else pd.DataFrame(columns=io.PICK_COLUMNS)
        _with_id(solution_df).to_csv(tmp / layout.SOLUTION_CSV, index=False)
        _sample_submission(test_runs, cfg.shape, seed).to_csv(tmp / "sample_submission.csv", index=False)
        meta = {"generator": "czii_kit.data.synth", "version": __version__, "seed": seed,
                "config": asdict(cfg), "runs": runs_info}
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_run(root: Path, split: str, name: str, volumes: dict[str, np.ndarray], picks: pd.DataFrame) -> None:
    for recon, vol in volumes.items():
        io.write_tomogram(layout.tomogram_path(root, split, name, recon), vol)
    if split == "train":
        for particle in CLASS_NAMES:
            xyz = picks.loc[picks["particle_type"] == particle, ["x", "y", "z"]].to_numpy()
            io.write_picks(root, name, particle, xyz)


def _run_info(split: str, scene: Scene, imaging: Imaging) -> dict:
    kinds = pd.Series([o.kind for o in scene.objects]).value_counts()
    return {"split": split, **asdict(imaging), "ice_thickness_vox": round(scene.slab.thickness, 1),
            "counts": {k: int(v) for k, v in kinds.items()}, "membranes": len(scene.membranes)}


# --------------------------------------------------------------------------- built-in dataset
def builtin_dataset_path(cache_dir: str | Path | None = None) -> Path:
    """Where the built-in dataset lives: <cache>/synthetic-<hash of its parameters and the version>."""
    base = Path(cache_dir) if cache_dir is not None else Path(os.environ.get("CZII_DATA_DIR") or "data")
    key = json.dumps({**BUILTIN, "config": asdict(SynthConfig()), "version": __version__}, sort_keys=True)
    return base / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def ensure_builtin_dataset(cache_dir: str | Path | None = None) -> Path:
    """The default data of every tool: generated once (cache: $CZII_DATA_DIR or ./data), then reused."""
    path = builtin_dataset_path(cache_dir)
    if (path / layout.SOLUTION_CSV).is_file():
        return path
    print(f"generating the built-in synthetic dataset in {path} (once; later runs reuse it)", flush=True)
    try:
        return make_dataset(path, **BUILTIN)
    except DataError:
        if (path / layout.SOLUTION_CSV).is_file():  # another process finished it first
            return path
        raise
