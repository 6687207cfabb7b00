"""Read (and, for the synthetic generator, write) tomograms and copick picks.

Readers validate everything a user can get wrong and raise ``DataError`` naming the
path and the fix. Readers never write: nothing lands in the user's data directory.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit.data import layout
from czii_kit.errors import DataError, IncompleteDataError
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet, angstrom_to_voxel
from czii_kit.tables import PICK_COLUMNS, XYZ


# --------------------------------------------------------------------------- tomograms
def open_multiscale(path: str | Path, store=None):
    """Open an OME-NGFF multiscale zarr v2 group read-only (at ``path``, or from a zarr ``store`` such as the
    mapping copick hands out, ``path`` then naming it in errors) and check its metadata."""
    import zarr

    if store is None:
        path = Path(path)
        if not path.exists():
            raise DataError(f"tomogram {path} does not exist")
    try:
        node = zarr.open(store if store is not None else str(path), mode="r")
    except Exception as e:  # zarr raises several types for unreadable stores
        raise DataError(f"{path} is not a readable zarr store ({type(e).__name__}: {e}); czii-kit reads zarr v2 "
                        "OME-NGFF groups (.zgroup, .zattrs, levels 0/1/2) as the competition ships them: copy or "
                        "download this tomogram again") from e
    if not isinstance(node, zarr.hierarchy.Group):
        raise DataError(
            f"{path} is a bare zarr array, not an OME-NGFF multiscale group with levels 0/1/2; "
            "re-export it as a group (e.g. with czii_kit.data.io.write_tomogram)"
        )
    if "multiscales" not in node.attrs:
        raise DataError(f"{path} has no OME-NGFF 'multiscales' attribute in .zattrs; it is not a multiscale group")
    return node


def tomogram_levels(path: str | Path) -> list[str]:
    group = open_multiscale(path)
    return [d["path"] for d in group.attrs["multiscales"][0]["datasets"]]


def level_spacing(group, level: int, path: str | Path = "") -> float:
    """Å per voxel of one level, from its OME-NGFF scale (isotropic), else the competition's spacing x 2^level."""
    for dataset in group.attrs["multiscales"][0].get("datasets", []):
        if str(dataset.get("path")) != str(level):
            continue
        for transform in dataset.get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = [float(s) for s in transform["scale"]][-3:]
                if not (len(scale) == 3 and all(math.isfinite(s) and s > 0 for s in scale)):
                    raise DataError(f"{path}: level {level} has an invalid OME-NGFF scale {transform['scale']}")
                if max(scale) - min(scale) > 1e-3 * max(scale):
                    raise DataError(f"{path}: level {level} has anisotropic voxels {scale} (z, y, x Å); "
                                    "czii-kit needs isotropic tomograms")
                return scale[-1]
    return VOXEL_SPACING * 2**int(level)


def read_level(path: str | Path, level: int = 0, store=None) -> tuple[np.ndarray, float]:
    """(float32 (z, y, x) array, Å per voxel) of one level of a multiscale zarr (see ``open_multiscale``)."""
    group = checked_level(path, level, store)
    key = str(level)
    array = group[key]  # each group[key] reads the array's metadata again
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}/{key} holds {array.dtype} values; a tomogram is real-valued (float or integer "
                        "densities): export the reconstruction again")
    try:
        vol = array[...]
    except Exception as e:
        raise DataError(f"{path}/{key} could not be read; the store is corrupt ({type(e).__name__}: {e}): copy or "
                        "download this tomogram again") from e
    if vol.ndim != 3:
        raise DataError(f"{path}/{key} has shape {vol.shape}; expected a 3-D (z, y, x) volume")
    fill = _fill_value(array)
    if vol.size and fill is not None and np.all(vol == fill):
        raise IncompleteDataError(f"{path}/{key} holds nothing but its fill value {fill!r}: no chunk has data (an "
                                  "empty or failed copy); copy or download this tomogram again")
    return np.ascontiguousarray(vol, dtype=np.float32), level_spacing(group, level, path)


@dataclass(frozen=True)
class Tomogram:
    """One reconstruction of one run, at one multiscale level, with its true voxel size."""

    run: str
    split: str
    recon: str
    level: int
    volume: np.ndarray  # float32 (z, y, x), raw values
    spacing: float  # Å per voxel of this level (the OME-NGFF scale, 10.012444 at level 0 on Kaggle)


def read_run(root, run: str, split: str, data_cfg: Mapping, recon: str | None = None) -> Tomogram:
    """THE reader of every caller (training, validation, evaluation, prediction): honours ``data.recon``
    (unless ``recon`` names another, e.g. one of ``data.extra_recons``) and ``data.level``."""
    recon = recon or data_cfg["recon"]
    level = int(data_cfg["level"])
    path = tomogram_location(root, run, split, recon)
    volume, spacing = read_level(path, level)
    return Tomogram(run, split, recon, level, volume, spacing)


def checked_level(path: str | Path, level: int, store=None):
    """The multiscale group, after checking it has ``level``."""
    group = open_multiscale(path, store)
    try:
        if str(level) not in group:
            have = sorted(group.array_keys())
            listed = [str(d.get("path")) for d in group.attrs["multiscales"][0].get("datasets", [])]
            if str(level) in listed:
                raise DataError(f"{path}: level {level} is listed in .zattrs but its array ({level}/.zarray) is "
                                "missing: the store is incomplete; copy or download this tomogram again")
            raise DataError(f"{path} has no level {str(level)!r} (levels present: {', '.join(have) or 'none'}); "
                            "set data.level to one of them")
        _check_chunk_layout(group, str(level), path, store)
        _check_complete(group, str(level), path)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:  # unreadable zarr or OME metadata
        raise DataError(f"{path}/{level}: the array's zarr metadata cannot be read ({type(e).__name__}: {e}); the "
                        "store is corrupt: copy or download this tomogram again") from e
    return group


def _fill_value(array):
    fill = array.fill_value
    return fill.item() if isinstance(fill, np.generic) else fill


def stored_chunks(group, key: str) -> tuple[int, int]:
    """(chunk files present, chunks in the grid) of array ``key``: zarr reads a missing chunk as its fill value
    without a word, and its own count (``nchunks_initialized``) misses nested ``0/0/0`` keys."""
    array = group[key]
    separator = json.loads(group.store[f"{key}/.zarray"]).get("dimension_separator") or "."
    prefix = f"{array.path}/" if array.path else ""
    grid = [math.ceil(n / c) for n, c in zip(array.shape, array.chunks)]
    pattern = re.compile(re.escape(separator).join([r"(\d+)"] * array.ndim))
    present = 0
    for stored in array.chunk_store.keys():
        match = pattern.fullmatch(stored[len(prefix):]) if stored.startswith(prefix) else None
        if match and all(int(i) < g for i, g in zip(match.groups(), grid)):
            present += 1
    return present, math.prod(grid)


def _check_complete(group, key: str, path) -> None:
    """Every chunk of the level is stored; otherwise the run is refused, not read as zeros."""
    present, expected = stored_chunks(group, key)
    if present < expected:
        raise IncompleteDataError(
            f"{path}: level {key} is missing {expected - present} of its {expected} chunk files, which zarr would "
            f"read as {_fill_value(group[key])!r} without a word; the copy or download of this run was likely "
            "interrupted: copy or download it again")

def _check_chunk_layout(group, key: str, path, store) -> None:
    """A store that looks chunks up nested ('0/0/0') finds none of a flat array's ('0.0.0') and would return
    the fill value everywhere: refuse instead of reading zeros."""
    separator = getattr(store, "key_separator", None)
    if separator is None:
        return
    stored = json.loads(group.store[f"{key}/.zarray"]).get("dimension_separator") or "."
    if separator != stored:
        raise DataError(f"{path}: chunks are stored with separator {stored!r} but this reader (copick) looks them up "
                        f"with {separator!r}, so it would read only zeros; regenerate the data with this czii-kit "
                        "(it writes nested chunks like the CZII data) or read the directory with --data ROOT")


def level_geometry(path: str | Path, level: int, store=None) -> tuple[tuple[int, ...], float]:
    """((z, y, x) shape, Å per voxel) of one level, from the metadata alone (no voxels read)."""
    group = checked_level(path, level, store)
    return tuple(group[str(level)].shape), level_spacing(group, level, path)


def run_geometry(root, run: str, split: str, data_cfg: Mapping,
                 recon: str | None = None) -> tuple[tuple[int, ...], float]:
    """(shape, Å per voxel) of the tomogram ``read_run`` would read, from its metadata alone."""
    return level_geometry(tomogram_location(root, run, split, recon or data_cfg["recon"]), int(data_cfg["level"]))


def read_tomogram(root, run: str, split: str = "train", recon: str = "denoised", level: int = 0) -> np.ndarray:
    """The raw array only (for pictures and tools that need no units); pipelines use ``read_run``."""
    return read_level(tomogram_location(root, run, split, recon), level)[0]


def tomogram_location(root, run: str, split: str, recon: str) -> Path:
    """The zarr path of a run's reconstruction, or a DataError that says what exists instead."""
    path = layout.tomogram_path(root, split, run, recon)
    if not path.exists():
        layout.check_root(root)
        run_path = layout.runs_dir(root, split) / run
        if not run_path.exists():
            raise DataError(f"run {run!r} not found in {layout.runs_dir(root, split)}")
        have = layout.available_recons(root, split, run)
        fix = (f"set data.recon to one of them (e.g. --set data.recon={have[0]})" if have else
               "its folder holds no tomogram at all: copy or download the run again, or remove its folder")
        raise DataError(f"run {run!r} has no {recon!r} reconstruction at {path} (available: "
                        f"{', '.join(have) or 'none'}); {fix}")
    return path


def write_tomogram(path: str | Path, volume: np.ndarray, levels: int = 3,
                   spacing: float = VOXEL_SPACING, chunks=(32, 32, 32)) -> None:
    """Write an OME-NGFF 0.4 multiscale zarr v2 group (levels 0..levels-1, 2x mean-pooled).

    Refuses to overwrite an existing store.
    """
    import zarr
    from numcodecs import Blosc

    path = Path(path)
    if path.exists():
        raise DataError(f"refusing to overwrite existing tomogram {path}")
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise DataError(f"volume has shape {volume.shape}; expected (z, y, x)")
    group = zarr.open_group(str(path), mode="w")
    compressor = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)
    datasets = []
    level_vol = volume
    for lvl in range(levels):
        group.create_dataset(str(lvl), data=level_vol, chunks=chunks, compressor=compressor, dtype="f4",
                             dimension_separator="/")  # nested chunks (0/0/0/0) like the CZII data: copick needs it
        s = spacing * 2**lvl
        datasets.append({"path": str(lvl), "coordinateTransformations": [{"type": "scale", "scale": [s, s, s]}]})
        level_vol = _downsample2(level_vol)
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "name": "/",
        "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"],
        "datasets": datasets,
        "metadata": {},
    }]


def _downsample2(vol: np.ndarray) -> np.ndarray:
    """2x2x2 mean pooling; odd sizes are edge-padded (630 -> 315 -> 158, as in the real data)."""
    pad = [(0, s % 2) for s in vol.shape]
    v = np.pad(vol, pad, mode="edge") if any(p[1] for p in pad) else vol
    z, y, x = (s // 2 for s in v.shape)
    return v.reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5), dtype=np.float32)


# --------------------------------------------------------------------------- picks
def _particle_from_filename(path: Path, particles: ParticleSet) -> str:
    stem = path.stem
    return stem if stem in particles else stem.rsplit("_", 1)[-1]


def read_picks_file(path: str | Path, run: str | None = None, particles: ParticleSet = CZII) -> pd.DataFrame:
    """One copick picks JSON -> DataFrame(experiment, particle_type, x, y, z) in Å."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"picks file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"picks file {path} is not valid JSON ({e}); re-export it from copick") from e
    if not isinstance(doc, dict):
        raise DataError(f"picks file {path} must hold a JSON object with 'pickable_object_name' and 'points'")
    name = doc.get("pickable_object_name", _particle_from_filename(path, particles))
    if name not in particles:
        raise DataError(f"picks file {path}: unknown particle type {name!r}; expected one of {', '.join(particles.names)}")
    unit = doc.get("unit", "angstrom")
    if unit != "angstrom":
        raise DataError(f"picks file {path}: unit is {unit!r}; only 'angstrom' picks are supported")
    points = doc.get("points")
    if not isinstance(points, list):
        raise DataError(f"picks file {path} has no 'points' list")
    experiment = doc.get("run_name") or run or path.parent.parent.name
    rows = []
    for i, p in enumerate(points):
        try:
            loc = p["location"]
            xyz = [float(loc[k]) for k in ("x", "y", "z")]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"picks file {path}: point {i} lacks a numeric location.x/y/z ({type(e).__name__}: {e})"
            ) from e
        if not all(math.isfinite(v) for v in xyz):
            raise DataError(f"picks file {path}: point {i} has a non-finite coordinate {xyz}; fix or drop it")
        rows.append((experiment, name, *xyz))
    return pd.DataFrame(rows, columns=PICK_COLUMNS).astype({"x": float, "y": float, "z": float})


def read_picks(root, run: str, particles: ParticleSet = CZII) -> pd.DataFrame:
    """All picks of a train run of a Kaggle-layout directory, every class, as one DataFrame (may be empty)."""
    d = layout.picks_dir(root, run)
    if not d.is_dir():
        layout.check_root(root)
        raise DataError(f"run {run!r} has no picks directory {d}; training needs the overlay picks")
    frames = [read_picks_file(f, run, particles) for f in sorted(d.glob("*.json"))]
    if not frames:
        raise DataError(f"picks directory {d} holds no *.json files")
    df = pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)
    df["experiment"] = run
    return df


def points_from_picks(picks: pd.DataFrame, spacing: float = VOXEL_SPACING,
                      particles: ParticleSet = CZII) -> tuple[np.ndarray, np.ndarray]:
    """Picks (x, y, z Å) -> ((N, 3) float voxel (z, y, x) at ``spacing``, (N,) class indices into ``particles``)."""
    if len(picks) == 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    unknown = sorted(set(picks["particle_type"]) - set(particles.names))
    if unknown:
        raise DataError(f"picks name unknown particle types {unknown}; expected {', '.join(particles.names)}")
    labels = picks["particle_type"].map({c: i for i, c in enumerate(particles.names)}).to_numpy(np.int64)
    return angstrom_to_voxel(picks[XYZ].to_numpy(), spacing), labels


def read_all_picks(root, runs: list[str] | None = None) -> pd.DataFrame:
    """Picks of several train runs (all of them by default) in the Kaggle solution column order."""
    runs = runs if runs is not None else layout.list_runs(root, "train")
    frames = [read_picks(root, r) for r in runs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PICK_COLUMNS)


def write_picks(root, run: str, particle_type: str, xyz_angstrom: np.ndarray,
                user_id: str = "curation", session_id: str = "0") -> Path:
    """Write one copick picks file `<particle>.json` under the overlay tree of a run (Kaggle layout)."""
    xyz = np.asarray(xyz_angstrom, dtype=np.float64).reshape(-1, 3)
    path = layout.picks_dir(root, run) / f"{particle_type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    doc = {
        "pickable_object_name": particle_type,
        "user_id": user_id,
        "session_id": session_id,
        "run_name": run,
        "voxel_spacing": None,
        "unit": "angstrom",
        "points": [
            {"location": {"x": float(x), "y": float(y), "z": float(z)},
             "transformation_": identity, "instance_id": 0, "score": 1.0}
            for x, y, z in xyz
        ],
        "trust_orientation": True,
    }
    path.write_text(json.dumps(doc, indent=1))
    return path
