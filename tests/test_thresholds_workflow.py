"""Thresholds for models trained on every run: tuned by cross-validation (tools/evaluate.py), carried by the
full-data checkpoint (train_fold --fold -1 --thresholds-from), used by predict, the Kaggle pack and the
notebook; a checkpoint with only the config's guesses says so loudly; a file of another class set is refused."""
from __future__ import annotations

import json

import pytest

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.checkpoints import load_checkpoint
from czii_kit.cli.pack_kaggle_dataset import main as pack_main
from czii_kit.cli.predict import main as predict_main
from czii_kit.cli.train_fold import main as train_main
from czii_kit.kaggle.runtime import read_pack
from czii_kit.particles import CZII
from czii_kit.tuning import DEFAULT_THRESHOLDS, load_tuning


@pytest.fixture(scope="module")
def report(tiny_experiment, synthetic_root, tmp_path_factory):
    from czii_kit.evaluate import run_evaluation

    out = tmp_path_factory.mktemp("report") / "tiny"
    run_evaluation(synthetic_root, [tiny_experiment], out, device="cpu", tta="none", progress=False)
    return out


def train_all_runs(root, out, *extra) -> int:
    args = ["--fold", "-1", "--data", str(root), "--config", "cpu_quick", "--out", str(out), "--no-progress"]
    return train_main([*args, *[a for o in TINY_TRAIN_OVERRIDES + ["train.epochs=1"] for a in ("--set", o)], *extra])


@pytest.fixture(scope="module")
def full_data(report, synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "all"
    assert train_all_runs(synthetic_root, out, "--thresholds-from", str(report)) == 0
    return out


@pytest.fixture(scope="module")
def guessed(synthetic_root, tmp_path_factory):
    """A full-data model trained without --thresholds-from: it keeps the config's 0.3 guesses."""
    out = tmp_path_factory.mktemp("weights") / "guessed"
    assert train_all_runs(synthetic_root, out) == 0
    return out


def test_a_full_data_checkpoint_carries_the_cross_validated_thresholds(full_data, report):
    tuning = load_tuning(report)
    ckpt = load_checkpoint(full_data / "fold-1.pt")
    assert ckpt["fold"] == -1 and ckpt["thresholds"] == tuning.thresholds
    assert ckpt["validation"]["thresholds_from"] == str(tuning.path)
    assert ckpt["validation"]["cv_score"] == pytest.approx(tuning.meta["score"])


def test_predict_uses_them_and_warns_only_about_guessed_thresholds(full_data, guessed, report, synthetic_root,
                                                                   tmp_path, capsys):
    common = ["--data", str(synthetic_root), "--device", "cpu", "--tta", "none", "--no-progress"]
    assert predict_main([*common, "--weights", str(full_data), "--out", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    assert "not tuned ones" not in out and f"thresholds: the checkpoint's own ({load_tuning(report).path})" in out
    assert load_checkpoint(guessed / "fold-1.pt")["validation"]["thresholds_from"] == DEFAULT_THRESHOLDS
    capsys.readouterr()
    assert predict_main([*common, "--weights", str(guessed), "--out", str(tmp_path / "b.csv")]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "default thresholds, not tuned ones" in out and "--thresholds-from" in out
    assert f"thresholds: the checkpoint's own ({DEFAULT_THRESHOLDS})" in out
    assert predict_main([*common, "--weights", str(guessed), "--out", str(tmp_path / "c.csv"),
                         "--thresholds-from", str(report)]) == 0
    out = capsys.readouterr().out
    assert "not tuned ones" not in out and f"thresholds: from {load_tuning(report).path}" in out


def test_the_pack_carries_the_file_and_reads_it_back(full_data, report, tmp_path):
    out = tmp_path / "pack"
    assert pack_main(["--weights", str(full_data), "--out", str(out), "--slug", "czii-kit-test", "--user", "me",
                      "--no-progress", "--thresholds-from", str(report)]) == 0
    pack = read_pack(out)
    assert pack.thresholds == out / "thresholds.json"
    assert load_tuning(pack.thresholds).thresholds == load_tuning(report).thresholds
    bare = tmp_path / "bare"
    assert pack_main(["--weights", str(full_data), "--out", str(bare), "--slug", "czii-kit-test", "--user", "me",
                      "--no-progress"]) == 0
    assert read_pack(bare).thresholds is None


def test_the_pack_refuses_guessed_thresholds_unless_told(guessed, report, tmp_path, capsys):
    args = ["--weights", str(guessed), "--slug", "czii-kit-test", "--user", "me", "--no-progress"]
    assert pack_main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "default thresholds" in err and "--thresholds-from REPORT" in err and "--default-thresholds" in err
    assert not (tmp_path / "refused").exists()  # refused before anything is written
    assert pack_main([*args, "--out", str(tmp_path / "cv"), "--thresholds-from", str(report)]) == 0
    assert read_pack(tmp_path / "cv").thresholds is not None
    assert pack_main([*args, "--out", str(tmp_path / "on-purpose"), "--default-thresholds"]) == 0
    assert read_pack(tmp_path / "on-purpose").thresholds is None


def test_a_thresholds_file_of_another_class_set_is_refused_everywhere(full_data, report, synthetic_root, tmp_path,
                                                                      capsys):
    doc = json.loads((report / "thresholds.json").read_text())
    doc["classes"] = [*CZII.names[:-1], "made-up"]
    doc["thresholds"] = {name: 0.3 for name in doc["classes"]}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    assert predict_main(["--data", str(synthetic_root), "--weights", str(full_data), "--out", str(tmp_path / "s.csv"),
                         "--device", "cpu", "--thresholds-from", str(other)]) == 2
    assert "tuned for classes" in capsys.readouterr().err
    assert train_all_runs(synthetic_root, tmp_path / "x", "--thresholds-from", str(other)) == 2
    assert "tuned for classes" in capsys.readouterr().err
    assert pack_main(["--weights", str(full_data), "--out", str(tmp_path / "p"), "--slug", "czii-kit-test",
                      "--user", "me", "--no-progress", "--thresholds-from", str(other)]) == 2
    assert "tuned for classes" in capsys.readouterr().err
    assert train_main(["--fold", "0", "--data", str(synthetic_root), "--out", str(tmp_path / "y"),
                       "--thresholds-from", str(report)]) == 2
    assert "--thresholds-from is for --fold -1" in capsys.readouterr().err
