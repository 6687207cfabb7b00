"""Rehearsal while fine-tuning: the asked share of patches comes from the other data, deterministically; its
config is checked before any tomogram is read; picks of classes the model does not train are dropped there."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.config import load_config, with_particle_set
from czii_kit.data import layout
from czii_kit.data.dataset import PatchDataset
from czii_kit.data.open_data import open_data
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.train.data import load_run
from czii_kit.train.loop import setup
from czii_kit.train.rehearsal import MixedPatches, rehearsal_source

SPEC = {"kind": "gaussian", "stride": 1, "sigma_frac": 0.3, "radius_frac": 0.5, "spacing": 10.0}


def constant_patches(value: float, length: int, seed: int) -> PatchDataset:
    volume = np.full((16, 16, 16), value, dtype=np.float32)
    return PatchDataset([volume], [np.zeros((0, 3))], [np.zeros(0, dtype=np.int64)], (8, 8, 8), SPEC,
                        positive_fraction=0.0, augment=None, length=length, seed=seed)


def test_the_asked_share_of_patches_comes_from_the_rehearsal_data_the_same_way_every_time():
    mixed = MixedPatches(constant_patches(0.0, 400, 1), constant_patches(5.0, 400, 2), 0.25, seed=3)
    drawn = [float(mixed[i][0].mean()) == 5.0 for i in range(len(mixed))]
    assert drawn == [mixed.from_rehearsal(i) for i in range(len(mixed))]  # the patch says where it came from
    assert 0.18 < np.mean(drawn) < 0.32  # 0.25 +- 3 binomial standard deviations (0.022)
    assert drawn == [float(mixed[i][0].mean()) == 5.0 for i in range(len(mixed))]  # per (seed, epoch, index)
    mixed.set_epoch(1)
    assert mixed.main.epoch == mixed.rehearsal.epoch == 1
    assert [mixed.from_rehearsal(i) for i in range(len(mixed))] != drawn  # another epoch, another draw
    with pytest.raises(ConfigError, match="same length"):
        MixedPatches(constant_patches(0.0, 400, 1), constant_patches(5.0, 10, 2), 0.25, seed=3)


def test_the_rehearsal_config_is_checked(synthetic_root):
    assert rehearsal_source({"data": None, "runs": None, "fraction": 0.0}) is None
    with pytest.raises(ConfigError, match=r"train.rehearsal.fraction .* in \[0, 1\); got 1.0"):
        rehearsal_source({"data": str(synthetic_root), "runs": None, "fraction": 1.0})
    with pytest.raises(ConfigError, match="needs train.rehearsal.data"):
        rehearsal_source({"data": None, "runs": None, "fraction": 0.3})
    with pytest.raises(DataError, match="train.rehearsal.runs names TS_nope"):
        rehearsal_source({"data": str(synthetic_root), "runs": ["TS_nope"], "fraction": 0.3})
    source = rehearsal_source({"data": str(synthetic_root), "runs": None, "fraction": 0.3})
    assert source.runs == sorted(layout.list_runs(synthetic_root, "train")) and source.fraction == 0.3


def test_a_bad_rehearsal_run_stops_training_before_any_tomogram_is_read(synthetic_root, tmp_path, monkeypatch):
    from czii_kit.data import source

    def no_reading(*args, **kwargs):
        raise AssertionError("a tomogram was read before the rehearsal config was checked")

    monkeypatch.setattr(source.KaggleDirectory, "read_run", no_reading)
    cfg = load_config("cpu_quick", [*TINY_TRAIN_OVERRIDES, f"train.rehearsal.data={synthetic_root}",
                                    "train.rehearsal.runs=[TS_nope]", "train.rehearsal.fraction=0.5"])
    with pytest.raises(DataError, match="train.rehearsal.runs names TS_nope"):
        setup(cfg, -1, synthetic_root, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_finetuning_with_rehearsal_draws_patches_from_both_data(synthetic_root, tmp_path):
    labelled, *others = sorted(layout.list_runs(synthetic_root, "train"))
    cfg = load_config("cpu_quick", [*TINY_TRAIN_OVERRIDES, f"data.runs=[{labelled}]",
                                    f"train.rehearsal.data={synthetic_root}", f"train.rehearsal.runs=[{others[0]}]",
                                    "train.rehearsal.fraction=0.5"])
    run = setup(cfg, -1, synthetic_root, tmp_path / "exp")
    dataset = run.loader.dataset
    assert isinstance(dataset, MixedPatches) and dataset.fraction == 0.5
    assert len(dataset.main.volumes) == len(dataset.rehearsal.volumes) == 1
    assert not np.array_equal(dataset.main.volumes[0], dataset.rehearsal.volumes[0])  # two different runs
    assert run.train_names == [labelled]
    assert load_config(tmp_path / "exp" / "config.yaml")["train"]["rehearsal"]["runs"] == [others[0]]


def test_rehearsal_picks_of_classes_the_model_does_not_train_are_dropped(synthetic_root):
    five = ParticleSet(tuple(p for p in CZII if p.name != "beta-amylase"))
    cfg = with_particle_set(load_config("cpu_quick", TINY_TRAIN_OVERRIDES), five)
    data, run = open_data(synthetic_root), layout.list_runs(synthetic_root, "train")[0]
    kept = load_run(data, run, cfg, known_only=True)
    assert len(kept.picks) and "beta-amylase" not in set(kept.picks["particle_type"])
    assert len(kept.picks) == len(data.read_picks(run)) - int((data.read_picks(run)["particle_type"]
                                                               == "beta-amylase").sum())
    assert kept.labels.max() < len(five)
    with pytest.raises(DataError, match="unknown particle types"):
        load_run(data, run, cfg)
