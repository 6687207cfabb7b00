"""Particle templates: density maps of the real structures, resampled to the dataset's voxel size.

A template is a small float32 (z, y, x) box at ``VOXEL_SPACING`` holding relative density
(protein = 1, as in 1.35 g/cm^3; RNA-rich parts exceed it), with its centre of mass on the middle
voxel: that is where curators click, so a pick at the placed centre is a pick at the particle.

A maps folder holds MRC files and ``maps.yaml``, which names one map per target class and
optionally a list of non-target ("distractors") maps::

    apo-ferritin: 8cpv.mrc                                   # short form
    ribosome: {file: 6qzp.mrc, mass_kda: 3267}                # mass: scale so the integral matches it
    thyroglobulin: {file: tg.mrc, voxel_size: 5.0}            # Å, when the header's is missing or wrong
    distractors: [8vaf.mrc, {file: other.mrc, mass_kda: 150}]

Maps may come at any voxel size. With ``mass_kda`` the map is scaled so that its integral is the
molecule's volume (1.21 Å^3/Da); without, so that the densest half of its mass has mean density
``CORE_DENSITY`` (what the shipped maps have at 10 Å), which is within ~20 % for globular proteins.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.fft
import yaml
from scipy import ndimage

from czii_kit.data.synth.mrc import read_mrc
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, RADIUS, VOXEL_SPACING

MAPPING_FILE = "maps.yaml"
DISTRACTORS = "distractors"
ANGSTROM3_PER_DALTON = 1.21  # protein partial specific volume 0.73 cm^3/g
CORE_DENSITY = 0.7  # mean relative density of the densest half of the mass (shipped maps at 10 Å: 0.55-0.74)
BODY_MASS = 0.97  # a template's packing radius holds this much of its mass
KEEP_MASS = 0.999  # boxes are cropped to the radius holding this much mass (+ a margin for the blur)
COARSER = 1.05  # coarsening by more than this low-passes first (less: the spline is the better resampler)
SIZE_RATIO = (0.25, 4.0)  # a class map's radius over the class radius: outside this, the voxel size is wrong


@dataclass(frozen=True, eq=False)
class Template:
    """One particle model on the dataset's grid, centre of mass at the middle voxel."""

    name: str
    density: np.ndarray  # float32 (z, y, x), relative density
    radius: float  # voxels: holds BODY_MASS of the mass (objects are packed so these spheres never meet)

    @property
    def centre(self) -> np.ndarray:
        return (np.array(self.density.shape) - 1) / 2

    @property
    def mass(self) -> float:
        """Integral of the relative density, voxels (= molecular volume / voxel volume)."""
        return float(self.density.sum(dtype=np.float64))


@dataclass(frozen=True)
class TemplateSet:
    """The six class templates and the non-target maps distractor complexes are built from."""

    targets: dict[str, Template]
    distractors: tuple[Template, ...]


def packaged_maps_dir() -> Path:
    """The maps shipped with the kit (Apache-2.0, see maps/README.md and maps/LICENSE)."""
    return Path(__file__).resolve().parent / "maps"


# --------------------------------------------------------------------------- geometry of a map
def centre_of_mass(density: np.ndarray) -> np.ndarray:
    """(z, y, x) voxel index of the centre of mass."""
    mass = density.sum(dtype=np.float64)
    return np.array([(np.arange(n) * density.sum(axis=tuple(a for a in range(3) if a != i), dtype=np.float64)).sum()
                     for i, n in enumerate(density.shape)]) / mass


def radial_mass(density: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(radii in Å from the centre of mass, sorted; cumulative fraction of the mass within each)."""
    grid = np.indices(density.shape).reshape(3, -1).T
    r = np.linalg.norm((grid - centre_of_mass(density)) * np.asarray(spacing, float), axis=1)
    order = np.argsort(r)
    weights = density.ravel()[order].astype(np.float64)
    return r[order], np.cumsum(weights) / weights.sum()


def mass_radius(density: np.ndarray, spacing, fraction: float) -> float:
    """Radius (Å) around the centre of mass that holds ``fraction`` of the mass."""
    r, cumulative = radial_mass(np.clip(density, 0, None), spacing)
    return float(r[min(np.searchsorted(cumulative, fraction), len(r) - 1)])


def radius_of_gyration(density: np.ndarray, spacing) -> float:
    """Å."""
    grid = np.indices(density.shape).reshape(3, -1).T
    r2 = (((grid - centre_of_mass(density)) * np.asarray(spacing, float)) ** 2).sum(axis=1)
    return float(np.sqrt((r2 * density.ravel()).sum() / density.sum(dtype=np.float64)))


# --------------------------------------------------------------------------- resampling
def _lowpass(density: np.ndarray, spacing: np.ndarray, cutoff: float) -> np.ndarray:
    """Remove spatial frequencies above ``cutoff`` (1/Å) with a cosine edge from 0.8 x cutoff: no aliasing."""
    axes = [scipy.fft.fftfreq(n, d) for n, d in zip(density.shape[:2], spacing[:2])]
    axes.append(scipy.fft.rfftfreq(density.shape[2], spacing[2]))
    k = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    edge = np.clip((k - 0.8 * cutoff) / (0.2 * cutoff), 0, 1)
    spectrum = scipy.fft.rfftn(density) * (0.5 + 0.5 * np.cos(np.pi * edge))
    return scipy.fft.irfftn(spectrum, s=density.shape)


def resample(density: np.ndarray, spacing, new_spacing: float, keep_mass: float = KEEP_MASS) -> np.ndarray:
    """The map on a cubic grid of ``new_spacing`` Å, odd box centred on its centre of mass.

    Frequencies the new grid cannot hold are removed first (when coarsening), then cubic splines
    sample the new grid; mass (integral x voxel volume), centre and radius of gyration are kept.
    """
    density = np.asarray(density, dtype=np.float64)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    com = centre_of_mass(np.clip(density, 0, None))
    half = int(np.ceil(mass_radius(density, spacing, keep_mass) / new_spacing)) + 2
    if spacing.max() * COARSER < new_spacing:
        density = _lowpass(density, spacing, 0.5 / new_spacing)
    offsets = np.arange(-half, half + 1) * new_spacing
    coords = np.meshgrid(*(com[i] + offsets / spacing[i] for i in range(3)), indexing="ij")
    out = ndimage.map_coordinates(density, coords, order=3, mode="constant", cval=0.0)
    return out.astype(np.float32)


def normalize(density: np.ndarray, spacing: float, mass_kda: float | None) -> np.ndarray:
    """Relative density (protein = 1): from the molecular mass when known, else from the core density."""
    density = np.clip(density, 0, None)
    if mass_kda:
        scale = mass_kda * 1e3 * ANGSTROM3_PER_DALTON / (density.sum(dtype=np.float64) * spacing ** 3)
    else:
        values = np.sort(density.ravel())[::-1]
        half = np.searchsorted(np.cumsum(values, dtype=np.float64), 0.5 * values.sum(dtype=np.float64)) + 1
        scale = CORE_DENSITY / values[:half].mean()
    return (density * scale).astype(np.float32)


# --------------------------------------------------------------------------- maps folders
@dataclass(frozen=True)
class MapEntry:
    name: str  # a class name, or DISTRACTORS
    path: Path
    mass_kda: float | None = None
    voxel_size: float | None = None  # Å, overrides the header


def _entry(name: str, value, folder: Path, mapping: Path) -> MapEntry:
    if isinstance(value, str):
        value = {"file": value}
    if not isinstance(value, dict) or not isinstance(value.get("file"), str):
        raise ConfigError(f"{mapping}: entry {name!r} must be a file name or {{file: NAME.mrc, mass_kda: ..., "
                          f"voxel_size: ...}}; got {value!r}")
    extra = sorted(set(value) - {"file", "mass_kda", "voxel_size"})
    if extra:
        raise ConfigError(f"{mapping}: entry {name!r} has unknown key(s) {', '.join(extra)}; "
                          "allowed: file, mass_kda, voxel_size")
    for key in ("mass_kda", "voxel_size"):
        if value.get(key) is not None and not (isinstance(value[key], (int, float)) and value[key] > 0):
            raise ConfigError(f"{mapping}: {name} {key} = {value[key]!r} must be a positive number")
    path = folder / value["file"]
    if not path.is_file():
        raise DataError(f"map {path} (named for {name} in {mapping}) does not exist; fix the file name")
    return MapEntry(name, path, value.get("mass_kda"), value.get("voxel_size"))


def read_mapping(folder: str | Path) -> list[MapEntry]:
    """The entries of ``folder/maps.yaml``, checked: all six classes, known names, existing files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"maps folder {folder} does not exist; pass a folder holding {MAPPING_FILE} and the "
                          f"MRC maps it names (example: {packaged_maps_dir()})")
    mapping = folder / MAPPING_FILE
    if not mapping.is_file():
        raise ConfigError(f"maps folder {folder} has no {MAPPING_FILE}; write one that maps each class to a map, "
                          f"e.g. 'ribosome: my_ribosome.mrc' (example: {packaged_maps_dir() / MAPPING_FILE})")
    try:
        doc = yaml.safe_load(mapping.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{mapping} is not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{mapping} must map class names to MRC files, e.g. 'ribosome: my_ribosome.mrc'")
    allowed = (*CLASS_NAMES, DISTRACTORS)
    for key in doc:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{mapping}: unknown class name {key!r}{hint}; expected {', '.join(allowed)}")
    missing = [c for c in CLASS_NAMES if c not in doc]
    if missing:
        raise ConfigError(f"{mapping} has no map for {', '.join(missing)}; add a line '{missing[0]}: FILE.mrc' "
                          "for each (the shipped maps are in " + str(packaged_maps_dir()) + ")")
    entries = [_entry(c, doc[c], folder, mapping) for c in CLASS_NAMES]
    extra = doc.get(DISTRACTORS) or []
    for value in [extra] if isinstance(extra, (str, dict)) else extra:
        entries.append(_entry(DISTRACTORS, value, folder, mapping))
    return entries


def load_template(entry: MapEntry, spacing: float = VOXEL_SPACING) -> Template:
    """Read, resample and normalize one map, checking its voxel size."""
    density, header_voxel = read_mrc(entry.path)
    voxel = np.full(3, entry.voxel_size) if entry.voxel_size else header_voxel
    if not (voxel > 0).all():
        raise DataError(f"{entry.path}: the header gives no voxel size ({voxel.tolist()} Å); add 'voxel_size: <Å>' "
                        f"to its entry in {MAPPING_FILE}")
    if density.clip(0).sum() <= 0:
        raise DataError(f"{entry.path}: the map has no positive density; is protein stored as negative values?")
    density = normalize(resample(density, voxel, spacing), spacing, entry.mass_kda)
    template = Template(entry.name, density, mass_radius(density, 1.0, BODY_MASS))
    if entry.name in RADIUS:
        ratio = template.radius * spacing / RADIUS[entry.name]
        if not SIZE_RATIO[0] <= ratio <= SIZE_RATIO[1]:
            raise DataError(f"{entry.path}: at voxel size {voxel.max():g} Å this {entry.name} map is "
                            f"{template.radius * spacing:.0f} Å in radius, the class ~{RADIUS[entry.name]:.0f} Å; "
                            f"the voxel size is wrong: fix the header or set 'voxel_size:' in {MAPPING_FILE}")
    return template


@lru_cache(maxsize=8)
def _load_folder(folder: str, stamp: tuple, spacing: float) -> TemplateSet:
    entries = read_mapping(folder)
    templates = [load_template(e, spacing) for e in entries]
    return TemplateSet({t.name: t for t in templates if t.name != DISTRACTORS},
                       tuple(t for t in templates if t.name == DISTRACTORS))


def map_templates(folder: str | Path | None = None, spacing: float = VOXEL_SPACING) -> TemplateSet:
    """Templates from a maps folder (default: the shipped maps); cached until its maps.yaml changes."""
    folder = Path(folder) if folder is not None else packaged_maps_dir()
    mapping = folder / MAPPING_FILE
    stamp = (mapping.stat().st_mtime_ns, mapping.stat().st_size) if mapping.is_file() else ()
    return _load_folder(str(folder.resolve() if folder.exists() else folder), stamp, float(spacing))
