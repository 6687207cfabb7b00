"""The one per-tomogram pipeline: every caller reads through it, data.level reaches them all with the right
units, finalize is the only place sources become detections, and the thresholds file travels from evaluate
to predict."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from czii_kit.cli.predict import main as predict_main
from czii_kit.config import load_config
from czii_kit.data import io, layout
from czii_kit.errors import ConfigError
from czii_kit.infer.predictor import finalize
from czii_kit.particles import CLASS_NAMES, VOXEL_SPACING
from czii_kit.tuning import Tuning, load_tuning, save_tuning

LEVEL1_OVERRIDES = [  # the tiny dataset at level 1 is 24 x 48 x 48 voxels of 20.02 Å
    "data.level=1", "model.args.filters=[8, 12, 16]", "train.patch_size=[16, 32, 32]", "infer.window=[24, 48, 48]",
    "train.epochs=1", "train.samples_per_epoch=4", "train.batch_size=2", "validate.every=1",
    "train.time_limit_min=null", "infer.tta=none",
]


@pytest.fixture(scope="module")
def level_calls(synthetic_root, tmp_path_factory):
    """Train, evaluate and predict with data.level=1, recording the level of every tomogram read."""
    from czii_kit.evaluate import run_evaluation
    from czii_kit.train.loop import train_fold

    calls = []
    real = io.read_level

    def spy(path, level=0):
        calls.append(("read", int(level)))
        return real(path, level)

    mp = pytest.MonkeyPatch()
    mp.setattr(io, "read_level", spy)
    try:
        cfg = load_config("cpu_quick", LEVEL1_OVERRIDES)
        out = tmp_path_factory.mktemp("level1") / "exp"
        result = train_fold(cfg, 0, synthetic_root, out, progress=False)
        calls.append(("trained", None))
        report = run_evaluation(synthetic_root, [out], out.parent / "report", device="cpu", progress=False)
        calls.append(("evaluated", None))
        sub = out.parent / "sub.csv"
        status = predict_main(["--data", str(synthetic_root), "--weights", str(out), "--out", str(sub),
                               "--device", "cpu", "--no-progress", "--thresholds",
                               ",".join(f"{c}=0.0001" for c in CLASS_NAMES)])
        calls.append(("predicted", None))
    finally:
        mp.undo()
    return {"calls": calls, "exp": out, "result": result, "report": report, "submission": sub, "status": status}


def test_a_non_default_level_reaches_training_validation_evaluation_and_prediction(level_calls):
    calls = level_calls["calls"]
    phases = [i for i, (what, _) in enumerate(calls) if what != "read"]
    trained, evaluated, predicted = phases
    reads = {"train + validation": calls[:trained], "evaluation": calls[trained + 1:evaluated],
             "prediction": calls[evaluated + 1:predicted]}
    for phase, phase_calls in reads.items():
        assert phase_calls, f"{phase} read no tomogram"
        assert {level for _, level in phase_calls} == {1}, phase
    assert level_calls["status"] == 0


def test_level_one_units_are_right_in_angstrom(level_calls, synthetic_root):
    from czii_kit.checkpoints import load_checkpoint

    ckpt = load_checkpoint(level_calls["exp"] / "fold0.pt")
    assert ckpt["voxel_spacing"] == pytest.approx(2 * VOXEL_SPACING)
    sub = pd.read_csv(level_calls["submission"])
    assert len(sub) > 0
    test_run = layout.list_runs(synthetic_root, "test")[0]
    full = io.read_tomogram(synthetic_root, test_run, "test")
    extent = (np.array(full.shape[::-1]) - 1) * VOXEL_SPACING  # (x, y, z) Å of the full-resolution volume
    xyz = sub[["x", "y", "z"]].to_numpy()
    assert (xyz >= 0).all() and (xyz <= extent + 2 * VOXEL_SPACING).all()
    assert xyz[:, 2].max() > extent[2] / 2  # not squeezed into the first half: the level-1 spacing was used


def test_a_model_refuses_tomograms_of_another_voxel_size(level_calls, synthetic_root, tmp_path, capsys):
    status = predict_main(["--data", str(synthetic_root), "--weights", str(level_calls["exp"]),
                           "--out", str(tmp_path / "s.csv"), "--device", "cpu", "--no-progress",
                           "--set", "data.level=0"])
    assert status == 2  # refused before the first tomogram is read
    err = capsys.readouterr().err
    assert "20.0249 Å voxels" in err and "10.0124 Å voxels" in err and "data.level" in err
    assert not (tmp_path / "s.csv").exists()


def test_evaluate_writes_a_thresholds_file_that_predict_reads(level_calls, synthetic_root, tmp_path, capsys):
    report = level_calls["report"]["thresholds"]
    tuning = load_tuning(report)
    assert set(tuning.thresholds) == set(CLASS_NAMES) and all(np.isfinite(list(tuning.thresholds.values())))
    assert tuning.meta["folds"] == [0] and tuning.meta["sources"] == ["unet"] and tuning.source_weights is None
    out = tmp_path / "s.csv"
    assert predict_main(["--data", str(synthetic_root), "--weights", str(level_calls["exp"]), "--out", str(out),
                         "--device", "cpu", "--no-progress", "--thresholds-from", str(report.parent)]) == 0
    assert f"thresholds: from {report}" in capsys.readouterr().out


def test_thresholds_file_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*czii evaluate"):
        load_tuning(tmp_path)
    path = save_tuning(Tuning(dict.fromkeys(CLASS_NAMES, 0.3)), tmp_path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "czii-kit-thresholds" and doc["thresholds"]["ribosome"] == 0.3
    doc["classes"] = list(CLASS_NAMES[:5]) + ["made-up"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="tuned for classes .*made-up"):
        load_tuning(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_tuning(path)


# --------------------------------------------------------------------------- finalize
def _frame(rows):
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z", "score"])


def test_finalize_thresholds_after_post_processing_and_keeps_everything_without_thresholds():
    cfg = load_config()
    peaks = _frame([("TS", "ribosome", 1000.0, 1000.0, 500.0, 0.8), ("TS", "ribosome", 3000.0, 1000.0, 500.0, 0.2),
                    ("TS", "apo-ferritin", 500.0, 500.0, 500.0, 0.4)])
    pd.testing.assert_frame_equal(finalize({"unet": peaks}, cfg), peaks)
    kept = finalize({"unet": peaks}, cfg, {**dict.fromkeys(CLASS_NAMES, 0.5), "apo-ferritin": 0.4})
    assert sorted(kept["score"]) == [0.4, 0.8]
