"""Heatmap targets: peak position and value, sizes, stride convention, overlaps, config errors."""
import numpy as np
import pytest

from czii_kit.data.targets import GAUSSIAN_TRUNCATE, TargetSpec, render_targets, render_volume_targets
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, PARTICLES, particle


def dense_reference(points, labels, patch_shape, origin, spec):
    """Evaluate the kernel at every cell centre of the patch (no locality tricks), max over particles."""
    s = spec.stride
    grid = [s * np.arange(-(-n // s)) + (s - 1) / 2 + o for n, o in zip(patch_shape, origin)]
    zz, yy, xx = np.meshgrid(*grid, indexing="ij")
    out = np.zeros((len(CLASS_NAMES), *zz.shape))
    for (z, y, x), c in zip(points, labels):
        d2 = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2
        r = PARTICLES[c].radius_vox
        if spec.kind == "gaussian":
            sigma = spec.sigma_frac * r
            value = np.where(d2 <= (GAUSSIAN_TRUNCATE * sigma) ** 2, np.exp(-d2 / (2 * sigma**2)), 0.0)
        else:
            value = (d2 <= (spec.radius_frac * r) ** 2).astype(float)
        out[c] = np.maximum(out[c], value)
    return out


@pytest.mark.parametrize("kind", ["gaussian", "sphere"])
def test_peak_is_one_at_integer_pick_voxel_in_its_class_channel(kind):
    spec = TargetSpec(kind=kind)
    origin = np.array([2, 5, 7])
    for c in range(len(CLASS_NAMES)):
        pick = np.array([[10.0, 20.0, 30.0]])
        out = render_targets(pick, [c], (32, 48, 64), origin, spec)
        assert out.shape == (6, 32, 48, 64) and out.dtype == np.float32
        assert out[c, 8, 15, 23] == 1.0
        if kind == "gaussian":
            assert np.unravel_index(np.argmax(out), out.shape) == (c, 8, 15, 23)
        else:  # a flat ball: its voxels are centred on the pick
            np.testing.assert_allclose(np.argwhere(out[c] == 1).mean(axis=0), [8, 15, 23])
        assert np.all(np.delete(out, c, axis=0) == 0)
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["gaussian", "sphere"])
def test_matches_dense_reference_including_particles_outside_the_patch(kind, stride):
    rng = np.random.default_rng(1)
    patch, origin = (20, 26, 30), (40, 10, 60)
    # centres inside, just outside and far outside the patch, several per class
    points = rng.uniform(-12, 12, (40, 3)) + np.array(origin) + rng.uniform(0, 1, (40, 3)) * np.array(patch)
    labels = rng.integers(0, len(CLASS_NAMES), 40)
    spec = TargetSpec(kind=kind, stride=stride, sigma_frac=0.3, radius_frac=0.6)
    out = render_targets(points, labels, patch, origin, spec)
    ref = dense_reference(points, labels, patch, origin, spec)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_particle_just_outside_the_patch_contributes_at_the_border():
    spec = TargetSpec(kind="gaussian", sigma_frac=0.5)
    c = CLASS_NAMES.index("ribosome")
    sigma = 0.5 * particle("ribosome").radius_vox
    out = render_targets([[-2.0, 10.0, 10.0]], [c], (16, 24, 24), (0, 0, 0), spec)
    assert out[c, 0, 10, 10] == pytest.approx(np.exp(-4 / (2 * sigma**2)), rel=1e-6)
    far = render_targets([[-100.0, 10.0, 10.0]], [c], (16, 24, 24), (0, 0, 0), spec)
    assert not far.any()


def test_sphere_radius_is_radius_frac_times_particle_radius():
    c = CLASS_NAMES.index("ribosome")
    radius = particle("ribosome").radius_vox  # 14.98 voxels
    full = TargetSpec(kind="sphere", radius_frac=1.0)
    out = render_targets([[20.0, 20.0, 20.0]], [c], (41, 41, 41), (0, 0, 0), full)
    assert out[c, 20, 20, 20 + int(np.floor(radius))] == 1
    assert out[c, 20, 20, 20 + int(np.ceil(radius))] == 0
    zz, yy, xx = np.mgrid[:41, :41, :41]
    expected_count = np.sum((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= radius**2)
    assert out[c].sum() == expected_count
    half_spec = TargetSpec(kind="sphere", radius_frac=0.5)
    half = render_targets([[20.0, 20.0, 20.0]], [c], (41, 41, 41), (0, 0, 0), half_spec)
    assert half[c, 20, 20, 20 + int(np.floor(radius / 2))] == 1
    assert half[c, 20, 20, 20 + int(np.floor(radius / 2)) + 1] == 0


@pytest.mark.parametrize("pick, cell", [
    ((5.0, 8.0, 13.0), (2, 4, 6)),  # voxel v lies in cell v // 2
    ((6.0, 9.0, 0.0), (3, 4, 0)),
    ((7.4, 8.6, 1.6), (3, 4, 1)),  # cell j spans [2j - 0.5, 2j + 1.5): its centre 2j + 0.5 is the nearest
    ((7.6, 9.4, 1.4), (4, 4, 0)),
])
def test_stride2_peak_lands_in_the_cell_covering_the_pick(pick, cell):
    c = CLASS_NAMES.index("thyroglobulin")
    spec = TargetSpec(kind="gaussian", stride=2, sigma_frac=0.25)
    out = render_targets([pick], [c], (16, 20, 24), (0, 0, 0), spec)
    assert out.shape == (6, 8, 10, 12)
    assert np.unravel_index(np.argmax(out[c]), out[c].shape) == cell
    centre = 2 * np.array(cell) + 0.5
    sigma = 0.25 * particle("thyroglobulin").radius_vox
    expected = np.exp(-np.sum((centre - np.array(pick)) ** 2) / (2 * sigma**2))
    assert out[(c, *cell)] == pytest.approx(expected, rel=1e-6)


def test_stride2_odd_patch_rounds_the_grid_up():
    out = render_targets(np.zeros((0, 3)), np.zeros(0, int), (15, 20, 21), (0, 0, 0), TargetSpec(stride=2))
    assert out.shape == (6, 8, 10, 11)


def test_same_class_overlap_takes_the_max_and_classes_stay_apart():
    spec = TargetSpec(kind="gaussian", sigma_frac=0.5)
    a, b = [10.0, 12.0, 12.0], [10.0, 12.0, 16.0]
    single_a = render_targets([a], [0], (20, 24, 28), (0, 0, 0), spec)
    single_b = render_targets([b], [0], (20, 24, 28), (0, 0, 0), spec)
    both = render_targets([a, b], [0, 0], (20, 24, 28), (0, 0, 0), spec)
    assert np.array_equal(both, np.maximum(single_a, single_b))
    assert both.max() == 1.0 and both[0, 10, 12, 14] < 1.0  # max, not sum, between the two centres
    apart = render_targets([a, b], [0, 3], (20, 24, 28), (0, 0, 0), spec)
    assert np.array_equal(apart[0], single_a[0])
    assert np.array_equal(apart[3], render_targets([b], [3], (20, 24, 28), (0, 0, 0), spec)[3])


@pytest.mark.parametrize("stride", [1, 2])
def test_patch_equals_slice_of_whole_volume_render(stride):
    rng = np.random.default_rng(2)
    shape = (40, 64, 64)
    points = rng.uniform(0, 1, (30, 3)) * np.array(shape)
    labels = rng.integers(0, 6, 30)
    spec = TargetSpec(stride=stride, sigma_frac=0.4)
    whole = render_volume_targets(points, labels, shape, spec)
    assert whole.shape == (6, *(n // stride for n in shape))
    origin, patch = np.array([8, 20, 4]), (16, 32, 24)
    part = render_targets(points, labels, patch, origin, spec)
    sl = tuple(slice(o // stride, (o + n) // stride) for o, n in zip(origin, patch))
    np.testing.assert_allclose(part, whole[(slice(None), *sl)], atol=1e-6)


def test_per_class_sizes_from_config():
    sigma = {name: 0.1 * (i + 1) for i, name in enumerate(CLASS_NAMES)}
    spec = TargetSpec.from_config({"kind": "gaussian", "stride": 2, "sigma_frac": sigma, "radius_frac": 0.7})
    assert spec.stride == 2
    for i, p in enumerate(PARTICLES):
        assert spec.sigma_vox()[i] == pytest.approx(0.1 * (i + 1) * p.radius_vox)
        assert spec.radius_vox()[i] == pytest.approx(0.7 * p.radius_vox)


@pytest.mark.parametrize("config, fragment", [
    ({"kind": "gaussian", "sigma": 0.3}, "unknown target config key"),
    ({"kind": "box"}, "kind 'box' is unknown"),
    ({"stride": 4}, "stride 4 is unsupported"),
    ({"sigma_frac": {"ribosom": 0.2}}, "unknown class name"),
    ({"radius_frac": {"ribosome": 0.5}}, "no value for apo-ferritin"),
    ({"sigma_frac": -0.1}, "positive finite"),
    ({"radius_frac": "big"}, "must be numbers"),
])
def test_config_errors_name_the_problem(config, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TargetSpec.from_config(config)


def test_config_must_be_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        TargetSpec.from_config(["gaussian"])


def test_bad_labels_are_data_errors():
    with pytest.raises(DataError, match="0..5"):
        render_targets([[1.0, 1.0, 1.0]], [6], (4, 4, 4), (0, 0, 0), TargetSpec())
    with pytest.raises(DataError, match="one label per particle"):
        render_targets([[1.0, 1.0, 1.0]], [0, 1], (4, 4, 4), (0, 0, 0), TargetSpec())
    with pytest.raises(DataError, match="integer class indices"):
        render_targets([[1.0, 1.0, 1.0]], [0.5], (4, 4, 4), (0, 0, 0), TargetSpec())
