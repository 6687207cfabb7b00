"""Peak finding: brute-force agreement, known blob positions, plateaus, kernels, strides, backend."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import types

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter, maximum_filter1d

from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, RADIUS, VOXEL_SPACING, angstrom_to_voxel, voxel_to_angstrom
from czii_kit.post import peaks
from czii_kit.tables import DETECTION_COLUMNS
from czii_kit.post.peaks import (
    dense_local_maxima,
    find_peaks,
    kernel_size,
    max_filter1d,
    max_filter1d_valid,
    reference_peaks,
    tiled_local_maxima,
)
from czii_kit.utils import backend

APO, RIBO = "apo-ferritin", "ribosome"


# --------------------------------------------------------------------------- helpers
def expected_half(name: str, kernel_frac: float = 0.5, stride: int = 1) -> int:
    """The spec's half-kernel: round_half_up(frac * radius_vox / stride), at least 1."""
    return max(1, math.floor(kernel_frac * RADIUS[name] / VOXEL_SPACING / stride + 0.5))


def brute_force_peaks(volume: np.ndarray, threshold: float, half: int) -> dict[tuple[int, int, int], float]:
    """Candidate voxel -> score, for voxels >= threshold that are the max of their clipped cube."""
    peaks = {}
    for z, y, x in np.argwhere(volume >= threshold):
        cube = volume[max(z - half, 0) : z + half + 1, max(y - half, 0) : y + half + 1, max(x - half, 0) : x + half + 1]
        if volume[z, y, x] >= cube.max():
            peaks[(int(z), int(y), int(x))] = float(volume[z, y, x])
    return peaks


def smooth_volume(seed: int, shape: tuple[int, ...], sigma: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = gaussian_filter(rng.random(shape), sigma)
    return ((volume - volume.min()) / (volume.max() - volume.min())).astype(np.float32)


def cells(df: pd.DataFrame, stride: int = 1) -> np.ndarray:
    """Detections back to integer output cells (z, y, x) through the one unit conversion."""
    voxel = angstrom_to_voxel(df[["x", "y", "z"]].to_numpy())
    cell = (voxel - (stride - 1) / 2) / stride
    np.testing.assert_allclose(cell, np.round(cell), atol=1e-9)
    return np.round(cell).astype(int)


def add_blob(volume: np.ndarray, centre, height: float, sigma: float = 1.0) -> None:
    grid = np.indices(volume.shape, dtype=np.float64)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    volume += (height * np.exp(-r2 / (2 * sigma**2))).astype(volume.dtype)


def thresholds(value: float) -> dict[str, float]:
    return {name: value for name in CLASS_NAMES}


# --------------------------------------------------------------------------- filters
@pytest.mark.parametrize("length", [1, 2, 5, 16, 33])
@pytest.mark.parametrize("size", [3, 5, 7, 9, 15, 17, 31])
def test_max_filter1d_matches_scipy_nearest(length, size):
    array = np.random.default_rng(length * size).random((length, 6, 7)).astype(np.float32)
    for axis in range(3):
        expected = maximum_filter1d(array, size, axis=axis, mode="nearest")
        np.testing.assert_array_equal(max_filter1d(array, size, axis), expected)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 6, 8, 13])
def test_max_filter1d_valid_matches_sliding_window(size):
    array = np.random.default_rng(size).random((4, 20, 5))
    expected = np.lib.stride_tricks.sliding_window_view(array, size, axis=1).max(axis=-1)
    np.testing.assert_array_equal(max_filter1d_valid(array, size, 1), expected)


def test_kernel_size_follows_radius_stride_and_floor_of_three():
    for name in CLASS_NAMES:
        for stride in (1, 2, 4):
            assert kernel_size(name, 0.5, stride) == 2 * expected_half(name, 0.5, stride) + 1
    assert kernel_size(APO, 0.01) == 3
    assert kernel_size(RIBO, 0.5) > kernel_size(APO, 0.5)


# --------------------------------------------------------------------------- brute force agreement
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_find_peaks_matches_brute_force(seed, stride):
    names = (APO, RIBO)
    prob = np.stack([smooth_volume(seed * 10 + c, (20, 30, 26)) for c in range(len(names))])
    found = find_peaks(prob, names, {APO: 0.55, RIBO: 0.4}, stride=stride, experiment="run")
    assert (found["experiment"] == "run").all()
    for c, name in enumerate(names):
        threshold = {APO: 0.55, RIBO: 0.4}[name]
        expected = brute_force_peaks(prob[c], threshold, expected_half(name, 0.5, stride))
        ours = found[found["particle_type"] == name]
        assert len(expected) > 0
        got = {tuple(cell): score for cell, score in zip(cells(ours, stride).tolist(), ours["score"])}
        assert got == pytest.approx(expected)
        assert list(ours["score"]) == sorted(ours["score"], reverse=True)
    pd.testing.assert_frame_equal(found, reference_peaks(prob, names, {APO: 0.55, RIBO: 0.4}, stride=stride,
                                                         experiment="run"))


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("size", [3, 7])
@pytest.mark.parametrize("chunk_voxels", [1 << 22, 3000])
def test_tiled_and_dense_paths_match_brute_force(seed, size, chunk_voxels, monkeypatch):
    """Also with tiny chunks: several z-chunks (halo handling) and one tile per batch."""
    monkeypatch.setattr(peaks, "CHUNK_VOXELS", chunk_voxels)
    volume = smooth_volume(seed, (19, 37, 29), sigma=1.2)  # not a multiple of the block side
    threshold = float(np.quantile(volume, 0.7))
    expected = sorted(brute_force_peaks(volume, threshold, size // 2))
    assert len(expected) > 3
    for zyx in (tiled_local_maxima(volume, threshold, size, block=8),
                tiled_local_maxima(volume, threshold, size, block=16),
                dense_local_maxima(volume, threshold, size)):
        assert [tuple(p) for p in zyx.tolist()] == expected


def test_float16_input_matches_the_reference():
    """float16 (which scipy's filters reject) gives what float32 of the same values gives, ties included."""
    prob = smooth_volume(5, (2, 18, 40, 33)).astype(np.float16)
    found = find_peaks(prob, [APO, RIBO], thresholds(0.5))
    assert len(found) > 0
    pd.testing.assert_frame_equal(found, reference_peaks(prob.astype(np.float32), [APO, RIBO], thresholds(0.5)))


# --------------------------------------------------------------------------- known answers
def test_gaussian_blobs_come_back_at_their_voxels():
    shape = (30, 48, 52)
    centres = {name: [(8 + c, 10 + 3 * c, 12 + 2 * c), (22, 38 - c, 42 - 3 * c)] for c, name in enumerate(CLASS_NAMES)}
    prob = np.zeros((len(CLASS_NAMES), *shape), dtype=np.float32)
    for c, name in enumerate(CLASS_NAMES):
        for centre in centres[name]:
            add_blob(prob[c], centre, 0.9, sigma=1.5)
    found = find_peaks(prob, CLASS_NAMES, thresholds(0.5))
    for name in CLASS_NAMES:
        ours = found[found["particle_type"] == name]
        voxels = angstrom_to_voxel(ours[["x", "y", "z"]].to_numpy())
        assert sorted(map(tuple, np.round(voxels, 9).tolist())) == sorted(centres[name])


def test_plateau_gives_one_peak_at_its_middle():
    prob = np.zeros((1, 24, 24, 24), dtype=np.float32)
    prob[0, 6:11, 8:14, 9:16] = 1.0  # 5 x 6 x 7 block, centre (8, 10.5, 12)
    for finder in (find_peaks, reference_peaks):
        found = finder(prob, [RIBO], {RIBO: 0.5})
        assert len(found) == 1
        assert cells(found).tolist() == [[8, 10, 12]]  # nearest to the centre; first in raster order


def test_two_separate_plateaus_stay_two():
    prob = np.zeros((1, 16, 16, 40), dtype=np.float32)
    prob[0, 6:9, 6:9, 3:6] = 0.8
    prob[0, 6:9, 6:9, 30:33] = 0.8
    found = find_peaks(prob, [APO], {APO: 0.5})
    assert sorted(cells(found).tolist()) == [[7, 7, 4], [7, 7, 31]]


def test_threshold_is_inclusive_and_filters():
    prob = np.zeros((1, 12, 12, 40), dtype=np.float32)
    prob[0, 6, 6, [5, 15, 25, 35]] = [0.25, 0.5, 0.75, 1.0]
    found = find_peaks(prob, [APO], {APO: 0.5})
    assert found["score"].tolist() == [1.0, 0.75, 0.5]
    assert cells(found)[:, 2].tolist() == [35, 25, 15]
    assert find_peaks(prob, [APO], {APO: 1.5}).empty


def test_topk_keeps_the_highest_scores_per_class():
    prob = np.zeros((2, 12, 12, 40), dtype=np.float32)
    prob[:, 6, 6, [5, 15, 25, 35]] = [0.6, 0.9, 0.7, 0.8]
    found = find_peaks(prob, [APO, "beta-amylase"], thresholds(0.1), topk=2)
    for name in (APO, "beta-amylase"):
        ours = found[found["particle_type"] == name]
        assert ours["score"].tolist() == pytest.approx([0.9, 0.8])
        assert cells(ours)[:, 2].tolist() == [15, 35]


def test_kernel_size_is_per_class():
    """Blobs 5 voxels apart: farther than the apo-ferritin half-kernel, closer than the ribosome one."""
    gap = 5
    assert expected_half(APO) < gap <= expected_half(RIBO)
    prob = np.zeros((2, 20, 20, 30), dtype=np.float32)
    for channel in prob:
        add_blob(channel, (10, 10, 10), 1.0)
        add_blob(channel, (10, 10, 10 + gap), 0.8)
    found = find_peaks(prob, [APO, RIBO], thresholds(0.3))
    assert sorted(cells(found[found["particle_type"] == APO])[:, 2].tolist()) == [10, 10 + gap]
    assert cells(found[found["particle_type"] == RIBO])[:, 2].tolist() == [10]
    wide = find_peaks(prob, [APO, RIBO], thresholds(0.3), kernel_frac={APO: 1.0, RIBO: 0.1})
    assert cells(wide[wide["particle_type"] == APO])[:, 2].tolist() == [10]
    assert sorted(cells(wide[wide["particle_type"] == RIBO])[:, 2].tolist()) == [10, 10 + gap]


def test_stride_two_cells_map_to_their_centre_voxel():
    prob = np.zeros((1, 10, 10, 10), dtype=np.float32)
    prob[0, 3, 4, 5] = 0.9
    found = find_peaks(prob, [APO], {APO: 0.5}, stride=2)
    np.testing.assert_allclose(found[["x", "y", "z"]].to_numpy(), voxel_to_angstrom([[6.5, 8.5, 10.5]]))
    np.testing.assert_allclose(angstrom_to_voxel(found[["x", "y", "z"]].to_numpy()), [[6.5, 8.5, 10.5]])


def test_peaks_on_the_volume_border_are_found():
    prob = np.zeros((1, 9, 9, 9), dtype=np.float32)
    prob[0, 0, 0, 0], prob[0, 8, 8, 8] = 0.7, 0.9
    assert sorted(cells(find_peaks(prob, [APO], {APO: 0.5})).tolist()) == [[0, 0, 0], [8, 8, 8]]


def test_empty_result_has_the_detection_columns():
    found = find_peaks(np.zeros((2, 8, 8, 8), dtype=np.float32), [APO, RIBO], thresholds(0.5))
    assert list(found.columns) == DETECTION_COLUMNS
    assert len(found) == 0
    assert all(found[c].dtype == np.float64 for c in ("x", "y", "z", "score"))


# --------------------------------------------------------------------------- errors
def test_bad_probability_arrays_are_data_errors():
    with pytest.raises(DataError, match="channels"):
        find_peaks(np.zeros((2, 4, 4, 4), dtype=np.float32), [APO], thresholds(0.5))
    with pytest.raises(DataError, match="dtype"):
        find_peaks(np.zeros((1, 4, 4, 4), dtype=np.uint8), [APO], thresholds(0.5))


def test_threshold_problems_name_the_class():
    prob = np.zeros((2, 4, 4, 4), dtype=np.float32)
    with pytest.raises(ConfigError, match=RIBO):
        find_peaks(prob, [APO, RIBO], {APO: 0.5})
    with pytest.raises(ConfigError, match="apoferritin"):
        find_peaks(prob, [APO, RIBO], {**thresholds(0.5), "apoferritin": 0.5})
    with pytest.raises(ConfigError, match=RIBO):
        find_peaks(prob, [APO, RIBO], thresholds(0.5), kernel_frac={APO: 0.5})


# --------------------------------------------------------------------------- backend
def test_backend_picks_numpy_and_scipy_for_numpy_arrays():
    import scipy.ndimage

    array = np.ones(3)
    assert backend.get_xp(array) is np
    assert backend.get_ndimage(np) is scipy.ndimage
    assert backend.to_numpy(array) is array


def test_backend_recognises_cupy_arrays_by_type(monkeypatch):
    fake = types.ModuleType("cupy")
    fake_array_type = type("ndarray", (), {"__module__": "cupy", "get": lambda self: np.arange(3)})
    fake.ndarray = fake_array_type
    monkeypatch.setitem(sys.modules, "cupy", fake)
    array = fake_array_type()
    assert backend.get_xp(array) is fake
    assert backend.get_xp(gpu=True) is fake
    np.testing.assert_array_equal(backend.to_numpy(array), np.arange(3))


def test_nothing_imports_cupy(tmp_path):
    """A cupy that explodes on import must not matter for the CPU path."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise RuntimeError('cupy was imported')\n")
    script = textwrap.dedent("""
        import numpy as np
        from czii_kit.particles import CLASS_NAMES
        from czii_kit.config import load_config
        from czii_kit.post import POSTPROCESSORS, apply_thresholds, find_peaks, postprocess, with_steps
        prob = np.zeros((6, 12, 12, 12), dtype=np.float32)
        prob[:, 6, 6, 6] = 0.9
        found = find_peaks(prob, CLASS_NAMES, {c: 0.5 for c in CLASS_NAMES})
        cfg = with_steps(load_config()["post"], POSTPROCESSORS)
        out = apply_thresholds(postprocess(found, cfg), {c: 0.1 for c in CLASS_NAMES})
        assert len(out) > 6, out
    """)
    env_path = f"{tmp_path}"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
