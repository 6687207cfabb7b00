"""TTA transforms: exact inverses, z never mixed, parsing, and composition with the sliding window."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from czii_kit.errors import ConfigError
from czii_kit.infer.sliding_window import predict_volume
from czii_kit.infer.tta import IDENTITY, Transform, check_tta_window, parse_tta


class FunctionEngine:
    """An Engine around a plain function, so these tests exercise TTA and blending only."""

    name = "function"
    device = torch.device("cpu")

    def __init__(self, fn, window, num_classes, stride=1):
        self.fn, self.window, self.num_classes, self.stride = fn, tuple(window), num_classes, stride
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        return self.fn(batch)


def per_voxel(batch: torch.Tensor) -> torch.Tensor:
    """A pure per-voxel function on 3 channels: equivariant under every transform."""
    return torch.cat([torch.sigmoid(batch), (torch.tanh(2 * batch) + 1) / 2, torch.exp(-batch**2)], dim=1)


def directional(batch: torch.Tensor) -> torch.Tensor:
    """Depends on position and neighbours along every axis: not equivariant."""
    z = torch.arange(batch.shape[2], dtype=batch.dtype).view(1, 1, -1, 1, 1)
    return batch.roll(1, dims=3) + 0.5 * batch.roll(-2, dims=4) + 0.1 * z


def test_full_has_16_distinct_transforms_and_each_inverts_exactly():
    transforms = parse_tta("full")
    x = torch.randn(2, 3, 5, 6, 6)
    outputs = [t.apply(x) for t in transforms]
    assert len(transforms) == 16
    assert transforms[0] == IDENTITY
    for i, a in enumerate(outputs):
        assert all(not torch.equal(a, b) for b in outputs[i + 1:])
    for t in transforms:
        assert torch.equal(t.invert(t.apply(x)), x), t.name


def test_inverse_exact_on_non_square_yx_tensor():
    x = torch.randn(1, 2, 3, 4, 7)
    for t in parse_tta("full"):
        assert torch.equal(t.invert(t.apply(x)), x), t.name


def test_apply_matches_hand_made_examples():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 1, 2, 2)  # (y, x) plane [[1, 2], [3, 4]]
    assert Transform((2,)).apply(x).flatten().tolist() == [2, 1, 4, 3]
    assert Transform((1,)).apply(x).flatten().tolist() == [3, 4, 1, 2]
    # a quarter turn from y towards x: the top row becomes the left column, read upwards
    assert Transform(rot90_k=1).apply(x).flatten().tolist() == [2, 4, 1, 3]
    assert torch.equal(Transform(rot90_k=2).apply(x), Transform((1, 2)).apply(x))
    z = torch.arange(3.0).view(1, 1, 3, 1, 1)
    assert Transform((0,)).apply(z).flatten().tolist() == [2, 1, 0]


def test_transforms_never_mix_z():
    depth = 5
    ramp = torch.arange(depth, dtype=torch.float32).view(1, 1, depth, 1, 1).expand(1, 1, depth, 4, 4)
    for t in parse_tta("full"):
        out = t.apply(ramp)
        expected = depth - 1 - torch.arange(depth) if 0 in t.flips else torch.arange(depth)
        for k in range(depth):
            assert torch.all(out[0, 0, k] == expected[k]), t.name


def test_presets_and_comma_lists():
    assert parse_tta("none") == [IDENTITY]
    assert [t.name for t in parse_tta("flips")] == ["id", "z", "y", "x"]
    tokens = "id,z,y,x,zy,zyx,rot90,rot270,x+rot90"
    expected = [
        Transform(), Transform((0,)), Transform((1,)), Transform((2,)), Transform((0, 1)),
        Transform((0, 1, 2)), Transform(rot90_k=1), Transform(rot90_k=3), Transform((2,), 1),
    ]
    assert parse_tta(tokens) == expected
    assert parse_tta(tokens.split(",")) == expected
    assert [t.name for t in expected] == tokens.split(",")
    assert parse_tta(" yz , zy, id, none ") == [Transform((0, 1)), IDENTITY]


@pytest.mark.parametrize("spec", ["foo", "z,diag", "zz", "rot45", "", "x+"])
def test_unknown_tokens_raise_and_list_valid_ones(spec):
    with pytest.raises(ConfigError) as error:
        parse_tta(spec)
    assert "rot90" in str(error.value) and "flips" in str(error.value)
    if spec not in ("", "x+"):
        assert repr(spec.split(",")[-1]) in str(error.value)


def test_rotation_needs_square_yx_window_at_planning_time():
    check_tta_window(parse_tta("full"), (8, 16, 16))
    check_tta_window(parse_tta("flips,rot180"), (8, 16, 12))
    with pytest.raises(ConfigError, match="square y-x window"):
        check_tta_window(parse_tta("rot90"), (8, 16, 12))
    engine = FunctionEngine(per_voxel, (4, 8, 6), num_classes=3)
    with pytest.raises(ConfigError, match="square y-x window"):
        predict_volume(engine, np.zeros((4, 8, 6), np.float32), tta=parse_tta("full"))
    assert engine.calls == 0


def test_tta_average_equals_plain_prediction_for_per_voxel_model():
    volume = np.random.default_rng(0).normal(size=(9, 13, 11)).astype(np.float32)
    engine = FunctionEngine(per_voxel, (4, 8, 8), num_classes=3)
    plain = predict_volume(engine, volume, overlap=0.5)
    averaged = predict_volume(engine, volume, overlap=0.5, tta=parse_tta("full"))
    np.testing.assert_allclose(averaged, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(plain, per_voxel(torch.from_numpy(volume)[None, None])[0].numpy(), atol=1e-6)


def test_tta_on_one_window_matches_brute_force_average():
    volume = np.random.default_rng(1).normal(size=(4, 6, 6)).astype(np.float32)
    engine = FunctionEngine(directional, volume.shape, num_classes=1)
    transforms = parse_tta("z,x+rot90,rot270")
    x = torch.from_numpy(volume)[None, None]
    expected = sum(t.invert(directional(t.apply(x))) for t in transforms) / len(transforms)
    got = predict_volume(engine, volume, tta=transforms)
    np.testing.assert_allclose(got, expected[0].numpy(), atol=1e-6)
    assert not np.allclose(got, predict_volume(engine, volume), atol=1e-3)  # TTA did change something
