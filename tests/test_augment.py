"""Augmentation: image, targets and points move together; z never mixes into y-x; intensity and mixup numbers."""
import itertools

import numpy as np
import pytest

from czii_kit.data.augment import AugmentConfig, apply_geometry, mixup, random_intensity
from czii_kit.data.geometry import Transform, random_transform
from czii_kit.data.targets import TargetSpec, render_targets
from czii_kit.errors import ConfigError

def Geometry(flip_z=False, flip_y=False, flip_x=False, rot90_k=0) -> Transform:
    """The shared transform from per-axis flip flags (how these tests read best)."""
    return Transform(tuple(a for a, f in enumerate((flip_z, flip_y, flip_x)) if f), rot90_k)


ALL_GEOMETRIES = [Geometry(fz, fy, fx, k)
                  for fz, fy, fx in itertools.product([False, True], repeat=3) for k in range(4)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("g", ALL_GEOMETRIES, ids=str)
def test_targets_of_moved_points_equal_moved_targets(g, stride):
    rng = np.random.default_rng(0)
    shape = (12, 20, 20)
    points = rng.uniform(-3, 1, (12, 3)) + rng.uniform(0, 1, (12, 3)) * np.array(shape)  # some centred outside
    labels = rng.integers(0, 6, 12)
    spec = TargetSpec(kind="gaussian", stride=stride, sigma_frac=0.3)
    moved_targets = apply_geometry(render_targets(points, labels, shape, (0, 0, 0), spec), g)
    targets_of_moved = render_targets(g.transform_points(points, shape), labels, shape, (0, 0, 0), spec)
    np.testing.assert_allclose(moved_targets, targets_of_moved, atol=1e-6)


@pytest.mark.parametrize("g", ALL_GEOMETRIES, ids=str)
def test_marked_image_voxel_lands_where_its_point_goes(g):
    shape = (6, 9, 9)
    mark = (1, 2, 7)
    image = np.zeros((1, *shape), np.float32)
    image[(0, *mark)] = 1.0
    out = apply_geometry(image, g)
    assert out.shape == image.shape
    landed = np.argwhere(out[0] == 1.0)
    np.testing.assert_array_equal(landed, g.transform_points([mark], shape).astype(int))


def test_rotation_by_hand():
    plane = np.array([[1, 2], [3, 4]])[None]  # (z=1, y=2, x=2)
    # a quarter turn from y towards x: the right column becomes the top row
    np.testing.assert_array_equal(apply_geometry(plane, Geometry(rot90_k=1))[0], [[2, 4], [1, 3]])
    np.testing.assert_array_equal(apply_geometry(plane, Geometry(rot90_k=2))[0], [[4, 3], [2, 1]])
    np.testing.assert_array_equal(apply_geometry(plane, Geometry(flip_x=True))[0], [[2, 1], [4, 3]])
    np.testing.assert_array_equal(apply_geometry(plane, Geometry(flip_y=True, rot90_k=1))[0], [[4, 2], [3, 1]])
    # the value 2 sits at (y, x) = (0, 1) and moves to (0, 0) under k=1
    np.testing.assert_array_equal(Geometry(rot90_k=1).transform_points([[0, 0, 1]], (1, 2, 2)), [[0, 0, 0]])


@pytest.mark.parametrize("g", ALL_GEOMETRIES, ids=str)
def test_z_is_never_mixed_into_yx(g):
    z = np.arange(5, dtype=np.float32)
    z_gradient = np.broadcast_to(z[:, None, None], (5, 8, 8))
    out = apply_geometry(z_gradient, g)
    expected_z = z[::-1] if 0 in g.flips else z
    np.testing.assert_array_equal(out, np.broadcast_to(expected_z[:, None, None], (5, 8, 8)))
    x_gradient = np.broadcast_to(np.arange(8, dtype=np.float32), (5, 8, 8))
    moved = apply_geometry(x_gradient, g)
    assert np.all(moved == moved[:1])  # still constant along z
    assert np.all(g.transform_points([[3.0, 1.0, 2.0]], (5, 8, 8))[0, 0] == (1.0 if 0 in g.flips else 3.0))


def test_apply_geometry_returns_a_contiguous_copy():
    arr = np.arange(2 * 4 * 6 * 6, dtype=np.float32).reshape(2, 4, 6, 6)
    out = apply_geometry(arr, Geometry())
    out[...] = -1
    assert arr.min() == 0
    assert apply_geometry(arr, Geometry(True, False, True, 1)).flags.c_contiguous


def test_odd_rotation_of_a_non_square_patch_is_refused():
    arr = np.zeros((4, 6, 8))
    with pytest.raises(ConfigError, match="square y-x"):
        apply_geometry(arr, Geometry(rot90_k=1))
    assert apply_geometry(arr, Geometry(flip_y=True, rot90_k=2)).shape == (4, 6, 8)


def test_random_transform_respects_allowed_axes_and_covers_all_combinations():
    rng = np.random.default_rng(0)
    seen = {random_transform(rng) for _ in range(2000)}
    assert seen == set(ALL_GEOMETRIES)
    only_x = {random_transform(rng, flips=("x",), rot90_xy=False) for _ in range(200)}
    assert only_x == {Geometry(), Geometry(flip_x=True)}
    assert {random_transform(rng, flips=(), rot90_xy=False) for _ in range(20)} == {Geometry()}
    with pytest.raises(ConfigError, match="unknown flip axis"):
        random_transform(rng, flips=("w",))


def test_intensity_off_is_identity_and_input_is_untouched():
    img = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype(np.float32)
    before = img.copy()
    out = random_intensity(img, np.random.default_rng(2), scale=0.0, shift=0.0, noise=0.0)
    np.testing.assert_array_equal(out, img)
    random_intensity(img, np.random.default_rng(2))
    np.testing.assert_array_equal(img, before)


def test_intensity_scale_and_shift_are_affine_within_bounds():
    img = np.linspace(-3, 3, 1000, dtype=np.float32).reshape(1, 10, 10, 10)
    rng = np.random.default_rng(3)
    gains, offsets = [], []
    for _ in range(300):
        out = random_intensity(img, rng, scale=0.2, shift=0.5, noise=0.0)
        gain = (out[0, -1, -1, -1] - out[0, 0, 0, 0]) / 6.0
        offset = out.mean() - gain * img.mean()
        np.testing.assert_allclose(out, gain * img + offset, atol=1e-5)
        gains.append(gain)
        offsets.append(offset)
    assert 0.8 <= min(gains) < 0.85 and 1.15 < max(gains) <= 1.2
    assert -0.5 <= min(offsets) < -0.4 and 0.4 < max(offsets) <= 0.5


def test_intensity_noise_has_the_requested_std_and_is_reproducible():
    img = np.zeros((1, 32, 64, 64), np.float32)
    out = random_intensity(img, np.random.default_rng(4), scale=0.0, shift=0.0, noise=0.3)
    assert out.dtype == np.float32
    assert abs(out.mean()) < 0.003 and out.std() == pytest.approx(0.3, rel=0.01)
    again = random_intensity(img, np.random.default_rng(4), scale=0.0, shift=0.0, noise=0.3)
    np.testing.assert_array_equal(out, again)


def test_mixup_known_numbers():
    img_a, img_b = np.full((1, 2, 2, 2), 2.0, np.float32), np.full((1, 2, 2, 2), 10.0, np.float32)
    tgt_a, tgt_b = np.ones((6, 1, 1, 1), np.float32), np.zeros((6, 1, 1, 1), np.float32)
    img, tgt = mixup(img_a, tgt_a, img_b, tgt_b, 0.25)
    np.testing.assert_allclose(img, 8.0)  # 0.25 * 2 + 0.75 * 10
    np.testing.assert_allclose(tgt, 0.25)
    assert img.dtype == np.float32 and tgt.dtype == np.float32
    with pytest.raises(ValueError, match="lam"):
        mixup(img_a, tgt_a, img_b, tgt_b, 1.5)
    with pytest.raises(ValueError, match="equal shapes"):
        mixup(img_a, tgt_a, img_b[:, :1], tgt_b, 0.5)


def test_augment_config_from_dict():
    cfg = AugmentConfig.from_config({"flips": ["z", "x"], "rot90_xy": False, "noise": 0.0, "mixup": 0.5})
    assert cfg.flips == ("z", "x") and not cfg.rot90_xy and cfg.mixup == 0.5
    assert cfg.intensity_scale == AugmentConfig().intensity_scale  # missing keys keep defaults
    off = AugmentConfig.off()
    assert off.flips == () and not off.rot90_xy and off.noise == 0 and off.mixup == 0


@pytest.mark.parametrize("config, fragment", [
    ({"flip": ["z"]}, "unknown augment config key"),
    ({"flips": "zyx"}, "list of axis names"),
    ({"flips": ["q"]}, "unknown flip axis"),
    ({"mixup": 1.5}, "probability"),
    ({"noise": -0.1}, "augment.noise"),
    ({"mixup_alpha": 0.0}, "mixup_alpha"),
])
def test_augment_config_errors(config, fragment):
    with pytest.raises(ConfigError, match=fragment):
        AugmentConfig.from_config(config)


@pytest.mark.parametrize("angle, scale", [(0.0, 1.0), (37.0, 1.0), (-120.0, 0.92), (90.0, 1.1)])
def test_free_rotation_about_z_and_zoom_move_image_and_points_together(angle, scale):
    from czii_kit.data.augment import Affine

    volume = np.zeros((40, 90, 90), np.float32)
    marks = [(20, 30, 50), (12, 55, 40), (28, 45, 45)]
    for z, y, x in marks:
        volume[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] = 1.0  # small cubes: trilinear sampling keeps their centre
    affine, origin, patch = Affine(angle, scale), (6, 13, 13), (28, 64, 64)
    image = affine.crop(volume, origin, patch)
    assert image.shape == patch and image.dtype == np.float32
    for (z, y, x), moved in zip(marks, affine.points(marks, origin, patch)):
        index = np.round(moved).astype(int)
        assert image[tuple(index)] > 0.5, (angle, scale, moved)  # the mark is where its point went
        assert moved[0] == pytest.approx(patch[0] / 2 - 0.5 + scale * (z - origin[0] - (patch[0] - 1) / 2))
    if angle == 0.0 and scale == 1.0:  # the identity is the plain crop
        np.testing.assert_array_equal(image, volume[6:34, 13:77, 13:77])


def test_random_affine_draws_nothing_when_off_and_stays_in_range():
    from czii_kit.data.augment import random_affine

    rng = np.random.default_rng(0)
    assert random_affine(rng, 0.0, 0.0).is_identity and rng.random() == np.random.default_rng(0).random()
    draws = [random_affine(rng, 30.0, 0.1) for _ in range(200)]
    assert all(-30 <= d.angle_deg <= 30 and 0.9 <= d.scale <= 1.1 for d in draws)
    with pytest.raises(ConfigError, match="rotate_z"):
        AugmentConfig(rotate_z=400)
    with pytest.raises(ConfigError, match="scale_jitter"):
        AugmentConfig(scale_jitter=0.7)
