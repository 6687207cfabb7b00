"""Class-probability volumes -> particle detections, by max-pool non-maximum suppression.

A voxel of class c is a peak when it is >= the class threshold and equals the maximum of
the cube of side ``kernel_size(c)`` centred on it (the cube is clipped at the volume
border). The cube side comes from the particle radius, so big particles suppress more:

    kernel = 2 * round_half_up(kernel_frac * radius_vox / stride) + 1,  at least 3.

Plateaus: local maxima at most one half-kernel apart (Chebyshev) are necessarily ties
(each is >= the other). They are joined into connected groups and each group keeps one
voxel, the one nearest to the group's centroid (first in raster order among equals), so a
saturated block of 1.0 gives a single peak at its middle instead of hundreds.

Coordinates: a stride-s output cell j covers full-resolution voxels s*j .. s*j+s-1, so its
centre is voxel s*j + (s-1)/2; voxels go to Å only through ``voxel_to_angstrom``.

Speed: only voxels >= threshold can beat a candidate, so ``find_peaks`` finds the 16^3 blocks
holding candidates (one cheap block-max pass) and computes the cube maximum only there, on
tiles with a half-kernel halo; when candidates are dense it runs the same separable filter
over the box around them instead, whichever touches fewer voxels. The cube maximum is three
1-D sliding maxima, each O(log kernel) whole-array ``maximum`` passes (log-step doubling):
no per-voxel Python, and the same code runs on CuPy arrays. ``reference_peaks`` is the
direct full-volume ``ndimage.maximum_filter`` version with the same output (tests, benchmarks).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet, voxel_to_angstrom
from czii_kit.utils.backend import get_ndimage, get_xp, to_numpy

CHUNK_VOXELS = 1 << 22  # voxels per z-chunk or tile batch (16 MB of float32): bounds the temporaries
BLOCK = 16  # side of the blocks the tiled path skips when they hold no candidate (fastest of 8..64 measured)

LocalMaxima = Callable[[object, float, int], np.ndarray]


# --------------------------------------------------------------------------- shared checks
def class_value(value, name: str, key: str):
    """``value`` itself, or ``value[name]`` when it is a per-class mapping (missing class -> ConfigError)."""
    if not isinstance(value, Mapping):
        return value
    if name not in value:
        raise ConfigError(f"{key} has no entry for class {name!r}; add `{name}: <value>` under {key}")
    return value[name]


def check_thresholds(thresholds: Mapping[str, float], classes, particles: ParticleSet = CZII) -> None:
    """Every class in ``classes`` needs a threshold, and every threshold must name a class of ``particles``."""
    unknown = sorted(set(thresholds) - set(particles.names))
    if unknown:
        raise ConfigError(
            f"thresholds for unknown particle type(s) {', '.join(unknown)}; valid names: {', '.join(particles.names)}"
        )
    missing = [name for name in dict.fromkeys(classes) if name not in thresholds]
    if missing:
        raise ConfigError(f"no threshold for {', '.join(missing)}; add `{missing[0]}: <score>` to the thresholds")


def detections_frame(experiment: str, particle_type: str, xyz: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """One class's detections in the standard columns (zero rows is a valid, typed, empty frame)."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    return pd.DataFrame({"experiment": experiment, "particle_type": particle_type,
                         "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
                         "score": np.asarray(score, dtype=np.float64)})


def empty_detections() -> pd.DataFrame:
    return detections_frame("", "", np.empty((0, 3)), np.empty(0))


# --------------------------------------------------------------------------- kernels
def kernel_size(name: str, kernel_frac: float, stride: int = 1, spacing: float = VOXEL_SPACING,
                particles: ParticleSet = CZII) -> int:
    """NMS cube side in output cells: 2 * round_half_up(kernel_frac * radius_vox / stride) + 1, at least 3."""
    half = math.floor(kernel_frac * (particles[name].radius / spacing) / stride + 0.5)
    return 2 * max(half, 1) + 1


def max_filter1d_valid(array, size: int, axis: int):
    """``out[i] = max(array[i : i + size])`` along ``axis`` (length n - size + 1), any ``size`` >= 1.

    Log-step doubling: after the loop ``run[i] = max(array[i : i + span])``; two overlapping
    runs of length ``span`` (span <= size < 2 * span) cover each window exactly, so a window
    of any size costs about log2(size) + 1 whole-array ``maximum`` passes.
    """
    xp = get_xp(array)

    def window(run, start: int, count: int):
        index = [slice(None)] * array.ndim
        index[axis] = slice(start, start + count)
        return run[tuple(index)]

    run, span = array, 1
    while 2 * span <= size:
        count = run.shape[axis] - span
        run = xp.maximum(window(run, 0, count), window(run, span, count))
        span *= 2
    count = array.shape[axis] - size + 1
    return xp.maximum(window(run, 0, count), window(run, size - span, count))


def max_filter1d(array, size: int, axis: int):
    """Centred sliding maximum of odd ``size``, border clipped (same as scipy mode='nearest')."""
    pad = [(0, 0)] * array.ndim
    pad[axis] = (size // 2, size // 2)
    return max_filter1d_valid(get_xp(array).pad(array, pad, mode="edge"), size, axis)


# --------------------------------------------------------------------------- local maxima
def block_max(array, block: int):
    """Maximum over each ``block``-cube (ragged at the far ends), reducing the outermost axis first.

    Reducing axis 0 of a C-ordered array is a free reshape and shrinks the data ``block``-fold
    before the strided axes are touched, which makes this a single cheap pass over the volume.
    """
    xp = get_xp(array)
    for axis in range(array.ndim):
        moved = xp.moveaxis(array, axis, 0)
        full = moved.shape[0] - moved.shape[0] % block
        parts = [moved[:full].reshape(full // block, block, *moved.shape[1:]).max(axis=1)]
        if full < moved.shape[0]:
            parts.append(moved[full:].max(axis=0, keepdims=True))
        array = xp.moveaxis(xp.concatenate(parts), 0, axis)
    return array


def active_blocks(channel, threshold: float, block: int = BLOCK) -> np.ndarray:
    """(M, 3) origins (z, y, x) of the ``block``-cubes holding a voxel >= threshold, raster order."""
    return np.argwhere(to_numpy(block_max(channel, block) >= threshold)) * block


def _raster_sorted(zyx: np.ndarray) -> np.ndarray:
    return zyx[np.lexsort(zyx.T[::-1])].astype(np.int64)


def _gather_tiles(channel, origins: np.ndarray, block: int, half: int):
    """Cubes of side block + 2*half around each block; voxels outside the volume are -inf."""
    xp = get_xp(channel)
    side = block + 2 * half
    tiles = xp.full((len(origins), side, side, side), -xp.inf, dtype=channel.dtype)
    for tile, origin in zip(tiles, origins - half):
        source = tuple(slice(max(o, 0), min(o + side, n)) for o, n in zip(origin, channel.shape))
        tile[tuple(slice(s.start - o, s.stop - o) for s, o in zip(source, origin))] = channel[source]
    return tiles


def tiled_local_maxima(channel, threshold: float, size: int, origins: np.ndarray | None = None,
                       block: int = BLOCK) -> np.ndarray:
    """Local maxima computed only in the blocks that hold candidates (plus a half-kernel halo).

    Only voxels >= threshold can beat a candidate, so blocks without candidates never matter;
    sparse probability maps touch a few percent of the volume this way.
    """
    xp = get_xp(channel)
    half = size // 2
    origins = active_blocks(channel, threshold, block) if origins is None else origins
    core = (slice(None), *[slice(half, half + block)] * 3)
    found = [np.empty((0, 3), dtype=np.int64)]
    per_batch = max(1, CHUNK_VOXELS // (block + 2 * half) ** 3)
    for start in range(0, len(origins), per_batch):
        batch = origins[start : start + per_batch]
        tiles = _gather_tiles(channel, batch, block, half)
        cube = tiles
        for axis in (1, 2, 3):
            cube = max_filter1d_valid(cube, size, axis)
        values = tiles[core]
        tile, *zyx = xp.nonzero((values >= threshold) & (values >= cube))
        found.append(np.stack([to_numpy(a) for a in zyx], axis=1) + batch[to_numpy(tile)])
    return _raster_sorted(np.concatenate(found))


def _z_chunks(depth: int, plane: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_VOXELS // max(plane, 1))
    for start in range(0, depth, step):
        yield start, min(start + step, depth)


def dense_local_maxima(channel, threshold: float, size: int,
                       box: tuple[slice, ...] = (slice(None),) * 3) -> np.ndarray:
    """Local maxima from whole-array separable passes over ``box`` (must hold every candidate's window)."""
    xp = get_xp(channel)
    half = size // 2
    values = channel[box]
    depth, plane = values.shape[0], values.shape[1] * values.shape[2]
    planar = xp.empty_like(values)  # y-x square maxima; needs no z halo, so filled chunk by chunk
    for z0, z1 in _z_chunks(depth, plane):
        planar[z0:z1] = max_filter1d(max_filter1d(values[z0:z1], size, axis=2), size, axis=1)
    found = [np.empty((0, 3), dtype=np.int64)]
    for z0, z1 in _z_chunks(depth, plane):
        candidate = values[z0:z1] >= threshold
        if not bool(candidate.any()):
            continue
        lo, hi = max(z0 - half, 0), min(z1 + half, depth)
        cube = max_filter1d(planar[lo:hi], size, axis=0)[z0 - lo : z1 - lo]
        zyx = to_numpy(xp.stack(xp.nonzero(candidate & (values[z0:z1] >= cube)), axis=1))
        found.append(zyx + [z0, 0, 0])
    origin = [s.indices(n)[0] for s, n in zip(box, channel.shape)]
    return np.concatenate(found).astype(np.int64) + origin


def separable_local_maxima(channel, threshold: float, size: int) -> np.ndarray:
    """(N, 3) z, y, x of voxels >= threshold that equal their cube maximum, raster order.

    Picks the cheaper of the tiled path (sparse candidates) and the dense path over the box
    around all candidate blocks (dense candidates); both give identical results.
    """
    half = size // 2
    origins = active_blocks(channel, threshold)
    if len(origins) == 0:
        return np.empty((0, 3), dtype=np.int64)
    lo, hi = origins.min(axis=0) - half, origins.max(axis=0) + BLOCK + half
    box = tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, channel.shape))
    box_voxels = math.prod(s.stop - s.start for s in box)
    if len(origins) * (BLOCK + 2 * half) ** 3 < box_voxels:
        return tiled_local_maxima(channel, threshold, size, origins)
    return dense_local_maxima(channel, threshold, size, box)


def reference_local_maxima(channel, threshold: float, size: int) -> np.ndarray:
    """Straightforward version: full-volume ``ndimage.maximum_filter`` with a cubic footprint."""
    xp = get_xp(channel)
    local_max = get_ndimage(xp).maximum_filter(channel, size=size, mode="nearest")
    peak = (channel == local_max) & (channel >= threshold)
    return to_numpy(xp.stack(xp.nonzero(peak), axis=1)).astype(np.int64)


def proximity_components(points: np.ndarray, max_distance: float, norm: float = 2) -> np.ndarray:
    """Connected-component label per point, joining points at most ``max_distance`` apart (Minkowski ``norm``)."""
    pairs = cKDTree(points).query_pairs(max_distance, p=norm, output_type="ndarray")
    adjacency = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points),) * 2)
    return connected_components(adjacency, directed=False)[1]


def collapse_plateaus(zyx: np.ndarray, half: int) -> np.ndarray:
    """Indices of the local maxima to keep: one per group of ties at most one half-kernel apart."""
    if len(zyx) < 2:
        return np.arange(len(zyx))
    label = proximity_components(zyx, half, norm=np.inf)
    counts = np.bincount(label)
    centroid = np.stack([np.bincount(label, zyx[:, a]) / counts for a in range(3)], axis=1)
    distance = ((zyx - centroid[label]) ** 2).sum(axis=1)
    order = np.lexsort((distance, label))  # stable: raster order breaks equal distances
    _, first = np.unique(label[order], return_index=True)
    return np.sort(order[first])


# --------------------------------------------------------------------------- detections
def cell_to_angstrom(zyx_cells: np.ndarray, stride: int, spacing: float = VOXEL_SPACING) -> np.ndarray:
    """Output-cell indices (z, y, x) at ``stride`` -> (x, y, z) Å of the cells' centres."""
    return voxel_to_angstrom(np.asarray(zyx_cells, dtype=np.float64) * stride + (stride - 1) / 2, spacing)


def _check_inputs(prob, class_names, stride: int, topk: int | None) -> None:
    if prob.ndim != 4 or prob.shape[0] != len(class_names):
        raise DataError(
            f"probabilities have shape {tuple(prob.shape)}; expected (C, Z, Y, X) with C = {len(class_names)} "
            f"channels, one per class in {list(class_names)}"
        )
    if not np.issubdtype(prob.dtype, np.floating):
        raise DataError(f"probabilities have dtype {prob.dtype}; pass floating-point scores (float16/32/64)")
    if not (isinstance(stride, int) and stride >= 1):
        raise ConfigError(f"stride must be a positive integer, got {stride!r}")
    if topk is not None and not (isinstance(topk, int) and topk >= 1):
        raise ConfigError(f"topk must be None or a positive integer, got {topk!r}")


def _find(prob, class_names, thresholds, kernel_frac, stride, experiment, topk, spacing, particles,
          local_maxima: LocalMaxima) -> pd.DataFrame:
    _check_inputs(prob, class_names, stride, topk)
    check_thresholds(thresholds, class_names, particles)
    frames = [empty_detections()]
    for channel, name in zip(prob, class_names):
        size = kernel_size(name, class_value(kernel_frac, name, "kernel_frac"), stride, spacing, particles)
        zyx = local_maxima(channel, float(thresholds[name]), size)
        zyx = zyx[collapse_plateaus(zyx, size // 2)]
        score = to_numpy(channel[tuple(get_xp(channel).asarray(zyx.T))])
        order = np.argsort(-score, kind="stable")[:topk]
        frames.append(detections_frame(experiment, name, cell_to_angstrom(zyx[order], stride, spacing), score[order]))
    return pd.concat(frames, ignore_index=True)


def find_peaks(prob, class_names, thresholds: Mapping[str, float], kernel_frac: float | Mapping = 0.5,
               stride: int = 1, experiment: str = "", topk: int | None = None,
               spacing: float = VOXEL_SPACING, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Peaks of a (C, Z, Y, X) probability volume (numpy or cupy) as a detection DataFrame.

    Columns experiment, particle_type, x, y, z (Å, at ``spacing`` Å per full-resolution voxel), score;
    classes in ``class_names`` order, each sorted by descending score and cut to its ``topk`` best when given.
    """
    return _find(prob, class_names, thresholds, kernel_frac, stride, experiment, topk, spacing, particles,
                 separable_local_maxima)


def probe_gpu_peaks(device) -> str | None:
    """Run a tiny peak search with CuPy on GPU ``device`` once: None when it works, else why, recorded so that
    every later probability volume on that GPU goes to the host peak finder instead of failing its run. Also
    compiles CuPy's kernels before the clock starts, so the first tomogram's time does not mislead the budget."""
    import torch

    from czii_kit.particles import Particle
    from czii_kit.utils.backend import record_cupy_failure

    index = torch.device(device).index or 0
    probe = ParticleSet((Particle("probe", 3 * VOXEL_SPACING, 1.0),))
    try:
        import cupy

        with cupy.cuda.Device(index):
            prob = cupy.zeros((1, 12, 12, 12), dtype=cupy.float32)
            prob[0, 6, 5, 4] = 1.0
            found = find_peaks(prob, probe.names, {"probe": 0.5}, particles=probe)
            cupy.cuda.Device(index).synchronize()
        expected = cell_to_angstrom(np.array([[6, 5, 4]]), 1)
        reason = None if len(found) == 1 and np.allclose(found[["x", "y", "z"]].to_numpy(), expected) else (
            f"the probe found {len(found)} peak(s) instead of the one it planted")
    except Exception as error:  # noqa: BLE001 -- import, driver, compilation: any failure means the host path
        reason = f"{type(error).__name__}: {error}"
    record_cupy_failure(index, reason)
    return reason


def reference_peaks(prob, class_names, thresholds: Mapping[str, float], kernel_frac: float | Mapping = 0.5,
                    stride: int = 1, experiment: str = "", topk: int | None = None,
                    spacing: float = VOXEL_SPACING, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Same as ``find_peaks`` with a plain full-volume maximum_filter (slow; tests and benchmarks)."""
    return _find(prob, class_names, thresholds, kernel_frac, stride, experiment, topk, spacing, particles,
                 reference_local_maxima)
