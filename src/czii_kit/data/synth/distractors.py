"""Non-target complexes: a few species per run, each appearing many times, like the contaminants
and unlabelled proteins of a real sample.

With density maps, a species is an assembly of 1-8 copies of the distractor map(s) (C1, C2, D2 or
a compact random cluster), so its texture is a real protein's and its mass spans beta-amylase to
beta-galactosidase / thyroglobulin: the lookalikes that make the hard classes hard. With phantoms
(or maps folders without distractors), a species is a random procedural protein.
"""
from __future__ import annotations

import numpy as np

from czii_kit.data.synth.phantoms import C1, C2, D2, random_protein, random_rotation
from czii_kit.data.synth.render import add_template
from czii_kit.data.synth.templates import BODY_MASS, Template, TemplateSet, mass_radius

COPIES = (1, 2, 3, 4, 6, 8)  # subunits per assembly
COPY_WEIGHTS = (0.15, 0.15, 0.1, 0.2, 0.2, 0.2)  # most as heavy as the hard classes
CONTACT = 1.5  # subunit centres this x the subunit's body radius apart: touching, interfaces overlapping


def _symmetric_positions(group: np.ndarray, distance: float, rng: np.random.Generator) -> list:
    """(position, rotation) of each subunit of a point-group assembly, the first at ``distance``/2 off-axis."""
    offset = rng.standard_normal(3)
    offset *= distance / 2 / np.linalg.norm(offset)
    base = random_rotation(rng)
    return [(g @ offset, g @ base) for g in group]


def _cluster_positions(n: int, distance: float, rng: np.random.Generator, tries: int = 1000) -> list:
    """A compact random cluster: each new subunit touches a random earlier one and clears the others
    (the first of ``tries`` candidates that does; there is always room on the outside)."""
    positions = [np.zeros(3)]
    for _ in range(tries):
        if len(positions) == n:
            break
        direction = rng.standard_normal(3)
        candidate = positions[rng.integers(len(positions))] + distance * direction / np.linalg.norm(direction)
        if min(np.linalg.norm(candidate - p) for p in positions) >= 0.95 * distance:
            positions.append(candidate)
    return [(p, random_rotation(rng)) for p in positions]


def assemble(subunit: Template, n: int, rng: np.random.Generator) -> Template:
    """One species: ``n`` copies of a subunit map, symmetric when n is 1, 2 or 4, else a cluster."""
    distance = CONTACT * subunit.radius
    group = {1: C1, 2: C2, 4: D2}.get(n)
    parts = _symmetric_positions(group, distance, rng) if group is not None else _cluster_positions(n, distance, rng)
    centres = np.array([p for p, _ in parts])
    centres -= centres.mean(axis=0)  # equal masses: the centre of mass is the mean
    half = int(np.ceil(np.abs(centres).max() + (subunit.density.shape[0] - 1) / 2))
    density = np.zeros((2 * half + 1,) * 3, dtype=np.float32)
    for centre, (_, rotation) in zip(centres, parts):
        add_template(density, subunit.density, centre + half, rotation)
    return Template("distractor", density, mass_radius(density, 1.0, BODY_MASS))


def sample_species(templates: TemplateSet, n: int, rng: np.random.Generator) -> list[Template]:
    """The ``n`` non-target species of one run."""
    if not templates.distractors:
        return [random_protein(rng) for _ in range(n)]
    return [assemble(templates.distractors[rng.integers(len(templates.distractors))],
                     int(rng.choice(COPIES, p=COPY_WEIGHTS)), rng) for _ in range(n)]
