"""The specimen of one run, drawn before anything is rendered: cheap even at full size.

The six classes at the real per-run counts (scaled to the volume), in random orientations and
with per-copy density variation, packed so that no two bodies (the spheres holding 97 % of each
object's mass) intersect, inside an ice slab; among them non-target complexes (a few species per
run, many copies each, many of them the size and mass of the hard classes), vesicles and membrane
fragments, and gold beads on the ice surfaces. Picks are the true centres plus a few Å of
curator error, converted to Å once with ``voxel_to_angstrom``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from czii_kit.data.synth.config import FULL_SHAPE, REAL_COUNTS, TRAIN_RUN_NAMES, SynthConfig
from czii_kit.data.synth.distractors import sample_species
from czii_kit.data.synth.phantoms import phantom_templates, random_rotation
from czii_kit.data.synth.render import LEAFLET_OFFSET
from czii_kit.data.synth.templates import Template, TemplateSet, map_templates
from czii_kit.errors import DataError
from czii_kit.particles import CLASS_NAMES, VOXEL_SPACING, voxel_to_angstrom

OVERLAP = 1.0  # centres at least this x the sum of body radii apart: crowded, never overlapping


@dataclass(frozen=True)
class Slab:
    """The ice layer: a plane of given thickness (voxels) with soft faces, tilted about x only.

    Flat along x, the tilt direction, as reconstructions are flattened, and as the projector's
    periodic x requires."""

    shape: tuple[int, int, int]
    centre: float  # z of the mid-plane at the volume's centre
    slope_y: float
    thickness: float
    edge: float = 2.0  # voxels over which the ice fades out

    def mid_z(self, y):
        return self.centre + self.slope_y * (np.asarray(y, dtype=float) - (self.shape[1] - 1) / 2)

    def depth(self, zyx: np.ndarray) -> np.ndarray:
        """Distance (voxels) of (N, 3) points from the mid-plane along z."""
        zyx = np.asarray(zyx, float).reshape(-1, 3)
        return np.abs(zyx[:, 0] - self.mid_z(zyx[:, 1]))

    def mask(self) -> np.ndarray:
        """1 inside the ice, 0 outside, a linear ramp over ``edge`` voxels around each face; float32 (z, y, x)."""
        nz, ny, nx = self.shape
        depth = np.abs(np.arange(nz, dtype=np.float32)[:, None] - self.mid_z(np.arange(ny))[None].astype(np.float32))
        ramp = np.clip(0.5 + (self.thickness / 2 - depth) / (2 * self.edge), 0, 1).astype(np.float32)
        return np.ascontiguousarray(np.broadcast_to(ramp[:, :, None], self.shape))


@dataclass(frozen=True)
class Placed:
    """One object: a class name (targets), "distractor" or "gold"."""

    kind: str
    centre: np.ndarray  # (z, y, x) voxels
    radius: float  # voxels: body radius, for packing (gold: the bead's radius)
    template: Template | None = None
    rotation: np.ndarray | None = None  # acts on (z, y, x) vectors
    amplitude: float = 1.0


@dataclass(frozen=True)
class Membrane:
    """A lipid bilayer on a sphere: a closed vesicle (half_angle = pi) or a cap-shaped fragment."""

    centre: np.ndarray  # (z, y, x) voxels of the sphere's centre
    radius: float  # voxels
    axis: np.ndarray  # unit vector from the centre to the middle of the cap
    half_angle: float  # radians


@dataclass(frozen=True)
class Scene:
    """Everything drawn for one run before imaging; ``render.render_density`` turns it into a volume."""

    name: str
    shape: tuple[int, int, int]
    slab: Slab
    objects: tuple[Placed, ...]
    membranes: tuple[Membrane, ...]
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


def stochastic_round(value: float, rng: np.random.Generator) -> int:
    """Floor or ceil with probabilities that keep the expectation exact."""
    whole = int(np.floor(value))
    return whole + int(rng.random() < value - whole)


def sample_counts(expected: dict[str, float], rng: np.random.Generator) -> dict[str, int]:
    """Integer counts per class with the given expectations, at least one of each class."""
    return {c: max(1, stochastic_round(v, rng)) for c, v in expected.items()}


def _count_profile(name: str, rng: np.random.Generator) -> dict[str, int]:
    """A real run's counts: the namesake's (also for cycled names like TS_5_4_2), else a random one."""
    for key in (name, name.rsplit("_", 1)[0]):
        if key in REAL_COUNTS:
            return REAL_COUNTS[key]
    return REAL_COUNTS[TRAIN_RUN_NAMES[rng.integers(len(TRAIN_RUN_NAMES))]]


def _sample_slab(shape, rng: np.random.Generator, cfg: SynthConfig) -> Slab:
    nz, ny, _ = shape
    thickness = rng.uniform(*cfg.ice_fraction) * nz
    room = max((nz - thickness) / 2 - 1, 0.0)  # free z on either side; offset + tilt stay within it
    offset, tilt = rng.uniform(-1, 1, 2) * room / 2
    return Slab(tuple(shape), (nz - 1) / 2 + offset, tilt / max((ny - 1) / 2, 1), thickness)


class Packer:
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
        room = half - min(radius, half - 1)  # the whole object in the ice when it fits
        if at_surface:
            dz = self.rng.choice([-1.0, 1.0], n) * (room - self.rng.uniform(0, min(room, 1.0), n))
        else:
            dz = self.rng.uniform(-room, room, n)
        return np.stack([self.slab.mid_z(y) + dz, y, x], axis=1)

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


def _copy(kind: str, template: Template, centre, rng: np.random.Generator, jitter: float) -> Placed:
    """A randomly oriented copy with its own density factor (log-normal, std ``jitter``)."""
    return Placed(kind, centre, template.radius, template, random_rotation(rng), float(np.exp(rng.normal(0, jitter))))


def _place_targets(packer: Packer, counts: dict[str, int], templates: TemplateSet, cfg: SynthConfig,
                   rng: np.random.Generator) -> list[Placed]:
    """Largest first (packs best); at least one of every class or a DataError."""
    placed = []
    for name in sorted(CLASS_NAMES, key=lambda c: -templates.targets[c].radius):
        template = templates.targets[name]
        for _ in range(counts[name]):
            centre = packer.place(template.radius)
            if centre is None:
                break
            placed.append(_copy(name, template, centre, rng, cfg.intensity_jitter))
        if not any(p.kind == name for p in placed):
            raise DataError(f"could not fit a single {name} into a {cfg.shape} volume; use a larger --shape "
                            "or a lower density")
    return placed


def _place_distractors(packer: Packer, n: int, templates: TemplateSet, cfg: SynthConfig,
                       rng: np.random.Generator) -> list[Placed]:
    species = sample_species(templates, cfg.distractor_species, rng)
    placed = []
    for _ in range(n):
        template = species[rng.integers(len(species))]
        centre = packer.place(template.radius, tries=64)
        if centre is not None:
            placed.append(_copy("distractor", template, centre, rng, cfg.intensity_jitter))
    return placed


def _place_gold(packer: Packer, n: int, rng: np.random.Generator) -> list[Placed]:
    """Gold fiducials (radius 25-50 Å) sit on the ice surfaces."""
    placed = []
    for _ in range(n):
        radius = rng.uniform(25.0, 50.0) / VOXEL_SPACING
        centre = packer.place(radius, at_surface=True, tries=64)
        if centre is not None:
            placed.append(Placed("gold", centre, radius))
    return placed


def _sample_membranes(packer: Packer, n: int, rng: np.random.Generator) -> list[Membrane]:
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


def templates_for(cfg: SynthConfig) -> TemplateSet:
    """The particle models a config asks for: density maps (shipped or ``cfg.maps``) or phantoms."""
    return phantom_templates() if cfg.templates == "procedural" else map_templates(cfg.maps)


def sample_scene(name: str, cfg: SynthConfig, rng: np.random.Generator, templates: TemplateSet | None = None) -> Scene:
    """Everything in a run and where (templates: ``templates_for(cfg)`` by default)."""
    templates = templates or templates_for(cfg)
    shape = cfg.shape
    slab = _sample_slab(shape, rng, cfg)
    packer = Packer(slab, rng)
    counts = sample_counts(expected_counts(shape, cfg.density, _count_profile(name, rng)), rng)
    targets = _place_targets(packer, counts, templates, cfg, rng)
    scale = volume_scale(shape)
    membranes = _sample_membranes(packer, stochastic_round(cfg.membranes * scale, rng), rng)
    distractors = _place_distractors(packer, stochastic_round(cfg.distractors * scale, rng), templates, cfg, rng)
    gold = _place_gold(packer, stochastic_round(cfg.gold * scale, rng), rng)
    return Scene(name, shape, slab, tuple(targets + distractors + gold), tuple(membranes),
                 _jittered_picks(name, targets, cfg.jitter_angstrom, rng))


def _jittered_picks(name: str, targets: list[Placed], jitter: float, rng: np.random.Generator) -> pd.DataFrame:
    """Curated picks in Å: the true centres plus the curators' few-Å error, in class order."""
    centres = np.array([t.centre for t in targets]).reshape(-1, 3)
    xyz = voxel_to_angstrom(centres) + rng.normal(0.0, jitter, centres.shape)
    picks = pd.DataFrame({"experiment": name, "particle_type": [t.kind for t in targets],
                          "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    order = picks["particle_type"].map(CLASS_NAMES.index)
    return picks.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)
