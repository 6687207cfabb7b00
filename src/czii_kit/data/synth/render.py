"""Rendering a scene into a density volume: rotated templates, membranes, gold, the ice they displace.

Units: relative density (protein = 1). Vitreous ice is ``ICE_DENSITY`` (0.93 / 1.35 g/cm^3) inside
the slab and vacuum is 0 outside; a particle adds its density minus the ice it displaces, so
what the microscope sees of it is its contrast against the solvent.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

ICE_DENSITY = 0.69  # vitreous ice 0.93 g/cm^3 over protein 1.35 g/cm^3
GOLD_DENSITY = 14.3  # 19.3 g/cm^3 over protein
HEADGROUP_DENSITY = 0.3  # each lipid headgroup layer above the ice
TAIL_DENSITY = -0.15  # the hydrocarbon core is lighter than the ice
LEAFLET_OFFSET = 2.0  # voxels from the bilayer mid-plane to each headgroup layer (~40 Å apart)
LEAFLET_SIGMA = 0.7  # voxels


def displacing(density: np.ndarray) -> np.ndarray:
    """A template's contrast against the ice: its density minus the ice its volume pushes out."""
    return density - np.float32(ICE_DENSITY) * np.minimum(density, np.float32(1))


def _box(centre: np.ndarray, half: float, shape) -> tuple[np.ndarray, np.ndarray]:
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
    return lo, hi


def add_template(volume: np.ndarray, density: np.ndarray, centre, rotation: np.ndarray,
                 amplitude: float = 1.0) -> None:
    """Add ``density`` rotated by ``rotation`` (acting on (z, y, x) vectors) with its middle voxel at
    ``centre`` (voxels, sub-voxel precise), trilinear interpolation, clipped at the volume's edges."""
    centre = np.asarray(centre, dtype=float)
    middle = (np.array(density.shape) - 1) / 2
    lo, hi = _box(centre, middle.max() + 1, volume.shape)
    if np.any(hi <= lo):
        return
    inverse = np.asarray(rotation, dtype=float).T
    patch = ndimage.affine_transform(density, inverse, offset=inverse @ (lo - centre) + middle,
                                     output_shape=tuple(hi - lo), order=1, mode="constant", cval=0.0)
    view = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    view += patch * np.float32(amplitude) if amplitude != 1 else patch


def add_ball(volume: np.ndarray, centre, radius: float, value: float) -> None:
    """A solid sphere (voxels) with partial-volume edges: a gold bead."""
    centre = np.asarray(centre, dtype=float)
    lo, hi = _box(centre, radius + 1, volume.shape)
    if np.any(hi <= lo):
        return
    z, y, x = (np.arange(lo[i], hi[i], dtype=np.float32) - np.float32(centre[i]) for i in range(3))
    dist = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2)
    volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += np.float32(value) * np.clip(radius + 0.5 - dist, 0, 1)


def _cap_box(m, pad: float, shape) -> tuple[np.ndarray, np.ndarray]:
    """Voxel box holding a spherical cap: along each axis the cap spans cos(angle to axis -+ half_angle)."""
    angle = np.arccos(np.clip(m.axis, -1, 1))
    far = m.radius * np.cos(np.minimum(angle + m.half_angle, np.pi))
    near = m.radius * np.cos(np.maximum(angle - m.half_angle, 0))
    lo = np.maximum(np.floor(m.centre + far - pad).astype(int), 0)
    hi = np.minimum(np.ceil(m.centre + near + pad).astype(int) + 1, shape)
    return lo, hi


def add_membrane(volume: np.ndarray, m, ice: np.ndarray) -> None:
    """A lipid bilayer on a sphere (cap or closed vesicle): two headgroup layers around a lighter
    core, faded at the cap's rim, only inside the ice."""
    lo, hi = _cap_box(m, LEAFLET_OFFSET + 3 * LEAFLET_SIGMA, volume.shape)
    if np.any(hi <= lo):
        return
    z, y, x = (np.arange(lo[i], hi[i], dtype=np.float32) - np.float32(m.centre[i]) for i in range(3))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    dist = np.sqrt(z * z + y * y + x * x)
    off = dist - np.float32(m.radius)
    profile = HEADGROUP_DENSITY * (np.exp(-0.5 * ((off - LEAFLET_OFFSET) / LEAFLET_SIGMA) ** 2)
                                   + np.exp(-0.5 * ((off + LEAFLET_OFFSET) / LEAFLET_SIGMA) ** 2))
    profile += TAIL_DENSITY * np.exp(-0.5 * (off / LEAFLET_SIGMA) ** 2)
    if m.half_angle < np.pi:
        cos_angle = (z * m.axis[0] + y * m.axis[1] + x * m.axis[2]) / np.maximum(dist, 1e-3)
        profile *= 0.5 + 0.5 * np.tanh((cos_angle - np.cos(m.half_angle)) / 0.02)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    volume[box] += profile.astype(np.float32) * ice[box]


def render_density(scene) -> np.ndarray:
    """The specimen's density above vacuum, float32 (z, y, x): ice, then objects and membranes in it."""
    ice = scene.slab.mask()
    volume = ice * np.float32(ICE_DENSITY)
    contrast = {}
    for obj in scene.objects:
        if obj.kind == "gold":
            add_ball(volume, obj.centre, obj.radius, GOLD_DENSITY - ICE_DENSITY)
            continue
        key = id(obj.template)
        if key not in contrast:
            contrast[key] = displacing(obj.template.density)
        add_template(volume, contrast[key], obj.centre, obj.rotation, obj.amplitude)
    for membrane in scene.membranes:
        add_membrane(volume, membrane, ice)
    return volume
