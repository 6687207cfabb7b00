"""The synthetic generator: config and presets, scene statistics, determinism, layout on disk, the tool."""
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from czii_kit.data import io, layout, synth
from czii_kit.data.synth import dataset
from czii_kit.data.synth.scene import OVERLAP
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, HARD_CLASSES, RADIUS, VOXEL_SPACING, angstrom_to_voxel
from czii_kit.tables import PICK_COLUMNS

SMALL = (48, 96, 96)
REPO = Path(__file__).resolve().parents[1]


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


# --------------------------------------------------------------------------- config and presets
def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="at least 32"):
        synth.SynthConfig(shape=(16, 96, 96))
    with pytest.raises(ConfigError, match="tilt_max_deg"):
        synth.SynthConfig(tilt_max_deg=(50, 95))
    with pytest.raises(ConfigError, match="noise"):
        synth.SynthConfig(noise=-1)
    with pytest.raises(ConfigError, match="tilt_scheme 'spiral'"):
        synth.SynthConfig(tilt_scheme="spiral")
    with pytest.raises(ConfigError, match="denoised, wbp"):
        synth.generate_run("TS_5_4", 0, synth.SynthConfig(shape=SMALL), ("denoised", "raw"))


def test_presets_are_overrides_and_hard_is_harder():
    assert synth.SynthConfig.preset("default") == synth.SynthConfig()
    hard = synth.SynthConfig.preset("hard", shape=SMALL)
    default = synth.SynthConfig()
    assert hard.shape == SMALL and hard.dose < default.dose and hard.distractors > 2 * default.distractors
    assert hard.tilt_axis_error_deg > default.tilt_axis_error_deg
    with pytest.raises(ConfigError, match="unknown synthetic preset 'harder'.*hard"):
        synth.SynthConfig.preset("harder")
    with pytest.raises(ConfigError, match="unknown synthetic setting.*nois"):
        synth.SynthConfig.preset("hard", nois=2)


# --------------------------------------------------------------------------- counts and geometry
def test_expected_counts_are_the_real_counts_scaled_by_volume():
    real_ts_6_4 = {"apo-ferritin": 58, "beta-amylase": 9, "beta-galactosidase": 12, "ribosome": 74,
                   "thyroglobulin": 30, "virus-like-particle": 10}  # from the real training picks
    assert synth.expected_counts((184, 630, 630), profile=synth.REAL_COUNTS["TS_6_4"]) == pytest.approx(real_ts_6_4)
    half = synth.expected_counts((92, 630, 630), profile=synth.REAL_COUNTS["TS_6_4"])
    assert half == pytest.approx({c: n / 2 for c, n in real_ts_6_4.items()})
    doubled = synth.expected_counts((184, 630, 630), density=2.0, profile=synth.REAL_COUNTS["TS_6_4"])
    assert doubled == pytest.approx({c: 2 * n for c, n in real_ts_6_4.items()})
    assert synth.expected_counts((184, 630, 630))["apo-ferritin"] == pytest.approx(375 / 7)


def test_sampled_counts_are_unbiased_with_at_least_one_of_each():
    rng = np.random.default_rng(0)
    draws = pd.DataFrame([synth.sample_counts({"a": 2.3, "b": 0.2, "c": 5.0}, rng) for _ in range(4000)])
    assert draws["a"].mean() == pytest.approx(2.3, abs=0.03)
    assert set(draws["a"]) == {2, 3}
    assert (draws["b"] == 1).all() and (draws["c"] == 5).all()


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
    assert (dist >= OVERLAP * (radii[:, None] + radii[None]) - 1e-9).all()  # bodies never intersect
    assert len(full_scene.objects) > 350  # crowded: ~200 targets and ~150 other complexes plus gold


def test_distractors_include_hard_class_lookalikes(full_scene):
    distractors = [o for o in full_scene.objects if o.kind == "distractor"]
    species = {id(o.template) for o in distractors}
    assert len(distractors) > 100 and len(species) == synth.SynthConfig().distractor_species
    targets = {o.kind: o.template.mass for o in full_scene.targets}
    hard = np.array([targets[c] for c in HARD_CLASSES if c != "beta-amylase"])
    mass = np.array([o.template.mass for o in distractors])
    near_hard = (np.abs(mass[:, None] / hard[None] - 1) <= 0.3).any(axis=1)
    assert 0.2 < near_hard.mean() < 0.8
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
    np.testing.assert_allclose(np.sort(picked, axis=0), np.sort(truth, axis=0), atol=1e-9)
    truth = np.array([t.centre for t in full_scene.targets])
    picked = angstrom_to_voxel(full_scene.picks[["x", "y", "z"]].to_numpy())
    error_angstrom = (picked - truth[cdist(picked, truth).argmin(axis=1)]) * VOXEL_SPACING
    assert error_angstrom.std() == pytest.approx(synth.SynthConfig().jitter_angstrom, rel=0.15)


# --------------------------------------------------------------------------- determinism and contrast
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


def test_dense_cores_are_dark_where_the_picks_are():
    cfg = synth.SynthConfig.preset("clean", shape=(64, 160, 160), density=4.0)
    vols, picks = synth.generate_run("TS_6_6", 0, cfg, ("ctfdeconvolved", "isonetcorrected"))
    solid = picks[picks["particle_type"].isin(["beta-galactosidase", "ribosome", "thyroglobulin"])]
    assert len(solid) >= 5
    for vol in vols.values():
        vol = vol / vol.std()
        for name, p in zip(solid["particle_type"], angstrom_to_voxel(solid[["x", "y", "z"]].to_numpy())):
            assert ball_values(vol, p, RADIUS[name] / VOXEL_SPACING / 2).mean() < -1, name


def test_ice_slab_holds_the_sample():
    cfg = synth.SynthConfig.preset("clean", shape=(96, 96, 96), ice_fraction=(0.5, 0.5))
    _, _, scene, _ = synth.simulate_run("TS_5_4", 0, cfg)
    assert scene.slab.thickness == pytest.approx(48.0)
    ice = scene.slab.mask()
    assert ice[int(scene.slab.mid_z(48)), 48, 48] == 1 and ice[0, 48, 48] == 0 and ice[-1, 48, 48] == 0


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
    meta = json.loads((written / "synthetic.json").read_text())
    assert meta["runs"]["TS_6_4"]["n_tilts"] >= 37 and meta["config"]["tilt_scheme"] == "dose-symmetric"
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_solution_and_sample_submission_match_the_test_runs(written):
    solution = pd.read_csv(written / layout.SOLUTION_CSV)
    assert list(solution.columns) == ["id", *PICK_COLUMNS]
    assert solution["id"].tolist() == list(range(len(solution)))
    _, picks, _, _ = synth.simulate_run("TS_T1_1", synth.run_seed(11, "test", 0), replace(synth.SynthConfig(),
                                                                                          shape=SMALL))
    pd.testing.assert_frame_equal(solution.drop(columns="id"), picks, check_exact=False, rtol=1e-12)
    sample = pd.read_csv(written / "sample_submission.csv")
    assert list(sample.columns) == ["id", *PICK_COLUMNS]
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
    real = dataset.simulate_run
    calls = []

    def crash_on_second_run(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "simulate_run", crash_on_second_run)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synth.make_dataset(tmp_path / "ds", n_train=2, n_test=0, shape=SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_run_names():
    assert synth.run_names("train", 9) == ["TS_5_4", "TS_6_4", "TS_6_6", "TS_69_2", "TS_73_6", "TS_86_3",
                                           "TS_99_9", "TS_5_4_2", "TS_6_4_2"]
    assert synth.run_names("test", 2) == ["TS_T1_1", "TS_T2_1"]


def test_builtin_dataset_has_every_recon_and_is_generated_once_then_reused(tmp_path, monkeypatch, capsys):
    assert synth.BUILTIN["recons"] == layout.RECONS  # data.extra_recons has something to train on
    default_path = synth.builtin_dataset_path(tmp_path)
    monkeypatch.setattr(dataset, "BUILTIN", dict(n_train=1, n_test=1, shape=SMALL, seed=0, recons=("denoised",)))
    monkeypatch.setenv("CZII_DATA_DIR", str(tmp_path / "cache"))
    path = synth.ensure_builtin_dataset()
    assert path.parent == tmp_path / "cache" and path.name.startswith("synthetic-")
    assert path.name != default_path.name  # the hash follows the parameters
    assert "generating the built-in synthetic dataset" in capsys.readouterr().out
    assert layout.list_runs(path, "train") == ["TS_5_4"]

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(dataset, "make_dataset", fail)
    assert synth.ensure_builtin_dataset() == path
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("CZII_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert synth.builtin_dataset_path() == Path("data") / path.name


# --------------------------------------------------------------------------- the tool
def load_tool():
    from czii_kit.cli import make_synthetic

    return make_synthetic


def test_tool_writes_dataset_and_preview_and_reports_user_errors(tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / "ds"
    args = ["--out", str(out), "--train", "1", "--test", "1", "--shape", *map(str, SMALL), "--recons",
            "denoised,wbp", "--noise", "0.2", "--tilt", "51", "--preset", "hard", "--set", "gold=0",
            "--preview", "--no-progress"]
    assert tool.main(args) == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "preview" in printed and "preset hard" in printed
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert layout.available_recons(out, "train", "TS_5_4") == ["denoised", "wbp"]
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["config"]["dose"] == synth.PRESETS["hard"]["dose"] and meta["config"]["gold"] == 0
    assert meta["config"]["noise"] == 0.2 and meta["runs"]["TS_5_4"]["tilt_range_deg"] == [-51.0, 51.0]
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "Traceback" not in err


def test_test_runs_get_other_recons_on_request_with_the_same_particles(tmp_path, capsys):
    """--test-recons wbp: a test split for models that read data.recon=wbp; the particles do not change."""
    tool = load_tool()
    common = ["--train", "0", "--test", "1", "--shape", *map(str, SMALL), "--seed", "5", "--no-progress"]
    assert tool.main(["--out", str(tmp_path / "plain"), *common]) == 0
    assert tool.main(["--out", str(tmp_path / "wbp"), *common, "--test-recons", "wbp,denoised"]) == 0
    assert layout.available_recons(tmp_path / "plain", "test", "TS_T1_1") == ["denoised"]
    assert layout.available_recons(tmp_path / "wbp", "test", "TS_T1_1") == ["denoised", "wbp"]
    solution = [pd.read_csv(tmp_path / name / layout.SOLUTION_CSV) for name in ("plain", "wbp")]
    pd.testing.assert_frame_equal(*solution)
    plain, both = (io.read_tomogram(tmp_path / name, "TS_T1_1", "test") for name in ("plain", "wbp"))
    np.testing.assert_array_equal(plain, both)
    assert json.loads((tmp_path / "wbp" / "synthetic.json").read_text())["test_recons"] == ["wbp", "denoised"]
    capsys.readouterr()
    assert tool.main(["--out", str(tmp_path / "bad"), *common, "--test-recons", "wbpp"]) == 2
    err = capsys.readouterr().err
    assert "unknown reconstruction" in err and "wbpp" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_tool_writes_a_copick_project_that_reads_the_same_runs_and_picks(tmp_path, capsys):
    from czii_kit.data.open_data import open_data
    from czii_kit.data.source import KaggleDirectory

    out = tmp_path / "ds"
    assert load_tool().main(["--out", str(out), "--train", "1", "--test", "1", "--shape", *map(str, SMALL),
                             "--recons", "denoised", "--copick", "--no-progress"]) == 0
    assert "copick project" in capsys.readouterr().out
    ours = KaggleDirectory(out)
    for split in ("train", "test"):
        project = open_data(out / "copick" / f"copick_{split}.json")
        assert project.list_runs(split) == ours.list_runs(split)
    run = ours.list_runs("train")[0]
    project = open_data(out / "copick" / "copick_train.json")
    mine, theirs = (s.read_picks(run).sort_values(["particle_type", "x", "y", "z"]).reset_index(drop=True)
                    for s in (ours, project))
    assert len(mine) > 0
    pd.testing.assert_frame_equal(mine[["particle_type"]], theirs[["particle_type"]])
    np.testing.assert_allclose(mine[["x", "y", "z"]].to_numpy(), theirs[["x", "y", "z"]].to_numpy(), atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--set", "dose"], "KEY=VALUE"),
    (["--set", "doze=3"], "unknown synthetic setting.*doze"),
    (["--maps", "/nonexistent/maps"], "maps folder /nonexistent/maps does not exist"),
])
def test_tool_names_bad_settings(tmp_path, capsys, extra, message):
    args = ["--out", str(tmp_path / "x"), "--train", "1", "--test", "0", "--shape", *map(str, SMALL), "--no-progress"]
    assert load_tool().main(args + extra) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
