"""Fine-tuning from any checkpoint: channels matched by class name, a wrong architecture refused before any data is
read, the lineage in the checkpoint, a frozen encoder, a slower encoder, the runs to train on, and thresholds
inherited when there is no validation run."""
from __future__ import annotations


import pytest
import torch

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.checkpoints import load_checkpoint, model_from_checkpoint
from czii_kit.config import load_config
from czii_kit.data import io, layout
from czii_kit.errors import CheckpointError, DataError
from czii_kit.models import build_model
from czii_kit.particles import CLASS_NAMES
from czii_kit.train import finetune
from czii_kit.train.loop import train_fold
from czii_kit.utils.digest import sha256_file


def tiny_cfg(root, *extra):
    cfg = load_config("cpu_quick", [*TINY_TRAIN_OVERRIDES, *extra])
    cfg["data"]["root"] = str(root)
    return cfg


@pytest.mark.parametrize("target", [
    [c for c in CLASS_NAMES if c != "beta-amylase"],  # 5 classes: one dropped
    ["made-up-complex", *CLASS_NAMES[::-1]],  # 7 classes: one new, and another order
])
def test_shared_classes_and_background_keep_their_logits_at_step_zero(tiny_experiment, target):
    source = load_checkpoint(tiny_experiment / "fold0.pt")
    before = model_from_checkpoint(source)
    model = build_model(source["model"]["name"], num_classes=len(target) + 1, **source["model"]["args"]).eval()
    finetune.load_initial_weights(model, source["model"], target, tiny_experiment / "fold0.pt")
    x = torch.randn(1, 1, 32, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        old, new = before(x), model.eval()(x)
    torch.testing.assert_close(new[:, 0], old[:, 0])  # background
    for j, name in enumerate(target, start=1):
        if name in source["classes"]:
            torch.testing.assert_close(new[:, j], old[:, 1 + list(source["classes"]).index(name)])
    if "made-up-complex" in target:  # the new class starts at the model's prior, not at another class's channel
        fresh = build_model(source["model"]["name"], num_classes=len(target) + 1, **source["model"]["args"])
        torch.testing.assert_close(model.head.bias[1], fresh.head.bias[1])


def test_another_architecture_is_refused_before_any_tomogram_is_read(tiny_experiment, synthetic_root, tmp_path,
                                                                     monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a tomogram was read before the init checkpoint was checked")

    monkeypatch.setattr(io, "read_level", no_reading)
    wider = tiny_cfg(synthetic_root, "model.args.filters=[16, 24, 32]", f"train.init_from={tiny_experiment}")
    with pytest.raises(CheckpointError) as refused:
        train_fold(wider, 0, synthetic_root, tmp_path / "a", progress=False)
    assert "does not fit the model of this config" in str(refused.value) and "stem.0.0.weight (shape" in str(
        refused.value)
    smp = tiny_cfg(synthetic_root, f"train.init_from={tiny_experiment / 'fold0.pt'}")
    smp["model"] = {"name": "unet_smp", "args": {"encoder_name": "resnet18"}}
    with pytest.raises(CheckpointError, match="is a resunet model, this config builds unet_smp"):
        train_fold(smp, 0, synthetic_root, tmp_path / "b", progress=False)
    assert not (tmp_path / "a" / "fold0.pt").exists()


@pytest.fixture(scope="module")
def finetuned(tiny_experiment, synthetic_root, tmp_path_factory):
    """One epoch from the tiny experiment with a frozen encoder, on one run, no validation (fold -1)."""
    run = layout.list_runs(synthetic_root, "train")[1]
    cfg = tiny_cfg(synthetic_root, "train.epochs=1", f"train.init_from={tiny_experiment}",
                   "train.freeze_encoder_epochs=1", f"data.runs=[{run}]")
    out = tmp_path_factory.mktemp("finetuned") / "exp"
    result = train_fold(cfg, -1, synthetic_root, out, progress=False)
    return {"result": result, "ckpt": load_checkpoint(out / "fold-1.pt"), "run": run, "out": out}


def test_the_checkpoint_records_where_it_started(finetuned, tiny_experiment):
    lineage = finetuned["ckpt"]["init_from"]
    assert lineage["path"] == str(tiny_experiment / "fold0.pt")
    assert lineage["sha256"] == sha256_file(tiny_experiment / "fold0.pt")
    assert lineage["classes"] == list(CLASS_NAMES) and lineage["model"] == "resunet" and lineage["fold"] == 0
    assert finetuned["result"]["train_runs"] == [finetuned["run"]]  # data.runs: one labelled run


def test_a_frozen_encoder_keeps_its_weights_and_statistics_and_the_rest_learns(finetuned, tiny_experiment):
    start = load_checkpoint(tiny_experiment / "fold0.pt")["state_dict"]
    after = finetuned["ckpt"]["state_dict"]
    encoder = [k for k in start if k.startswith(("stem.", "down."))]
    assert encoder and all(torch.equal(start[k], after[k]) for k in encoder)  # weights and BN running stats
    assert any(not torch.equal(start[k], after[k]) for k in start if k.startswith(("up.", "head.")))


def test_without_validation_a_finetuned_model_inherits_the_init_thresholds(finetuned, tiny_experiment):
    ckpt, start = finetuned["ckpt"], load_checkpoint(tiny_experiment / "fold0.pt")
    assert ckpt["thresholds"] == start["thresholds"]
    assert ckpt["validation"]["thresholds_from"] == f"init checkpoint: {tiny_experiment / 'fold0.pt'}"
    from czii_kit.train.report import summary

    assert f"thresholds: init checkpoint: {tiny_experiment / 'fold0.pt'}" in summary(finetuned["result"]).splitlines()


def test_predict_says_where_a_model_started(finetuned, synthetic_root, tmp_path, capsys):
    from czii_kit.cli.predict import main as predict_main

    assert predict_main(["--data", str(synthetic_root), "--weights", str(finetuned["out"]), "--out",
                         str(tmp_path / "s.csv"), "--device", "cpu", "--tta", "none", "--no-progress"]) == 0
    assert f"started from {finetuned['ckpt']['init_from']['path']} (sha256 " in capsys.readouterr().out


def test_the_encoder_learns_slower_when_asked():
    model = build_model("resunet", num_classes=7, filters=[8, 12, 16])
    groups = finetune.parameter_groups(model, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("stem.", "down.")) for p in groups[0]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(finetune.parameter_groups(model, 1e-3, 1.0)) == 1


def test_an_experiment_folder_gives_its_best_checkpoint(tiny_experiment, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    for fold, score in ((0, 0.2), (1, 0.7), (2, 0.4)):
        ckpt = torch.load(tiny_experiment / "fold0.pt", weights_only=True)
        ckpt["validation"]["score"], ckpt["fold"] = score, fold
        torch.save(ckpt, exp / f"fold{fold}.pt")
    assert finetune.init_checkpoint_path(exp) == exp / "fold1.pt"
    assert finetune.init_checkpoint_path(exp / "fold2.pt") == exp / "fold2.pt"


def test_unknown_runs_to_train_on_are_named(synthetic_root, tmp_path):
    with pytest.raises(DataError, match="data.runs names TS_nope"):
        train_fold(tiny_cfg(synthetic_root, "data.runs=[TS_nope]"), -1, synthetic_root, tmp_path / "x",
                   progress=False)


def test_a_yolo_config_refuses_init_from(synthetic_root, tmp_path, tiny_experiment):
    from czii_kit.errors import ConfigError
    from czii_kit.train.yolo import train_yolo_fold

    cfg = load_config("yolo_cpu_quick", [f"train.init_from={tiny_experiment}"])
    with pytest.raises(ConfigError, match="YOLO slice detector trains from its architecture yaml"):
        train_yolo_fold(cfg, 0, synthetic_root, tmp_path / "y", progress=False)
