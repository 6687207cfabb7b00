"""Recipe studies: arms x seeds trained, scored on a held-out test set, summarized with their spread."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.config import load_config
from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.study import load_study, run_study, summarize, verdicts, write_report

REPO = Path(__file__).resolve().parents[1]


def results(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["arm", "seed", "score", "f4_a"]).assign(score_tuned=0.9, tuned_f4_a=0.9)


def test_summary_and_verdicts_use_the_seed_spread():
    table = results([("base", 0, 0.50, 0.2), ("base", 1, 0.52, 0.4), ("base", 2, 0.54, 0.6),
                     ("big", 0, 0.70, 0.3), ("big", 1, 0.71, 0.5), ("big", 2, 0.72, 0.7)])
    summary = summarize(table, ["a"]).set_index("arm")
    assert summary.loc["base", "score"] == "0.520 ± 0.020" and summary.loc["big", "seeds"] == 3
    assert verdicts(table, "base", ["a"]) == {"big": {"score": "better", "f4_a": "noise"}}  # +0.1 F4 < spread 0.2
    assert summarize(table, ["a"], tuned=True).set_index("arm").loc["big", "score_tuned"] == "0.900 ± 0.000"
    assert verdicts(table, "base", ["a"], tuned=True) == {"big": {"score_tuned": "noise", "f4_a": "noise"}}


def test_the_report_tables_means_and_verdicts(tmp_path):
    table = results([("base", 0, 0.50, 0.2), ("base", 1, 0.52, 0.4), ("base", 2, 0.54, 0.6),
                     ("big", 0, 0.70, 0.3), ("big", 1, 0.71, 0.5), ("big", 2, 0.72, 0.7)])
    table = table.assign(val_f4=0.9, epochs=[20, 22, 24, 25, 25, 25], train_minutes=9.0)
    report = write_report(table, tmp_path, ["a"], "base").read_text()
    assert "| big | 3 | 0.710 ± 0.010 ▲ | 0.500 ± 0.200 |" in report  # +0.19 > spread 0.02; F4 +0.1 < 0.2
    assert "| big | 3 | 0.900 ± 0.000 | 0.900 ± 0.000 |" in report  # tuned: equal
    assert "| base | 0.900 ± 0.000 | 22.0 ± 2.0 | 9.00 ± 0.00 |" in report


def test_a_study_needs_three_seeds_and_valid_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"config": "cpu_quick", "seeds": [0, 1], "arms": {"base": []}}))
    with pytest.raises(ConfigError, match="at least three distinct seeds"):
        load_study(path)
    assert load_study(path, seeds=[3, 4, 5])["seeds"] == [3, 4, 5]  # more seeds from the command line
    with pytest.raises(ConfigError, match="at least three distinct seeds"):
        load_study(path, seeds=[3, 3, 4])
    path.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "arms": {"typo": ["loss.args.pos_weihgt=2", "trian.lr=1"]}}))
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_study(path)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "studies").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_study_file_loads_with_every_arm(path):
    """A typo in a shipped study's arm fails here, not after hours of the arms before it."""
    study = load_study(path)
    declared = yaml.safe_load(path.read_text())["arms"]
    assert list(study["arms"]) == [str(name) for name in declared] and len(study["seeds"]) >= 3


def test_study_wide_overrides_go_before_each_arms_own(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "overrides": ["augment.mixup=0.0", "validate.every=6"],
                                    "arms": {"baseline": None, "mixup": ["augment.mixup=0.3"]}}))
    arms = load_study(path)["arms"]
    assert arms == {"baseline": ["augment.mixup=0.0", "validate.every=6"],
                    "mixup": ["augment.mixup=0.0", "validate.every=6", "augment.mixup=0.3"]}
    assert load_config("cpu_quick", arms["mixup"])["augment"]["mixup"] == 0.3  # the arm's own value wins
    path.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "overrides": "augment.mixup=0.0", "arms": {"b": []}}))
    with pytest.raises(ConfigError, match="'overrides' must be a list"):
        load_study(path)
    path.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "overrides": ["augment.mixpu=0.0"], "arms": {"b": []}}))
    with pytest.raises(ConfigError, match="mixpu"):
        load_study(path)


def test_a_study_runs_resumes_and_reports(synthetic_root, tmp_path, monkeypatch):
    tiny = [*TINY_TRAIN_OVERRIDES, "train.epochs=1", "train.samples_per_epoch=4"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"config": "cpu_quick", "fold": 0, "seeds": [0, 1, 2],
                                    "arms": {"baseline": tiny, "mixup": [*tiny, "augment.mixup=0.5"]}}))
    study = load_study(path)
    done = run_study(study, synthetic_root, synthetic_root, tmp_path / "out", arms=["baseline"],  # one arm: short
                     progress=False).results
    assert set(done["arm"]) == {"baseline"} and sorted(done["seed"]) == [0, 1, 2] and done["score"].between(0, 1).all()
    # thresholds tuned exactly on the test set can only do better than the model's own, class by class
    assert (done["score_tuned"] >= done["score"] - 1e-9).all()
    assert (done["tuned_f4_ribosome"] >= done["f4_ribosome"] - 1e-9).all()
    assert (tmp_path / "out" / "weights" / "baseline-seed2" / "fold0.pt").is_file()
    import czii_kit.train as train_package

    monkeypatch.setattr(train_package, "trainer_for", lambda cfg: pytest.fail("a finished arm was trained again"))
    again = run_study(study, synthetic_root, synthetic_root, tmp_path / "out", arms=["baseline"],
                      progress=False).results
    pd.testing.assert_frame_equal(again, pd.read_csv(tmp_path / "out" / "results.csv"))
    report = write_report(again, tmp_path / "out", ["ribosome"], "baseline").read_text()
    assert "| baseline | 3 |" in report


def tiny_study(tmp_path, tiny_experiment):
    """A study folder of one model (the tiny fold-0 experiment as arm 'a', seed 0), as czii study writes it."""
    import shutil

    study = tmp_path / "study"
    shutil.copytree(tiny_experiment, study / "weights" / "a-seed0")
    pd.DataFrame({"arm": ["a"], "seed": [0]}).to_csv(study / "results.csv", index=False)
    return study


def test_threshold_rules_own_is_what_the_checkpoint_stores_and_test_tuned_is_the_ceiling(
        tiny_experiment, synthetic_root, tmp_path, monkeypatch, capsys):
    import czii_kit.study
    from czii_kit.cli.threshold_rules import main as rules_main
    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.study import threshold_rules, write_threshold_report

    study = tiny_study(tmp_path, tiny_experiment)
    rows = threshold_rules(study, synthetic_root, synthetic_root, smooths=(1,), ttas=("none", "z"), progress=False)
    assert list(zip(rows["tta"], rows["rule"])) == [(t, r) for t in ("none", "z") for r in ("own", "smooth1", "test-tuned")]
    plain = rows[rows["tta"] == "none"].set_index("rule")
    own, tuned = plain.loc["own"], plain.loc["test-tuned"]
    stored = load_checkpoint(tiny_experiment / "fold0.pt")["thresholds"]
    assert {c: own[f"threshold_{c}"] for c in stored} == stored  # the validation pick, re-derived
    for c in stored:  # per class, tuning on the test split itself can only match or beat any other pick
        assert tuned[f"f4_{c}"] >= plain[f"f4_{c}"].max() - 1e-12
    # candidates are cached next to the checkpoint: a rerun predicts nothing and gives the same rows
    assert {p.name for p in (study / "weights" / "a-seed0").glob("candidates_*.csv")} == {
        "candidates_val.csv", "candidates_test.csv", "candidates_val_z.csv", "candidates_test_z.csv"}
    monkeypatch.setattr(czii_kit.study, "predict_candidates", lambda *a, **kw: pytest.fail("predicted again"))
    again = threshold_rules(study, synthetic_root, synthetic_root, smooths=(1,), ttas=("none", "z"), progress=False)
    pd.testing.assert_frame_equal(again, rows)
    other = tmp_path / "other_test_data"  # other test runs: the cached predictions are not theirs
    shutil.copytree(synthetic_root, other)
    with pytest.raises(pytest.fail.Exception, match="predicted again"):
        threshold_rules(study, synthetic_root, other, smooths=(1,), progress=False)
    (study / "weights" / "a-seed0" / "fold0.pt").touch()  # a retrained model: the cache is stale
    with pytest.raises(pytest.fail.Exception, match="predicted again"):
        threshold_rules(study, synthetic_root, synthetic_root, smooths=(1,), progress=False)
    monkeypatch.undo()
    report = write_threshold_report(rows, study / "threshold_rules.md", ["ribosome"]).read_text()
    assert "## TTA none: 1 models" in report and "| smooth1 | 1 |" in report and "## TTA against none" in report
    flip = rows[rows["rule"] == "own"].set_index("tta")["score"]
    assert f"| z | 1 | {flip['z'] - flip['none']:+.3f} ± nan" in report  # one model: no spread
    assert (study / "threshold_rules.csv").is_file()
    # the command line: its checks fail before any work, then the same report
    common = ["--study-dir", str(study), "--data", str(synthetic_root), "--test-data", str(synthetic_root),
              "--no-progress"]
    assert rules_main([*common, "--smooth", "0"]) == 2 and "K=0 is the `own` rule" in capsys.readouterr().err
    assert rules_main([*common, "--tta", "sideways"]) == 2 and "sideways" in capsys.readouterr().err
    assert rules_main([*common, "--arms", "b"]) == 2 and "arm(s) b not in" in capsys.readouterr().err
    assert rules_main([*common, "--smooth", "1", "--tta", "none", "z"]) == 0
    assert "## TTA against none" in (study / "threshold_rules_z.md").read_text()


def test_paired_differences_and_study_checks(tmp_path):
    from czii_kit.study import paired_differences, study_models

    rows = pd.DataFrame({"arm": ["a"] * 4, "seed": [0, 0, 1, 1], "tta": "none", "rule": ["own", "x"] * 2,
                         "score": [0.5, 0.6, 0.6, 0.6]})
    diffs = paired_differences(rows, ["score"]).set_index("rule")
    assert diffs.loc["x", "score"] == "+0.050 ± 0.071 (1/1 up)" and diffs.loc["x", "models"] == 2
    with pytest.raises(ConfigError, match="--out folder of czii study"):
        study_models(tmp_path)
    pd.DataFrame({"arm": ["a"], "seed": [0]}).to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(CheckpointError, match="a-seed0 do not exist"):
        study_models(tmp_path)  # results.csv names a model whose weights are gone


def test_ablate_seeds_from_the_command_line_are_checked_before_any_training(tmp_path, capsys):
    from czii_kit.cli.study import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "arms": {"baseline": []}}))
    code = main(["--study", str(path), "--test-data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
                 "--seeds", "3", "4"])
    assert code == 2 and "--seeds: use at least three distinct seeds per arm, got [3, 4]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
