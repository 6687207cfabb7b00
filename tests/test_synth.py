"""The synthetic generator: determinism, real-data statistics, geometry, imaging, layout, tool, plots."""
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.fft
from scipy.spatial.distance import cdist

from czii_kit import viz
from czii_kit.data import io, layout, synth
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, HARD_CLASSES, RADIUS, VOXEL_SPACING, angstrom_to_voxel

SMALL = (48, 96, 96)
REPO = Path(__file__).resolve().parents[1]


def clean_config(shape, **kw) -> synth.SynthConfig:
    """Only the targets, no noise, ice or distractors: what is left is where the picks say."""
    base = dict(shape=shape, noise=0.0, ice_contrast=0.0, ice_texture=0.0, distractors=0, membranes=0, gold=0,
                jitter_angstrom=0.0)
    return synth.SynthConfig(**{**base, **kw})


def ball_values(vol: np.ndarray, centre_zyx, radius: float) -> np.ndarray:
    """Values of vol within radius (voxels) of centre."""
    lo = np.maximum(np.floor(np.asarray(centre_zyx) - radius).astype(int), 0)
    hi = np.minimum(np.ceil(np.asarray(centre_zyx) + radius).astype(int) + 1, vol.shape)
    z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    inside = (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius ** 2
    return vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside]


@pytest.fixture(scope="module")
def full_scene():
    """A full-size scene (no rendering: cheap), to check counts and geometry at the real scale."""
    return synth.sample_scene("TS_99_9", synth.SynthConfig(), np.random.default_rng(5))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    synth.make_dataset(root, n_train=2, n_test=1, shape=SMALL, seed=11, recons=("denoised", "wbp"), progress=False)
    return root


# --------------------------------------------------------------------------- determinism and values
def test_same_seed_same_run_other_seed_other_run():
    cfg = synth.SynthConfig(shape=SMALL)
    vols_a, picks_a = synth.generate_run("TS_5_4", 3, cfg, ("denoised", "wbp"))
    vols_b, picks_b = synth.generate_run("TS_5_4", 3, cfg, ("denoised", "wbp"))
    for recon in ("denoised", "wbp"):
        np.testing.assert_array_equal(vols_a[recon], vols_b[recon])
    pd.testing.assert_frame_equal(picks_a, picks_b)
    # asking for fewer recons does not change the ones produced
    np.testing.assert_array_equal(synth.generate_run("TS_5_4", 3, cfg)[0]["denoised"], vols_a["denoised"])
    vols_c, picks_c = synth.generate_run("TS_5_4", 4, cfg)
    assert not np.allclose(vols_c["denoised"], vols_a["denoised"])
    assert len(picks_c) != len(picks_a) or not np.allclose(picks_c[["x", "y", "z"]], picks_a[["x", "y", "z"]])


def test_volumes_are_float32_finite_and_on_the_real_scale():
    cfg = synth.SynthConfig(shape=SMALL)
    vols, picks, _, imaging = synth.simulate_run("TS_6_6", 1, cfg, layout.RECONS)
    assert set(vols) == set(layout.RECONS)
    for vol in vols.values():
        assert vol.dtype == np.float32 and vol.shape == SMALL and np.isfinite(vol).all()
        assert 1e-6 < vol.std() < 1e-3
    # denoised is scaled to the real data's std (times the run's gain), computed without an extra FFT
    assert vols["denoised"].std() == pytest.approx(synth.TARGET_STD * imaging.gain, rel=1e-3)
    assert abs(vols["denoised"].mean()) < 0.2 * vols["denoised"].std()
    assert list(picks.columns) == io.PICK_COLUMNS and (picks["experiment"] == "TS_6_6").all()


def test_config_and_recon_validation():
    with pytest.raises(ConfigError, match="at least 32"):
        synth.SynthConfig(shape=(16, 96, 96))
    with pytest.raises(ConfigError, match="tilt_max_deg"):
        synth.SynthConfig(tilt_max_deg=(50, 95))
    with pytest.raises(ConfigError, match="noise"):
        synth.SynthConfig(noise=-1)
    with pytest.raises(ConfigError, match="denoised, wbp"):
        synth.generate_run("TS_5_4", 0, synth.SynthConfig(shape=SMALL), ("denoised", "raw"))


# --------------------------------------------------------------------------- counts and geometry
def test_expected_counts_are_the_real_counts_scaled_by_volume():
    real_ts_6_4 = {"apo-ferritin": 58, "beta-amylase": 9, "beta-galactosidase": 12, "ribosome": 74,
                   "thyroglobulin": 30, "virus-like-particle": 10}  # from the real training picks
    assert synth.expected_counts((184, 630, 630), profile=synth.REAL_COUNTS["TS_6_4"]) == pytest.approx(real_ts_6_4)
    half = synth.expected_counts((92, 630, 630), profile=synth.REAL_COUNTS["TS_6_4"])
    assert half == pytest.approx({c: n / 2 for c, n in real_ts_6_4.items()})
    doubled = synth.expected_counts((184, 630, 630), density=2.0, profile=synth.REAL_COUNTS["TS_6_4"])
    assert doubled == pytest.approx({c: 2 * n for c, n in real_ts_6_4.items()})
    # default profile: the mean of the seven real runs, e.g. 375 apo-ferritin / 7
    assert synth.expected_counts((184, 630, 630))["apo-ferritin"] == pytest.approx(375 / 7)


def test_sampled_counts_are_unbiased_with_at_least_one_of_each():
    rng = np.random.default_rng(0)
    draws = pd.DataFrame([synth.sample_counts({"a": 2.3, "b": 0.2, "c": 5.0}, rng) for _ in range(4000)])
    assert draws["a"].mean() == pytest.approx(2.3, abs=0.03)
    assert set(draws["a"]) == {2, 3}
    assert (draws["b"] == 1).all()  # never zero of a class
    assert (draws["c"] == 5).all()  # whole expectations are exact


def test_full_size_scene_has_the_real_counts_inside_ice_without_overlaps(full_scene):
    counts = full_scene.picks["particle_type"].value_counts().to_dict()
    assert counts == {"apo-ferritin": 36, "beta-amylase": 21, "beta-galactosidase": 24, "ribosome": 65,
                      "thyroglobulin": 49, "virus-like-particle": 13}  # real TS_99_9
    zyx = angstrom_to_voxel(full_scene.picks[["x", "y", "z"]].to_numpy())
    assert (zyx >= 0).all() and (zyx <= np.array(full_scene.shape) - 1).all()
    assert (full_scene.slab.depth(zyx) < full_scene.slab.thickness / 2).all()
    centres = np.array([o.centre for o in full_scene.objects])
    radii = np.array([o.radius for o in full_scene.objects])
    dist = cdist(centres, centres) + np.diag(np.full(len(centres), np.inf))
    assert (dist >= synth.OVERLAP * (radii[:, None] + radii[None]) - 1e-9).all()


def test_distractors_include_hard_class_lookalikes(full_scene):
    radii = np.array([o.radius for o in full_scene.objects if o.kind == "protein"]) * VOXEL_SPACING
    assert len(radii) > 100
    hard = np.array([RADIUS[c] for c in HARD_CLASSES])
    near_hard = (np.abs(radii[:, None] / hard[None] - 1) <= 0.15).any(axis=1)
    assert 0.3 < near_hard.mean() < 0.8
    assert sum(o.kind == "gold" for o in full_scene.objects) > 0 and len(full_scene.membranes) > 0


def test_every_class_appears_even_in_small_runs():
    cfg = synth.SynthConfig(shape=SMALL)
    for seed in range(3):
        _, picks = synth.generate_run("TS_T1_1", seed, cfg)
        assert set(picks["particle_type"]) == set(CLASS_NAMES)


def test_picks_are_the_rendered_centres_plus_a_few_angstrom_of_jitter(full_scene):
    exact = synth.sample_scene("TS_5_4", replace(synth.SynthConfig(), jitter_angstrom=0.0), np.random.default_rng(2))
    truth = np.array([t.centre for t in exact.targets])
    picked = angstrom_to_voxel(exact.picks[["x", "y", "z"]].to_numpy())
    # same set of points (picks are sorted by class), exactly, through the one unit convention
    np.testing.assert_allclose(np.sort(picked, axis=0), np.sort(truth, axis=0), atol=1e-9)
    # default jitter: per-axis std of a few Å
    truth = np.array([t.centre for t in full_scene.targets])
    picked = angstrom_to_voxel(full_scene.picks[["x", "y", "z"]].to_numpy())
    nearest = cdist(picked, truth).argmin(axis=1)
    error_angstrom = (picked - truth[nearest]) * VOXEL_SPACING
    assert error_angstrom.std() == pytest.approx(synth.SynthConfig().jitter_angstrom, rel=0.15)


# --------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_each_class_renders_at_its_true_size_centred_on_its_pick(name):
    shape = (64, 64, 64)
    centre = np.array([31.3, 32.6, 30.8])
    rotation = synth._random_rotation(np.random.default_rng(1))
    obj = synth.Placed(name, centre, RADIUS[name] / VOXEL_SPACING,
                       synth.class_template(name).rotated(rotation).scaled(1 / VOXEL_SPACING))
    scene = synth.sample_scene("x", clean_config(shape), np.random.default_rng(0))
    density = synth.render_density(replace(scene, objects=(obj,)))
    grid = np.indices(shape).reshape(3, -1).T
    mass = density.ravel()
    np.testing.assert_allclose((grid * mass[:, None]).sum(0) / mass.sum(), centre, atol=0.05)
    r = np.linalg.norm(grid - centre, axis=1) * VOXEL_SPACING / RADIUS[name]
    assert mass[r <= 1].sum() / mass.sum() > 0.9  # within the class radius
    assert mass[r <= 0.6].sum() / mass.sum() < 0.9  # and not much smaller than it
    hollow = mass[r <= 0.25].mean() / mass.max()
    assert hollow < 0.05 if name in ("apo-ferritin", "virus-like-particle") else hollow > 0.05


def test_protein_is_dark_and_stands_out_where_the_picks_are():
    shape = (64, 128, 128)
    vols, picks = synth.generate_run("TS_6_4", 0, clean_config(shape, density=3), layout.RECONS)
    zyx = angstrom_to_voxel(picks[["x", "y", "z"]].to_numpy())
    ribosomes = zyx[picks["particle_type"] == "ribosome"]
    r = RADIUS["ribosome"] / VOXEL_SPACING
    for vol in vols.values():  # dense -> dark, in every recon
        assert all(ball_values(vol, p, r / 2).mean() < -0.25 * vol.std() for p in ribosomes)
    vol = vols["denoised"]
    at_picks = [np.sqrt(np.mean(ball_values(vol, p, r / 2) ** 2)) for p in ribosomes]
    rng = np.random.default_rng(0)
    far = np.max(list(RADIUS.values())) / VOXEL_SPACING + 8
    background = [p for p in rng.uniform(r / 2, np.array(shape) - r / 2, (400, 3)) if cdist([p], zyx).min() > far]
    assert len(background) >= 10
    at_background = [np.sqrt(np.mean(ball_values(vol, p, r / 2) ** 2)) for p in background]
    assert min(at_picks) > 5 * np.median(at_background)


def test_hard_classes_have_lower_contrast_than_ribosome_and_vlp():
    shape = (64, 160, 160)
    contrast = {c: [] for c in CLASS_NAMES}
    for seed in range(2):
        vols, picks = synth.generate_run("TS_6_6", seed, clean_config(shape, density=5))
        vol = vols["denoised"] / vols["denoised"].std()
        for name, p in zip(picks["particle_type"], angstrom_to_voxel(picks[["x", "y", "z"]].to_numpy())):
            contrast[name].append(np.sqrt(np.mean(ball_values(vol, p, RADIUS[name] / VOXEL_SPACING) ** 2)))
    mean = {c: np.mean(v) for c, v in contrast.items()}
    assert max(mean[c] for c in HARD_CLASSES) < 0.85 * min(mean["ribosome"], mean["virus-like-particle"])


# --------------------------------------------------------------------------- imaging
def test_missing_wedge_about_y_is_empty_in_every_recon():
    shape = (64, 96, 96)
    cfg = synth.SynthConfig(shape=shape, tilt_max_deg=(45.0, 45.0))
    vols, _ = synth.generate_run("TS_5_4", 0, cfg, ("wbp", "denoised", "ctfdeconvolved"))
    kz = np.abs(scipy.fft.fftfreq(shape[0]))[:, None, None]
    kx = np.abs(scipy.fft.rfftfreq(shape[2]))[None, None, :]
    missing = np.broadcast_to(kz > 1.05 * kx, (shape[0], shape[1], kx.shape[-1]))  # tan 45 = 1, margin
    measured = np.broadcast_to(kz < 0.95 * kx, missing.shape)
    for vol in vols.values():
        power = np.abs(scipy.fft.rfftn(vol)) ** 2
        assert power[missing].mean() < 1e-6 * power[measured].mean()


def test_ice_slab_holds_the_sample_and_outside_is_only_noise():
    shape = (96, 96, 96)
    cfg = clean_config(shape, ice_texture=0.5, ice_fraction=(0.5, 0.5))
    vols, _, scene, _ = synth.simulate_run("TS_5_4", 0, cfg)
    vol = vols["denoised"]
    depth = np.abs(np.arange(shape[0])[:, None, None] - scene.slab.mid_z(*np.indices(shape[1:]))[None])
    inside = vol[depth < scene.slab.thickness / 2 - 6]
    outside = vol[depth > scene.slab.thickness / 2 + 12]
    assert outside.size > 1000 and inside.std() > 3 * outside.std()


def test_noise_drawn_in_fourier_space_has_the_requested_std():
    shape = (32, 64, 64)
    kz, ky, kx = synth._frequencies(shape)
    noise = synth._fourier_noise(kz * kz + ky * ky + kx * kx, 0.7, np.random.default_rng(0))
    real = scipy.fft.irfftn(noise, s=shape, norm="ortho")
    assert real.std() == pytest.approx(0.7, rel=0.03)
    assert synth._std_from_rfft(scipy.fft.rfftn(real, norm="ortho"), shape[-1]) == pytest.approx(real.std(), rel=1e-4)


def test_ctf_is_negative_at_low_frequency_and_has_its_first_zero_where_physics_says():
    imaging = synth.Imaging(defocus_um=3.0, tilt_max_deg=60.0, bfactor=0.0, gain=1.0)
    cfg = synth.SynthConfig()
    k = np.linspace(0, 0.05, 2001, dtype=np.float32)
    transfer = synth.ctf(k * k, imaging, cfg)
    assert transfer[0] == pytest.approx(-0.07, abs=1e-6)  # amplitude contrast at k = 0
    lam = 12.2643 / np.sqrt(300e3 * (1 + 0.978466e-6 * 300e3))
    # first zero: pi lambda df k^2 + asin(0.07) = pi
    first_zero = np.sqrt((np.pi - np.arcsin(0.07)) / (np.pi * lam * 3.0e4))
    crossing = k[np.argmax(transfer > 0)]
    assert crossing == pytest.approx(first_zero, abs=5e-5)


# --------------------------------------------------------------------------- dataset on disk
def test_written_layout_reads_back_with_the_kit(written):
    assert layout.list_runs(written, "train") == ["TS_5_4", "TS_6_4"]
    assert layout.list_runs(written, "test") == ["TS_T1_1"]
    assert layout.available_recons(written, "train", "TS_5_4") == ["denoised", "wbp"]
    assert layout.available_recons(written, "test", "TS_T1_1") == ["denoised"]
    path = layout.tomogram_path(written, "train", "TS_6_4")
    assert io.tomogram_levels(path) == ["0", "1", "2"]
    for level, shape in enumerate([SMALL, (24, 48, 48), (12, 24, 24)]):
        assert io.read_tomogram(written, "TS_6_4", level=level).shape == shape
    cfg = replace(synth.SynthConfig(), shape=SMALL)
    vols, picks = synth.generate_run("TS_6_4", synth.run_seed(11, "train", 1), cfg, ("denoised", "wbp"))
    np.testing.assert_array_equal(io.read_tomogram(written, "TS_6_4", recon="wbp"), vols["wbp"])
    read = io.read_picks(written, "TS_6_4")
    assert set(read["particle_type"]) == set(CLASS_NAMES)
    key = ["particle_type", "x", "y", "z"]
    pd.testing.assert_frame_equal(read.sort_values(key).reset_index(drop=True)[key],
                                  picks.sort_values(key).reset_index(drop=True)[key])
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_solution_and_sample_submission_match_the_test_runs(written):
    solution = pd.read_csv(written / layout.SOLUTION_CSV)
    assert list(solution.columns) == ["id", *io.PICK_COLUMNS]
    assert solution["id"].tolist() == list(range(len(solution)))
    _, picks = synth.generate_run("TS_T1_1", synth.run_seed(11, "test", 0), replace(synth.SynthConfig(), shape=SMALL))
    pd.testing.assert_frame_equal(solution.drop(columns="id"), picks, check_exact=False, rtol=1e-12)
    sample = pd.read_csv(written / "sample_submission.csv")
    assert list(sample.columns) == ["id", *io.PICK_COLUMNS]
    assert set(sample["experiment"]) == {"TS_T1_1"} and set(sample["particle_type"]) <= set(CLASS_NAMES)


def test_refuses_a_non_empty_output_but_fills_an_empty_one(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="busy.*not empty"):
        synth.make_dataset(tmp_path / "busy", n_train=1, n_test=0, shape=SMALL, progress=False)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    synth.make_dataset(tmp_path / "empty", n_train=1, n_test=0, shape=SMALL, progress=False)
    assert layout.list_runs(tmp_path / "empty", "train") == ["TS_5_4"]


def test_a_crash_leaves_nothing_half_made(tmp_path, monkeypatch):
    real = synth.simulate_run
    calls = []

    def crash_on_second_run(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "simulate_run", crash_on_second_run)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synth.make_dataset(tmp_path / "ds", n_train=2, n_test=0, shape=SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_run_names():
    assert synth.run_names("train", 9) == ["TS_5_4", "TS_6_4", "TS_6_6", "TS_69_2", "TS_73_6", "TS_86_3",
                                           "TS_99_9", "TS_5_4_2", "TS_6_4_2"]
    assert synth.run_names("test", 2) == ["TS_T1_1", "TS_T2_1"]


def test_builtin_dataset_is_generated_once_then_reused(tmp_path, monkeypatch, capsys):
    default_path = synth.builtin_dataset_path(tmp_path)
    monkeypatch.setattr(synth, "BUILTIN", dict(n_train=1, n_test=1, shape=SMALL, seed=0))
    monkeypatch.setenv("CZII_DATA_DIR", str(tmp_path / "cache"))
    path = synth.ensure_builtin_dataset()
    assert path.parent == tmp_path / "cache" and path.name.startswith("synthetic-")
    assert path.name != default_path.name  # the hash follows the parameters
    assert "generating the built-in synthetic dataset" in capsys.readouterr().out
    assert layout.list_runs(path, "train") == ["TS_5_4"]

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synth, "make_dataset", fail)
    assert synth.ensure_builtin_dataset() == path
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("CZII_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert synth.builtin_dataset_path() == Path("data") / path.name


# --------------------------------------------------------------------------- tool and plots
def load_tool():
    spec = importlib.util.spec_from_file_location("make_synthetic", REPO / "tools" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_writes_dataset_and_preview_and_reports_user_errors(tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / "ds"
    args = ["--out", str(out), "--train", "1", "--test", "1", "--shape", *map(str, SMALL), "--recons",
            "denoised,wbp", "--noise", "0.2", "--tilt", "50", "--preview", "--no-progress"]
    assert tool.main(args) == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "preview" in printed
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert layout.available_recons(out, "train", "TS_5_4") == ["denoised", "wbp"]
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "Traceback" not in err


def test_picks_in_slice_gives_the_cross_section_radius():
    r = RADIUS["ribosome"] / VOXEL_SPACING
    picks = pd.DataFrame({"experiment": "r", "particle_type": ["ribosome", "apo-ferritin", "apo-ferritin"],
                          "x": [300.0, 500.0, 900.0], "y": [200.0, 100.0, 100.0],
                          "z": [50 * VOXEL_SPACING, 80 * VOXEL_SPACING, 84 * VOXEL_SPACING]})
    at_centre = viz.picks_in_slice(picks, 50)
    assert at_centre["particle_type"].tolist() == ["ribosome"]
    assert at_centre["radius"].iloc[0] == pytest.approx(r)
    assert at_centre["x"].iloc[0] == pytest.approx(300 / VOXEL_SPACING)
    assert viz.picks_in_slice(picks, 60)["radius"].iloc[0] == pytest.approx(np.sqrt(r ** 2 - 100))
    assert viz.picks_in_slice(picks, 50 + r + 0.5).empty
    # the two apo-ferritins (z 80 and 84, radius ~6) are cut together from z = 79 on
    assert viz.busiest_slice(picks, 100) == int(np.ceil(84 - RADIUS["apo-ferritin"] / VOXEL_SPACING))


def test_plots_are_written_as_png_and_bad_input_is_named(tmp_path):
    vol = np.random.default_rng(0).normal(size=(20, 40, 50)).astype(np.float32)
    picks = pd.DataFrame({"experiment": "r", "particle_type": ["ribosome"], "x": [200.0], "y": [150.0], "z": [100.0]})
    path = viz.save_slice_with_picks(tmp_path / "slice.png", vol, picks, predictions=picks, title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="z=25"):
        viz.save_slice_with_picks(tmp_path / "bad.png", vol, z=25)
    curves = pd.DataFrame({"epoch": [0, 1, 2], "loss": [1.0, 0.5, 0.4], "score": [0.1, np.nan, 0.3]})
    assert viz.save_curves(tmp_path / "c.png", curves, "epoch", ["loss", "score"]).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="lr"):
        viz.save_curves(tmp_path / "d.png", curves, "epoch", ["lr"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "slice.png"]
