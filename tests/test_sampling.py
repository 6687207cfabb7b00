"""Patch sampling statistics and bounds, and the PatchDataset built on it."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from czii_kit.data.dataset import PatchDataset
from czii_kit.data.sampling import PatchSampler
from czii_kit.data.targets import TargetSpec
from czii_kit.errors import ConfigError, DataError

PATCH = (16, 32, 32)


def contains(origin, patch, point):
    return bool(np.all((origin <= point) & (point < origin + np.asarray(patch))))


def binomial_ok(count, n, p, sigmas=4.5):
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1


def uniform_contain_probability(shape, patch, point):
    """Exact chance that a uniformly placed patch contains ``point``: count origins per axis."""
    prob = 1.0
    for s, p, c in zip(shape, patch, point):
        prob *= (min(c, s - p) - max(0, c - p + 1) + 1) / (s - p + 1)
    return prob


# --------------------------------------------------------------------------- PatchSampler
def test_positive_fraction_is_respected():
    shape, point = (60, 200, 200), np.array([30, 100, 90])
    sampler = PatchSampler([shape], [point[None].astype(float)], [[2]], PATCH, positive_fraction=0.7, seed=0)
    rng = np.random.default_rng(1)
    n = 4000
    hits = sum(contains(sampler.sample(rng)[1], PATCH, point) for _ in range(n))
    expected = 0.7 + 0.3 * uniform_contain_probability(shape, PATCH, point)
    assert binomial_ok(hits, n, expected)


def test_positive_patches_contain_their_particle_with_a_margin():
    rng = np.random.default_rng(2)
    shapes = [(40, 90, 80), (30, 60, 70)]
    points = [rng.uniform(0, 1, (25, 3)) * np.array(s) for s in shapes]
    points[0][:3] = [[0.2, 0.0, 79.4], [-0.4, 45.0, 40.0], [39.0, 89.0, 0.0]]  # on / just past the volume border
    labels = [rng.integers(0, 6, 25) for _ in shapes]
    sampler = PatchSampler(shapes, points, labels, PATCH, positive_fraction=1.0, margin=4, seed=0)
    for _ in range(2000):
        run, origin, k = sampler.sample_positive(rng)
        centre = np.clip(np.floor(points[run][k] + 0.5), 0, np.array(shapes[run]) - 1)
        assert contains(origin, PATCH, centre)
        free = (origin > 0) & (origin < np.array(shapes[run]) - PATCH)  # not pushed by the volume border
        offset = centre - origin
        assert np.all((offset[free] >= 4) & (offset[free] <= np.array(PATCH)[free] - 5))


def test_class_weights_shift_class_frequencies_and_zero_is_never_chosen():
    rng = np.random.default_rng(3)
    counts = [5, 40, 10, 0, 20, 7]  # class 3 absent from the data
    labels = np.repeat(np.arange(6), counts)
    points = rng.uniform(0, 1, (len(labels), 3)) * np.array([40, 100, 100])
    weights = [1.0, 0.0, 2.0, 5.0, 1.0, 1.0]
    sampler = PatchSampler([(40, 100, 100)], [points], [labels], PATCH, class_weights=weights, seed=0)
    n = 5000
    chosen = np.array([labels[sampler.sample_positive(rng)[2]] for _ in range(n)])
    freq = np.bincount(chosen, minlength=6)
    assert freq[1] == 0 and freq[3] == 0
    eligible = np.array([1.0, 0, 2.0, 0, 1.0, 1.0])  # weight x present
    for c in (0, 2, 4, 5):
        assert binomial_ok(freq[c], n, eligible[c] / eligible.sum())


def test_particle_is_uniform_over_all_runs_of_its_class():
    shapes = [(30, 64, 64)] * 2
    points = [np.array([[15.0, 30, 30]]), np.array([[10.0, 20, 20], [12, 40, 40], [20, 30, 50]])]
    labels = [[0], [0, 0, 0]]
    sampler = PatchSampler(shapes, points, labels, PATCH, seed=0)
    rng = np.random.default_rng(4)
    runs = [sampler.sample_positive(rng)[0] for _ in range(4000)]
    assert binomial_ok(runs.count(1), 4000, 0.75)


@pytest.mark.parametrize("shape", [(16, 32, 32), (17, 100, 33), (50, 64, 200)])
def test_patches_always_lie_inside_the_volume(shape):
    rng = np.random.default_rng(5)
    points = rng.uniform(-2, 2, (30, 3)) + rng.uniform(0, 1, (30, 3)) * np.array(shape)
    sampler = PatchSampler([shape], [points], [rng.integers(0, 6, 30)], PATCH, positive_fraction=0.5, seed=0)
    origins = np.array([sampler.sample(rng)[1] for _ in range(1000)])
    assert origins.dtype.kind == "i"
    assert np.all(origins >= 0) and np.all(origins + PATCH <= np.array(shape))
    negatives = np.array([sampler.sample_negative(rng)[1] for _ in range(1000)])
    assert np.array_equal(negatives.min(axis=0), [0, 0, 0])
    assert np.array_equal(negatives.max(axis=0), np.array(shape) - PATCH)


def test_sampling_is_deterministic_per_seed():
    shape = (40, 80, 80)
    points = np.random.default_rng(6).uniform(0, 40, (10, 3))
    labels = np.arange(10) % 6

    def draws(seed, rng=None):
        sampler = PatchSampler([shape], [points], [labels], PATCH, seed=seed)
        return [(run, tuple(origin)) for run, origin in (sampler.sample(rng) for _ in range(50))]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert draws(0, np.random.default_rng(9)) == draws(1, np.random.default_rng(9))  # an explicit rng wins


def test_patch_larger_than_a_volume_names_both_shapes():
    with pytest.raises(ConfigError, match=r"\(16, 32, 32\).*\(12, 64, 64\).*train.patch_size"):
        PatchSampler([(40, 64, 64), (12, 64, 64)], [np.zeros((0, 3))] * 2, [np.zeros(0, int)] * 2, PATCH)


def test_runs_without_particles_still_give_negatives():
    shapes = [(20, 40, 40), (20, 40, 40)]
    points = [np.zeros((0, 3)), np.array([[10.0, 20.0, 20.0]])]
    sampler = PatchSampler(shapes, points, [np.zeros(0, int), [4]], PATCH, positive_fraction=0.5, seed=0)
    rng = np.random.default_rng(10)
    assert {sampler.sample(rng)[0] for _ in range(200)} == {0, 1}
    assert {sampler.sample_positive(rng)[0] for _ in range(50)} == {1}


def test_no_positive_candidates_is_an_error_unless_positives_are_off():
    empty = ([(20, 40, 40)], [np.zeros((0, 3))], [np.zeros(0, int)], PATCH)
    with pytest.raises(ConfigError, match="positive_fraction"):
        PatchSampler(*empty, positive_fraction=0.5)
    only_class_1 = ([(20, 40, 40)], [np.array([[5.0, 5, 5]])], [[1]], PATCH)
    with pytest.raises(ConfigError, match="class_weights"):
        PatchSampler(*only_class_1, class_weights=[1, 0, 1, 1, 1, 1])
    PatchSampler(*empty, positive_fraction=0.0).sample()
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.0"):  # one class weight: one class, label 0
        PatchSampler(*only_class_1, class_weights=[1])


# --------------------------------------------------------------------------- PatchDataset
def marked_volume(shape, points, labels):
    """Zeros with a class-coded spike (3 + class) at each integer particle centre."""
    vol = np.zeros(shape, np.float32)
    for p, c in zip(points.astype(int), labels):
        vol[tuple(p)] = 3.0 + c
    return vol


def small_data(seed=0, n=12, shape=(40, 72, 72)):
    rng = np.random.default_rng(seed)
    points = rng.integers(4, np.array(shape) - 4, (n, 3)).astype(np.float64)
    labels = rng.integers(0, 6, n)
    return marked_volume(shape, points, labels), points, labels


FLIPS_AND_ROT = {"flips": ["z", "y", "x"], "rot90_xy": True, "intensity_scale": 0.0, "intensity_shift": 0.0,
                 "noise": 0.0}


@pytest.mark.parametrize("stride", [1, 2])
def test_dataset_shapes_and_dtypes(stride):
    vol, points, labels = small_data()
    ds = PatchDataset([vol], [points], [labels], PATCH, TargetSpec(stride=stride), augment={}, length=5, seed=0)
    image, target = ds[0]
    assert len(ds) == 5
    assert image.dtype == torch.float32 and image.shape == (1, *PATCH)
    assert target.dtype == torch.float32 and target.shape == (6, *(n // stride for n in PATCH))
    assert image.is_contiguous() and target.is_contiguous()
    assert 0 <= target.min() and target.max() <= 1
    with pytest.raises(IndexError):
        ds[5]


def test_dataset_is_deterministic_in_seed_epoch_and_index():
    vol, points, labels = small_data()
    vol = vol + np.random.default_rng(1).standard_normal(vol.shape).astype(np.float32)

    def make(seed=0):
        return PatchDataset([vol], [points], [labels], PATCH, TargetSpec(), augment={"mixup": 0.5},
                            length=8, seed=seed)

    a, b = make(), make()
    for i in (0, 3, 7):
        assert all(torch.equal(x, y) for x, y in zip(a[i], b[i]))
    assert not torch.equal(a[0][0], a[1][0])
    first = a[2][0]
    a.set_epoch(1)
    assert not torch.equal(a[2][0], first)
    a.set_epoch(0)
    assert torch.equal(a[2][0], first)
    assert not torch.equal(make(seed=1)[2][0], first)


def test_dataloader_workers_reproduce_direct_indexing():
    vol, points, labels = small_data()
    ds = PatchDataset([vol], [points], [labels], PATCH, TargetSpec(stride=2), augment={}, length=6, seed=3)
    ds.set_epoch(2)
    loaded = list(DataLoader(ds, batch_size=3, num_workers=2))
    direct = [torch.stack([ds[i][j] for i in range(k, k + 3)]) for k in (0, 3) for j in (0, 1)]
    assert all(torch.equal(x, y) for x, y in zip([t for batch in loaded for t in batch], direct))


def test_set_epoch_reaches_persistent_workers():
    vol, points, labels = small_data()
    ds = PatchDataset([vol], [points], [labels], PATCH, TargetSpec(stride=2), augment={}, length=4, seed=5)
    loader = DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)
    per_epoch = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        (images, _), = list(loader)
        assert torch.equal(images, torch.stack([ds[i][0] for i in range(4)]))
        per_epoch.append(images)
    assert not torch.equal(*per_epoch)


def test_target_peaks_follow_the_image_marks_through_augmentation():
    vol, points, labels = small_data(n=20)
    ds = PatchDataset([vol], [points], [labels], PATCH, TargetSpec(kind="gaussian", sigma_frac=0.2),
                      positive_fraction=1.0, augment=FLIPS_AND_ROT, length=60, seed=0)
    for i in range(len(ds)):
        image, target = (t.numpy() for t in ds[i])
        marks = np.argwhere(image[0] > 0)
        assert len(marks) >= 1  # a positive patch holds its particle
        peaks = np.argwhere(target == 1.0)  # (class, z, y, x) of exact centres
        assert sorted(map(tuple, peaks[:, 1:])) == sorted(map(tuple, marks))
        for c, z, y, x in peaks:
            assert image[0, z, y, x] == 3.0 + c


def test_stride2_target_peak_is_the_cell_holding_the_mark():
    shape = (40, 72, 72)
    for k, centre in enumerate([(20.0, 30.0, 41.0), (13.0, 50.0, 8.0)]):
        points, labels = np.array([centre]), np.array([k + 2])
        ds = PatchDataset([marked_volume(shape, points, labels)], [points], [labels], PATCH,
                          TargetSpec(stride=2, sigma_frac=0.3), positive_fraction=1.0, augment=FLIPS_AND_ROT,
                          length=20, seed=k)
        for i in range(len(ds)):
            image, target = (t.numpy() for t in ds[i])
            mark = np.argwhere(image[0] > 0)[0]
            channel = target[k + 2]
            assert np.array_equal(np.unravel_index(np.argmax(channel), channel.shape), mark // 2)


def test_intensity_and_mixup_act_on_images_and_blend_targets():
    vol, points, labels = small_data(n=20)
    plain = PatchDataset([vol], [points], [labels], PATCH, TargetSpec(), positive_fraction=1.0, length=20)
    mixed = PatchDataset([vol], [points], [labels], PATCH, TargetSpec(), positive_fraction=1.0, length=20,
                         augment={"mixup": 1.0, "noise": 0.0})
    assert all(plain[i][1].max() == 1.0 for i in range(20))
    peaks = [mixed[i][1].max().item() for i in range(20)]
    assert all(0 < p <= 1 for p in peaks) and min(peaks) < 1.0
    noisy = PatchDataset([vol], [points], [labels], PATCH, TargetSpec(), length=2,
                         augment={"noise": 0.5, "intensity_scale": 0.0, "intensity_shift": 0.0})
    image, target = noisy[0]
    assert image.std().item() == pytest.approx(0.5, rel=0.1)  # the volume is nearly all zeros
    assert target.min() >= 0 and target.max() <= 1  # noise never reaches the targets


def test_dataset_config_errors():
    vol, points, labels = small_data()
    with pytest.raises(ConfigError, match="square"):
        PatchDataset([vol], [points], [labels], (16, 32, 48), TargetSpec(), augment={})
    PatchDataset([vol], [points], [labels], (16, 32, 48), TargetSpec(), augment={"rot90_xy": False})
    with pytest.raises(ConfigError, match="divisible by the target stride 2"):
        PatchDataset([vol], [points], [labels], (15, 32, 32), TargetSpec(stride=2))
    with pytest.raises(DataError, match="float32"):
        PatchDataset([vol.astype(np.float64)], [points], [labels], PATCH, TargetSpec())
    with pytest.raises(ConfigError, match="unknown target config key"):
        PatchDataset([vol], [points], [labels], PATCH, {"sigma": 1})
    ds = PatchDataset([vol], [points], [labels], PATCH, {"kind": "sphere", "stride": 2}, length=1)
    assert ds[0][1].shape == (6, 8, 16, 16)


def test_lookalikes_are_strong_dark_blobs_away_from_every_pick():
    from czii_kit.data.lookalikes import lookalike_centres

    volume = np.zeros((30, 60, 60), np.float32)
    zz, yy, xx = np.indices(volume.shape)
    for centre in [(15, 15, 15), (15, 45, 45), (15, 15, 45)]:  # three dark balls of radius 4
        volume[(zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 16] = -1.0
    picked = np.array([[15.0, 15.0, 15.0]])  # one of them is a labelled particle
    found = lookalike_centres(volume, picked, radius_vox=4.0, n=5)
    assert sorted(map(tuple, found.tolist())) == [(15, 15, 45), (15, 45, 45)]
    assert len(lookalike_centres(volume, picked, 4.0, n=1)) == 1
    assert len(lookalike_centres(volume, picked, 4.0, n=0)) == 0


def test_hard_negative_patches_hold_their_lookalike_and_leave_the_default_stream_alone():
    shapes, points, labels = [(20, 40, 40)], [np.array([[10.0, 10, 10]])], [[0]]
    hard = [np.array([[10, 30, 30]])]
    sampler = PatchSampler(shapes, points, labels, PATCH, positive_fraction=0.0, hard_negatives=hard,
                           hard_negative_fraction=1.0, seed=0)
    for _ in range(50):
        run, origin = sampler.sample()
        assert np.all(origin <= hard[0][0]) and np.all(hard[0][0] < origin + np.array(PATCH))
    plain = PatchSampler(shapes, points, labels, PATCH, positive_fraction=0.5, seed=3)
    off = PatchSampler(shapes, points, labels, PATCH, positive_fraction=0.5, seed=3, hard_negatives=hard,
                       hard_negative_fraction=0.0)
    assert [tuple(plain.sample()[1]) for _ in range(20)] == [tuple(off.sample()[1]) for _ in range(20)]
    with pytest.raises(ConfigError, match="hard_negative_fraction"):
        PatchSampler(shapes, points, labels, PATCH, positive_fraction=0.8, hard_negative_fraction=0.3)


def test_a_seventh_class_is_sampled_when_the_class_count_is_given_without_weights():
    points = [np.array([[10.0, 20.0, 20.0], [10.0, 30.0, 30.0]])]
    labels = [[0, 6]]  # class 6 exists only in a seven-class set (a copick project with an extra object)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.5"):
        PatchSampler([(20, 64, 64)], points, labels, PATCH)  # six CZII classes by default
    sampler = PatchSampler([(20, 64, 64)], points, labels, PATCH, positive_fraction=1.0, n_classes=7, seed=0)
    rng = np.random.default_rng(0)
    chosen = {sampler.sample_positive(rng)[2] for _ in range(100)}
    assert chosen == {0, 1}  # both particles, the seventh class included, are drawn
