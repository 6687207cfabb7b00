"""Sliding window: tiling geometry, seamless blending, padding, strides and batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from czii_kit.errors import ConfigError, DataError
from czii_kit.infer.sliding_window import (
    BLENDS,
    MIN_AXIS_WEIGHT,
    importance_map,
    padded_shape,
    predict_volume,
    window_origins,
    window_starts,
)


class FunctionEngine:
    """An Engine around a plain function, so these tests exercise the window machinery only."""

    name = "function"
    device = torch.device("cpu")

    def __init__(self, fn, window, num_classes, stride=1):
        self.fn, self.window, self.num_classes, self.stride = fn, tuple(window), num_classes, stride

    def __call__(self, batch):
        return self.fn(batch)


def constant_engine(value, window, num_classes=6, stride=1):
    def fn(batch):
        shape = (len(batch), num_classes, *(w // stride for w in window))
        return torch.full(shape, value, dtype=torch.float32)
    return FunctionEngine(fn, window, num_classes, stride)


def identity_engine(window, num_classes=3):
    return FunctionEngine(lambda b: b.repeat(1, num_classes, 1, 1, 1), window, num_classes)


def random_volume(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def local_x_engine(window):
    """Outputs each voxel's x position inside its window: blending becomes visible."""
    def fn(batch):
        x = torch.arange(window[2], dtype=torch.float32).expand(len(batch), 1, *window)
        return x.clone()
    return FunctionEngine(fn, window, 1)


@pytest.mark.parametrize("size,window,overlap", [
    (630, 128, 0.25), (184, 64, 0.5), (100, 100, 0.3), (101, 100, 0.0), (37, 8, 0.75),
    (9, 4, 0.0), (50, 7, 0.1), (20, 32, 0.5), (1, 1, 0.0),
])
def test_window_starts_tile_the_axis(size, window, overlap):
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(0, size - window)
    assert starts == sorted(set(starts))
    max_gap = max(1, int(window * (1 - overlap)))
    assert all(b - a <= max_gap for a, b in zip(starts, starts[1:]))
    covered = np.zeros(max(size, window), bool)
    for start in starts:
        covered[start:start + window] = True
    assert covered.all()


def test_window_starts_hand_made():
    assert window_starts(24, 16, 0.5) == [0, 8]
    assert window_starts(16, 16, 0.5) == [0]
    assert window_starts(10, 4, 0.0) == [0, 3, 6]  # 3 windows of 4 cannot tile 10 without overlap


@pytest.mark.parametrize("overlap", [-0.1, 0.99, 1.0])
def test_bad_overlap_raises(overlap):
    with pytest.raises(ConfigError, match="overlap"):
        window_starts(100, 10, overlap)


def test_window_origins_on_stride_multiples():
    origins = window_origins((23, 40, 41), (8, 16, 16), stride=4, overlap=0.3)
    assert all(c % 4 == 0 for origin in origins for c in origin)
    padded = padded_shape((23, 40, 41), (8, 16, 16), 4)
    assert padded == (24, 40, 44)
    covered = np.zeros(padded, bool)
    for z, y, x in origins:
        covered[z:z + 8, y:y + 16, x:x + 16] = True
    assert covered.all()


@pytest.mark.parametrize("blend", BLENDS)
def test_importance_maps_are_positive_with_peak_one(blend):
    weights = importance_map((6, 9, 16), blend).numpy()
    assert weights.max() == pytest.approx(1.0)
    assert weights.min() >= MIN_AXIS_WEIGHT**3
    assert np.array_equal(weights, weights[::-1, ::-1, ::-1])  # symmetric: no side is preferred
    if blend != "constant":
        assert weights[0, 0, 0] < weights[3, 4, 8]


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape,overlap", [((19, 45, 33), 0.25), ((8, 16, 16), 0.5), ((40, 17, 61), 0.75)])
def test_constant_model_gives_constant_output(blend, shape, overlap):
    out = predict_volume(constant_engine(0.37, (8, 16, 16)), random_volume(shape), overlap=overlap, blend=blend)
    assert out.shape == (6, *shape) and out.dtype == torch.float32  # a tensor where it was computed
    np.testing.assert_allclose(out, 0.37, rtol=0, atol=1e-6)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.25, 0.5, 0.75])
def test_identity_model_reconstructs_volume(blend, overlap):
    volume = random_volume((21, 37, 30))
    out = predict_volume(identity_engine((8, 16, 16)), volume, overlap=overlap, blend=blend, batch_size=3)
    assert out.shape == (3, 21, 37, 30)
    for channel in out:  # float32 sums of up to 64 weighted windows: a few ulp
        np.testing.assert_allclose(channel, volume, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_volume_smaller_than_window_is_padded_and_cropped(pad_mode):
    volume = random_volume((5, 7, 9))
    out = predict_volume(identity_engine((8, 16, 16), num_classes=2), volume, pad_mode=pad_mode)
    assert out.shape == (2, 5, 7, 9)
    np.testing.assert_allclose(out[1], volume, atol=1e-6)


@pytest.mark.parametrize("pad_mode,expected", [("constant", 64 / 512), ("reflect", 1.0)])
def test_pad_mode_decides_what_the_model_sees(pad_mode, expected):
    window = (8, 8, 8)
    mean_engine = FunctionEngine(lambda b: b.mean(dim=(2, 3, 4), keepdim=True).expand(-1, 1, *window), window, 1)
    out = predict_volume(mean_engine, np.ones((4, 4, 4), np.float32), pad_mode=pad_mode)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def average_pool_reference(volume: np.ndarray, stride: int) -> np.ndarray:
    """Reflect-pad at the high end to a stride multiple, then average each stride^3 block."""
    widths = [(0, -n % stride) for n in volume.shape]
    padded = np.pad(volume, widths, mode="reflect")
    z, y, x = (n // stride for n in padded.shape)
    return padded.reshape(z, stride, y, stride, x, stride).mean(axis=(1, 3, 5))


@pytest.mark.parametrize("blend", BLENDS)
def test_stride_two_output_is_aligned_with_the_input(blend):
    volume = random_volume((19, 35, 40), seed=3)
    window = (8, 16, 16)
    engine = FunctionEngine(lambda b: F.avg_pool3d(b, 2).repeat(1, 2, 1, 1, 1), window, 2, stride=2)
    out = predict_volume(engine, volume, overlap=0.4, blend=blend)
    assert out.shape == (2, 10, 18, 20)
    np.testing.assert_allclose(out[0], average_pool_reference(volume, 2), atol=1e-5)


def test_constant_blend_averages_overlapping_windows():
    # windows along x start at 0 and 8; voxels 8..15 are seen at local x and x - 8
    out = predict_volume(local_x_engine((4, 4, 16)), random_volume((4, 4, 24)), overlap=0.5, blend="constant")
    expected = np.array([x if x < 8 else x - 4 if x < 16 else x - 8 for x in range(24)], np.float32)
    np.testing.assert_allclose(out[0, 2, 1], expected, atol=1e-5)


def test_gaussian_blend_trusts_the_window_centre():
    out = predict_volume(local_x_engine((4, 4, 16)), random_volume((4, 4, 24)), overlap=0.5, blend="gaussian")
    # x = 8 is 0.5 voxel from the centre of window 0 (local 8) and at the edge of window 1 (local 0)
    assert out[0, 0, 0, 8] > 7.9
    assert out[0, 0, 0, 15] < 7.1  # local 15 in window 0 (edge) vs 7 in window 1 (centre)


def test_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 4, 3, padding=1)
    engine = FunctionEngine(lambda b: torch.softmax(conv(b), dim=1).detach(), (8, 16, 16), 4)
    volume = random_volume((17, 30, 35), seed=5)
    results = [predict_volume(engine, volume, overlap=0.3, batch_size=b) for b in (1, 3, 64)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=0, atol=1e-6)


def test_wrong_engine_output_shape_is_reported():
    engine = constant_engine(0.5, (8, 16, 16), stride=2)
    engine.stride = 1  # claims stride 1 but returns a stride-2 grid
    with pytest.raises(ConfigError, match="output_stride"):
        predict_volume(engine, random_volume((8, 16, 16)))


@pytest.mark.parametrize("kwargs,error", [
    ({"blend": "hann"}, ConfigError), ({"pad_mode": "wrap"}, ConfigError), ({"batch_size": 0}, ConfigError),
])
def test_bad_options_raise(kwargs, error):
    with pytest.raises(error):
        predict_volume(identity_engine((8, 16, 16)), random_volume((8, 16, 16)), **kwargs)


def test_window_not_multiple_of_stride_raises():
    with pytest.raises(ConfigError, match="multiple of 2"):
        predict_volume(constant_engine(0.5, (8, 15, 16), stride=2), random_volume((8, 16, 16)))


def test_non_3d_volume_raises():
    with pytest.raises(DataError, match="shape"):
        predict_volume(identity_engine((8, 16, 16)), np.zeros((2, 8, 16, 16), np.float32))
