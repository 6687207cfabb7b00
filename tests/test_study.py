"""Recipe ablations: arms x seeds trained, scored on a held-out test set, summarized with their spread."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.config import load_config
from czii_kit.errors import ConfigError
from czii_kit.study import load_study, run_study, summarize, verdicts, write_report


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
    with pytest.raises(ConfigError, match="at least three seeds"):
        load_study(path)
    path.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "arms": {"typo": ["loss.args.pos_weihgt=2", "trian.lr=1"]}}))
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_study(path)


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
                     progress=False)
    assert set(done["arm"]) == {"baseline"} and sorted(done["seed"]) == [0, 1, 2] and done["score"].between(0, 1).all()
    # thresholds tuned exactly on the test set can only do better than the model's own, class by class
    assert (done["score_tuned"] >= done["score"] - 1e-9).all()
    assert (done["tuned_f4_ribosome"] >= done["f4_ribosome"] - 1e-9).all()
    assert (tmp_path / "out" / "weights" / "baseline-seed2" / "fold0.pt").is_file()
    import czii_kit.train as train_package

    monkeypatch.setattr(train_package, "trainer_for", lambda cfg: pytest.fail("a finished arm was trained again"))
    again = run_study(study, synthetic_root, synthetic_root, tmp_path / "out", arms=["baseline"], progress=False)
    pd.testing.assert_frame_equal(again, pd.read_csv(tmp_path / "out" / "results.csv"))
    report = write_report(again, tmp_path / "out", ["ribosome"], "baseline").read_text()
    assert "| baseline | 3 |" in report
