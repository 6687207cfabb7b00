"""End-to-end training on the tiny synthetic dataset: checkpoint contents, resume, refusal to clobber, CLI errors."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_TRAIN_OVERRIDES

from czii_kit.cli.train_fold import main as train_main
from czii_kit.config import load_config
from czii_kit.data import layout
from czii_kit.data.normalize import normalize_volume
from czii_kit.errors import CheckpointError, ConfigError, DataError
from czii_kit.particles import CLASS_NAMES
from czii_kit import checkpoints as ckpt_io
from czii_kit.train import loop


def tiny_cfg(root, *extra):
    cfg = load_config("cpu_quick", TINY_TRAIN_OVERRIDES + list(extra))
    cfg["data"]["root"] = str(root)
    return cfg


def test_checkpoint_holds_everything(tiny_experiment, synthetic_root):
    ckpt = ckpt_io.load_checkpoint(tiny_experiment / "fold0.pt")
    assert ckpt["classes"] == list(CLASS_NAMES)
    assert ckpt["fold"] == 0 and ckpt["epoch"] in (1, 2)
    assert set(ckpt["thresholds"]) == set(CLASS_NAMES)
    assert ckpt["validation"]["runs"] == [layout.list_runs(synthetic_root, "train")[0]]
    assert 0.0 <= ckpt["validation"]["score"] <= 1.0
    assert ckpt["normalization"] == ckpt["config"]["normalize"]
    assert ckpt["model"] == {"name": "resunet", "args": ckpt["config"]["model"]["args"]}
    assert ckpt["stride"] == 2 and ckpt["activation"] == "softmax"
    saved = yaml.safe_load((tiny_experiment / "config.yaml").read_text())
    assert saved == ckpt["config"]
    model = ckpt_io.model_from_checkpoint(ckpt)
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 32, 64, 64))
    assert out.shape == (1, 7, 16, 32, 32)
    log = pd.read_csv(tiny_experiment / "fold0_log.csv")
    assert list(log["epoch"]) == [1, 2] and log["val_f4"].notna().all()
    assert (tiny_experiment / "fold0_curve.png").stat().st_size > 1000


def test_ema_weights_are_saved(tiny_experiment):
    ckpt = ckpt_io.load_checkpoint(tiny_experiment / "fold0.pt")
    state = ckpt_io.load_state(tiny_experiment / "fold0_last.pt")
    if ckpt["epoch"] == 2:  # best is the last epoch: saved weights must be the EMA, not the raw model
        key = next(k for k, v in state["ema"].items() if v.dtype.is_floating_point and v.numel() > 10)
        assert torch.equal(ckpt["state_dict"][key], state["ema"][key])
        assert not torch.equal(state["model"][key], state["ema"][key])


def test_refuses_to_clobber(tiny_experiment, synthetic_root, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    before = (exp / "fold0.pt").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        loop.train_fold(tiny_cfg(synthetic_root), 0, synthetic_root, exp, progress=False)
    with pytest.raises(CheckpointError, match=r"another config .*train\.lr: [0-9.e-]+ -> 0\.5"):
        loop.train_fold(tiny_cfg(synthetic_root, "train.lr=0.5"), 1, synthetic_root, exp, progress=False)
    assert (exp / "fold0.pt").read_bytes() == before


@pytest.mark.parametrize("override, message", [("infer.tta=flipz", "unknown TTA token 'flipz'"),
                                               ("infer.blend=box", "unknown blend 'box'")])
def test_inference_settings_fail_before_training(synthetic_root, tmp_path, monkeypatch, override, message):
    """Validation predicts with infer.*: a bad value fails before any tomogram is read, and writes nothing."""
    monkeypatch.setattr(loop, "load_runs", lambda *a, **k: pytest.fail("a tomogram was read"))
    with pytest.raises(ConfigError, match=message):
        loop.train_fold(tiny_cfg(synthetic_root, override), 0, synthetic_root, tmp_path / "exp", progress=False)
    assert not (tmp_path / "exp").exists()


def test_a_config_without_any_fold_beside_it_is_refused_with_how_to_clear_it(synthetic_root, tmp_path):
    """Another job may be in its first epoch in that folder: its config.yaml is kept, and the message says what to
    delete if it is left from a start that failed."""
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(tiny_cfg(synthetic_root, "train.lr=0.5")))
    with pytest.raises(CheckpointError, match=r"train\.lr: 0\.5 -> .*if that config is left from a start that "
                                              r"failed, delete .*config\.yaml"):
        loop.train_fold(tiny_cfg(synthetic_root), 0, synthetic_root, out, progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 0.5


def test_resume_after_crash(synthetic_root, tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg(synthetic_root, "train.epochs=3")
    out = tmp_path / "exp"
    real_validate, calls = loop.validate, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        loop.train_fold(cfg, 1, synthetic_root, out, progress=False)
    after_crash = ckpt_io.load_checkpoint(out / "fold1.pt")  # epoch 1's best is intact
    assert after_crash["epoch"] == 1
    assert len(pd.read_csv(out / "fold1_log.csv")) == 1
    monkeypatch.setattr(loop, "validate", real_validate)
    capsys.readouterr()
    result = loop.train_fold(cfg, 1, synthetic_root, out, resume=True, progress=False)
    assert f"resuming fold 1 after epoch 1 of 3 ({out / 'fold1_last.pt'})" in capsys.readouterr().out
    log = pd.read_csv(out / "fold1_log.csv")
    assert list(log["epoch"]) == [1, 2, 3]  # epoch 2 redone, nothing lost or repeated
    assert result["best"]["epoch"] in (1, 2, 3)
    assert ckpt_io.load_state(out / "fold1_last.pt")["epoch"] == 2


def test_fold_minus_one_trains_on_all_runs(synthetic_root, tmp_path):
    cfg = tiny_cfg(synthetic_root, "train.epochs=1", "train.samples_per_epoch=2")
    result = loop.train_fold(cfg, -1, synthetic_root, tmp_path / "all", progress=False)
    assert result["val_runs"] == [] and len(result["train_runs"]) == 4
    ckpt = ckpt_io.load_checkpoint(tmp_path / "all" / "fold-1.pt")
    assert ckpt["thresholds"] == {c: cfg["classes"][c]["threshold"] for c in CLASS_NAMES}


@pytest.mark.parametrize("argv, message", [
    (["--fold", "9"], "out of range"),
    (["--fold", "0", "--set", "train.epoch=1"], "did you mean 'train.epochs'"),
    (["--fold", "0", "--set", "model.args.encoder=resnet18"], "encoder"),
    (["--fold", "0", "--config", "nope"], "not found"),
])
def test_cli_errors(argv, message, synthetic_root, tmp_path, capsys):
    assert train_main(argv + ["--data", str(synthetic_root), "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_encoder(synthetic_root, tmp_path, capsys):
    argv = ["--fold", "0", "--data", str(synthetic_root), "--out", str(tmp_path / "x"), "--config", "unet_r34",
            "--set", "model.args.encoder_name=resnet1000"]
    assert train_main(argv) == 2
    assert "resnet1000" in capsys.readouterr().err


def test_root_without_picks(synthetic_root, tmp_path):
    root = tmp_path / "nopicks"
    shutil.copytree(synthetic_root / "train" / "static", root / "train" / "static")
    with pytest.raises(DataError, match="no picks directory"):
        loop.train_fold(tiny_cfg(root), 0, root, tmp_path / "w", progress=False)


def test_nan_volume_is_named():
    vol = np.zeros((8, 8, 8), np.float32)
    vol[1, 2, 3] = np.nan
    with pytest.raises(DataError, match="run X.*1 NaN"):
        normalize_volume(vol, name="run X")


def test_zero_particle_validation_run(synthetic_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    val_run = layout.list_runs(root, "train")[0]
    for f in layout.picks_dir(root, val_run).glob("*.json"):
        doc = json.loads(f.read_text())
        doc["points"] = []
        f.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=f"validation run {val_run} has zero particles"):
        loop.train_fold(tiny_cfg(root), 0, root, tmp_path / "w", progress=False)


def test_the_recipe_switches_train(synthetic_root, tmp_path):
    """Free z rotation with zoom, mixup, look-alike hard negatives and deep supervision, in one short run."""
    cfg = tiny_cfg(synthetic_root, "train.epochs=1", "augment.rotate_z=180", "augment.scale_jitter=0.1",
                   "augment.mixup=0.5", "train.hard_negative_fraction=0.2", "train.positive_fraction=0.6",
                   "model.args.deep_supervision=true")
    result = loop.train_fold(cfg, 0, synthetic_root, tmp_path / "recipe", progress=False)
    assert np.isfinite(result["log"]["train_loss"]).all()
    ckpt = ckpt_io.load_checkpoint(tmp_path / "recipe" / "fold0.pt")
    assert ckpt["config"]["augment"]["rotate_z"] == 180 and ckpt["config"]["train"]["hard_negative_fraction"] == 0.2
    assert any(k.startswith("aux_heads.") for k in ckpt["state_dict"])  # saved with the model (gradients: test_models)
    with torch.no_grad():  # and a deep-supervised checkpoint predicts plain probabilities
        prob = ckpt_io.probability_model(ckpt)(torch.zeros(1, 1, 48, 96, 96))
    assert prob.shape == (1, 6, 24, 48, 48)  # one probability per class (softmax without the background), stride 2
    assert bool(((prob >= 0) & (prob.sum(1) <= 1 + 1e-6)).all())


def test_picks_outside_the_volume_are_named_before_training(capsys):
    from czii_kit.train.data import RunData

    picks = pd.DataFrame({"experiment": "TS_a", "particle_type": ["ribosome", "ribosome"], "x": [50.0, 99999.0],
                          "y": [50.0, 50.0], "z": [50.0, 50.0]})
    points = np.array([[5.0, 5.0, 5.0], [5.0, 5.0, 9987.0]])  # (z, y, x) voxels of those picks
    run = RunData("TS_a", "denoised", np.zeros((10, 20, 20), np.float32), points, np.array([3, 3]), picks, 10.0)
    loop._check_data([run], [])
    out = capsys.readouterr().out
    assert ("run TS_a: 1 of 2 picks lie outside its 10x20x20 volume (first: ribosome at x, y, z = 99999, 50, 50 Å)"
            in out)


def test_resume_with_nothing_to_resume_says_so_instead_of_starting_afresh(synthetic_root, tmp_path):
    with pytest.raises(CheckpointError, match=r"--resume: .*exp has no fold0_last\.pt to continue from"):
        loop.train_fold(tiny_cfg(synthetic_root), 0, synthetic_root, tmp_path / "exp", resume=True, progress=False)


def test_a_best_checkpoint_without_its_resume_state_is_not_sent_to_resume(synthetic_root, tmp_path):
    """fold0.pt without fold0_last.pt (stopped between the first two writes): the advice is to delete it, since
    --resume has nothing to continue from; nothing is deleted here."""
    from czii_kit.train.experiment import FoldPaths, guard_output

    paths = FoldPaths(tmp_path / "exp", 0)
    paths.out.mkdir()
    paths.best.write_bytes(b"best of a stopped first epoch")
    cfg = tiny_cfg(synthetic_root)
    with pytest.raises(CheckpointError, match=r"fold0\.pt exists without fold0_last\.pt: .* delete .*fold0\.pt"):
        guard_output(paths, cfg, resume=False)
    paths.last.write_bytes(b"its resume state")
    with pytest.raises(CheckpointError, match=r"fold0\.pt exists; pass --resume"):
        guard_output(paths, cfg, resume=False)
    assert paths.best.read_bytes() == b"best of a stopped first epoch"
