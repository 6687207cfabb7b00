"""copick projects as data: the same arrays, picks and predictions as the kit's own reader, a model trained and
predicting through copick (picks written back and read by copick itself), a seventh made-up class end to end,
STAR files, and the errors a copick user can meet."""
from __future__ import annotations

import json
import os
import shutil
import sys

import copick  # the dev extras install it: the tests read the kit's picks back with copick itself
import numpy as np
import pandas as pd
import pytest

from czii_kit.cli.make_copick_project import main as make_project_main
from czii_kit.cli.predict import main as predict_main
from czii_kit.config import load_config
from czii_kit.data import layout
from czii_kit.data.copick import CopickProject, check_identity, make_copick_project
from czii_kit.data.open_data import open_data
from czii_kit.data.source import KaggleDirectory
from czii_kit.data.star import read_star
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CZII, VOXEL_SPACING
from czii_kit.submission import read_submission
from conftest import TINY_TRAIN_OVERRIDES

DATA = load_config()["data"]
LOW = ",".join(f"{c}=0.005" for c in CZII.names)


@pytest.fixture(scope="module")
def project(synthetic_root, tmp_path_factory):
    return make_copick_project(synthetic_root, tmp_path_factory.mktemp("copick") / "project")


def test_the_project_reads_exactly_what_the_kit_reads(project, synthetic_root):
    ours, theirs = KaggleDirectory(synthetic_root), open_data(project)
    assert isinstance(theirs, CopickProject) and theirs.particles == CZII  # radii and weights carried in metadata
    assert theirs.list_runs("train") == ours.list_runs("train")
    for run in ours.list_runs("train"):
        a, b = ours.read_run(run, "train", DATA), theirs.read_run(run, "train", DATA)
        np.testing.assert_array_equal(a.volume, b.volume)
        assert a.spacing == b.spacing == VOXEL_SPACING  # the OME-NGFF scale, not copick's folder name (10.000)
        key = ["particle_type", "x", "y", "z"]
        pa = ours.read_picks(run).sort_values(key).reset_index(drop=True)
        pb = theirs.read_picks(run, DATA).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(pa[key], pb[key])


def test_a_tomogram_written_again_gets_a_new_stamp_through_the_project(project, synthetic_root):
    """Resumable Ray jobs predict a run again when its stamp changed: the project's stamp follows its links to the
    stores themselves, and does not change while nothing is written."""
    source = open_data(project)
    runs = source.list_runs("train")
    before = {run: source.run_stamp(run, "train", DATA) for run in runs}
    assert None not in before.values() and before == {run: source.run_stamp(run, "train", DATA) for run in runs}
    zarray = layout.tomogram_path(synthetic_root, "train", runs[0]) / "0" / ".zarray"
    stat = zarray.stat()
    os.utime(zarray, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        after = {run: source.run_stamp(run, "train", DATA) for run in runs}
    finally:
        os.utime(zarray, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [run for run in runs if after[run] != before[run]] == [runs[0]]


def test_the_project_links_the_picks_and_changes_nothing_in_the_directory(project, synthetic_root):
    before = sorted(p.relative_to(synthetic_root) for p in synthetic_root.rglob("*"))
    run = layout.list_runs(synthetic_root, "train")[0]
    links = sorted((project.parent / "overlay_train" / "ExperimentRuns" / run / "Picks").iterdir())
    assert [p.name for p in links] == sorted(f"curation_0_{n}.json" for n in CZII.names)
    assert all(p.is_symlink() and p.resolve().parent == layout.picks_dir(synthetic_root, run) for p in links)
    assert sorted(p.relative_to(synthetic_root) for p in synthetic_root.rglob("*")) == before
    with pytest.raises(DataError, match="exists; choose a new --out"):
        make_copick_project(synthetic_root, project.parent)


def test_predictions_through_copick_equal_the_kits_to_the_last_angstrom(project, synthetic_root, tiny_experiment,
                                                                         tmp_path):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    common = ["--weights", str(tiny_experiment), "--split", "train", "--device", "cpu", "--tta", "none",
              "--thresholds", LOW, "--no-progress"]
    assert predict_main(["--data", str(synthetic_root), "--out", str(ours), *common]) == 0
    assert predict_main(["--data", str(project), "--out", str(theirs), *common]) == 0
    a, b = read_submission(ours), read_submission(theirs)
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)  # exact: same voxels, same spacing, same Å


@pytest.fixture(scope="module")
def copick_experiment(project, tmp_path_factory):
    """The tiny model trained through the copick path (data = the copick config)."""
    from czii_kit.train.loop import train_fold

    cfg = load_config("cpu_quick", [*TINY_TRAIN_OVERRIDES, "data.picks_user=curation"])
    out = tmp_path_factory.mktemp("weights") / "copick"
    train_fold(cfg, 0, project, out, progress=False)
    return out


def test_train_through_copick_and_write_predictions_back_as_picks(project, copick_experiment, tmp_path, capsys):
    out = tmp_path / "s.csv"
    args = ["--data", str(project), "--weights", str(copick_experiment), "--out", str(out), "--split", "train",
            "--device", "cpu", "--thresholds", LOW, "--no-progress", "--copick-out", "czii-kit/run1"]
    assert predict_main(args) == 0
    submission = read_submission(out)
    root = copick.from_file(str(project))  # read back with copick itself, not the kit
    for run in root.runs:
        mine = run.get_picks(user_id="czii-kit", session_id="run1")
        assert sorted(p.pickable_object_name for p in mine) == sorted(CZII.names)
        xyz = np.concatenate([p.numpy()[0] for p in mine]) if mine else np.empty((0, 3))
        expected = submission.loc[submission["experiment"] == run.name, ["x", "y", "z"]].to_numpy()
        assert len(xyz) == len(expected)
        np.testing.assert_allclose(np.sort(xyz, axis=0), np.sort(expected, axis=0))
        assert len(run.get_picks(user_id="curation")) == len(CZII)  # the curators' picks are untouched
    assert predict_main(args) == 2  # the same user/session again: refused before any work
    assert "already has picks of czii-kit/run1" in capsys.readouterr().err
    assert predict_main([*args, "--overwrite"]) == 0


def test_predictions_never_write_through_the_links_to_the_datas_own_picks(project, synthetic_root, copick_experiment,
                                                                          tmp_path, capsys):
    """make-copick-project links the directory's picks as curation/0: --overwrite must not write into the data."""
    picks = sorted((synthetic_root / "train").rglob("Picks/*.json"))
    before = [p.read_bytes() for p in picks]
    args = ["--data", str(project), "--weights", str(copick_experiment), "--out", str(tmp_path / "s.csv"), "--split",
            "train", "--device", "cpu", "--no-progress", "--copick-out", "curation/0", "--overwrite"]
    assert predict_main(args) == 2
    assert "are links to another folder's files" in capsys.readouterr().err
    assert [p.read_bytes() for p in picks] == before and not (tmp_path / "s.csv").exists()
    inside = synthetic_root / "s.csv"  # the directory the project reads is data too
    assert predict_main([*args[:5], str(inside), *args[6:-3]]) == 2
    assert "is inside the data directory" in capsys.readouterr().err and not inside.exists()


def test_star_files_hold_voxels_and_centred_angstroms(synthetic_root, tiny_experiment, tmp_path, capsys):
    star, out = tmp_path / "star", tmp_path / "s.csv"
    args = ["--data", str(synthetic_root), "--weights", str(tiny_experiment), "--out", str(out), "--device", "cpu",
            "--tta", "none", "--thresholds", LOW, "--no-progress", "--star-out", str(star)]
    assert predict_main(args) == 0
    submission = read_submission(out)
    shape = KaggleDirectory(synthetic_root).run_geometry(layout.list_runs(synthetic_root, "test")[0], "test", DATA)[0]
    for run in layout.list_runs(synthetic_root, "test"):
        table = read_star(star / f"{run}.star")
        rows = submission[submission["experiment"] == run]
        assert len(table) == len(rows) and set(table["rlnTomoName"]) <= {run}
        np.testing.assert_allclose(table["rlnCoordinateX"], rows["x"] / VOXEL_SPACING, atol=1e-3)
        np.testing.assert_allclose(table["rlnCenteredCoordinateZAngst"],
                                   (rows["z"] / VOXEL_SPACING - shape[0] / 2) * VOXEL_SPACING, atol=1e-2)
        assert set(table["rlnClassNumber"]) <= set(range(1, len(CZII) + 1))
    assert predict_main(args) == 2 and "--overwrite" in capsys.readouterr().err  # never replaced silently


# --------------------------------------------------------------------------- a seventh, made-up class
@pytest.fixture(scope="module")
def seven_class_project(synthetic_root, tmp_path_factory):
    """The project plus 'made-up' (radius 80 Å, weight 2): picks 30 Å from each thyroglobulin."""
    return make_seven_class_project(synthetic_root, tmp_path_factory.mktemp("copick7") / "project")


def make_seven_class_project(synthetic_root, folder):
    path = make_copick_project(synthetic_root, folder)
    config = json.loads(path.read_text())
    config["pickable_objects"].append({"name": "made-up", "is_particle": True, "label": 7, "radius": 80.0,
                                       "color": [0, 0, 0, 255], "metadata": {"weight": 2.0}})
    path.write_text(json.dumps(config))
    root = copick.from_file(str(path))
    for run in root.runs:
        thyro = run.get_picks(object_name="thyroglobulin", user_id="curation")[0].numpy()[0]
        picks = run.new_picks("made-up", "0", "curation")
        picks.from_numpy(thyro + np.array([30.0, 0.0, 0.0]))
        picks.store()
    return path


def test_a_seventh_made_up_class_trains_and_predicts(seven_class_project, tmp_path, capsys):
    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.train.loop import train_fold

    data = open_data(seven_class_project)
    assert data.particles.names[-1] == "made-up" and data.particles["made-up"].weight == 2.0
    out = tmp_path / "seven"
    train_fold(load_config("cpu_quick", TINY_TRAIN_OVERRIDES), 0, seven_class_project, out, progress=False)
    ckpt = load_checkpoint(out / "fold0.pt")
    assert ckpt["classes"][-1] == "made-up" and len(ckpt["classes"]) == 7
    assert ckpt["config"]["classes"]["made-up"]["radius"] == 80.0
    assert ckpt["state_dict"]["head.weight"].shape[0] == 8  # seven classes + background
    sub = tmp_path / "s.csv"
    thresholds = ",".join(f"{c}=0.0001" for c in data.particles.names)
    assert predict_main(["--data", str(seven_class_project), "--weights", str(out), "--out", str(sub),
                         "--split", "train", "--device", "cpu", "--thresholds", thresholds, "--no-progress",
                         "--score", "--copick-out", "czii-kit/seven"]) == 0
    printed = capsys.readouterr().out
    assert "made-up" in printed and "score = sum(weight x f4) / 9 =" in printed  # 7 CZII weight + 2
    root = copick.from_file(str(seven_class_project))
    run = root.runs[0]
    assert sorted(p.pickable_object_name for p in run.get_picks(user_id="czii-kit")) == sorted(data.particles.names)


def test_a_six_class_model_refuses_a_seven_class_project(seven_class_project, tiny_experiment, tmp_path, capsys):
    assert predict_main(["--data", str(seven_class_project), "--weights", str(tiny_experiment), "--out",
                         str(tmp_path / "s.csv"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "the checkpoints predict apo-ferritin" in err and "made-up" in err


# --------------------------------------------------------------------------- errors
def test_a_copick_config_without_the_extra_says_what_to_install(project, monkeypatch):
    monkeypatch.setitem(sys.modules, "copick", None)  # `import copick` fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'czii-kit\[copick\]'"):
        open_data(project)


def test_bad_copick_inputs_are_named(project, tmp_path):
    config = json.loads(project.read_text())
    config["pickable_objects"][0].pop("radius")
    broken = tmp_path / "no-radius.json"
    broken.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'apo-ferritin' has no radius"):
        open_data(broken)
    with pytest.raises(DataError, match="is a file but not a copick config"):
        open_data(__file__)
    source = open_data(project)
    with pytest.raises(DataError, match="has no 'wbp' tomogram.*set data.recon"):
        source.read_run(source.list_runs("train")[0], "train", {**DATA, "recon": "wbp"})
    with pytest.raises(ConfigError, match="use letters, digits and '-' only"):
        check_identity("bad_user", "1")  # copick splits file names on '_'


def test_the_tool_writes_a_project(synthetic_root, tmp_path, capsys):
    assert make_project_main(["--data", str(synthetic_root), "--out", str(tmp_path / "p"), "--split", "test"]) == 0
    assert "copick_test.json" in capsys.readouterr().out
    test_runs = open_data(tmp_path / "p" / "copick_test.json").list_runs("test")
    assert test_runs == layout.list_runs(synthetic_root, "test")
    assert make_project_main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "q")]) == 2


def test_the_tool_checks_every_picks_file_and_its_out_before_writing(synthetic_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    picks = sorted(root.rglob("Picks/*.json"))[0]
    picks.write_text('{"pickable_object_name": "ribosome", "points": [')  # a truncated copy
    assert make_project_main(["--data", str(root), "--out", str(tmp_path / "p")]) == 2
    assert f"picks file {picks} is not valid JSON" in capsys.readouterr().err and not (tmp_path / "p").exists()
    picks.write_text(json.dumps({"pickable_object_name": "ribosome", "points": []}))
    (picks.parent / "ribosome_copy.json").write_text(json.dumps({"pickable_object_name": "ribosome", "points": []}))
    assert make_project_main(["--data", str(root), "--out", str(tmp_path / "p")]) == 2
    assert "both hold ribosome picks" in capsys.readouterr().err and not (tmp_path / "p").exists()
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert make_project_main(["--data", str(synthetic_root), "--out", str(mine)]) == 2
    assert f"--out {mine} is a file, not a folder" in capsys.readouterr().err and mine.read_text() == "mine"


def test_a_copick_project_of_seven_classes_fine_tunes_from_a_six_class_model(synthetic_root, tiny_experiment,
                                                                             tmp_path):
    """train.init_from through a copick project: the six CZII channels come from the checkpoint, 'made-up' is new."""
    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.train.loop import train_fold

    seven_class_project = make_seven_class_project(synthetic_root, tmp_path / "project")  # no other test's picks
    out = tmp_path / "seven"
    cfg = load_config("cpu_quick", [*TINY_TRAIN_OVERRIDES, "train.epochs=1", f"train.init_from={tiny_experiment}"])
    train_fold(cfg, 0, seven_class_project, out, progress=False)
    ckpt = load_checkpoint(out / "fold0.pt")
    assert ckpt["classes"][-1] == "made-up" and ckpt["init_from"]["classes"] == list(CZII.names)
    assert ckpt["state_dict"]["head.weight"].shape[0] == 8
