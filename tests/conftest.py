"""Shared fixtures: one tiny synthetic competition directory and one tiny trained experiment per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# The suite is CPU-only by design, also on a machine with a GPU: its references are CPU numbers, and the GPU paths
# are checked by `czii gpu-check` on the GPU itself. Set before torch first touches CUDA; CZII_TEST_GPU=1 keeps the
# GPUs visible (tests that need "no GPU" monkeypatch torch.cuda themselves).
if os.environ.get("CZII_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

TINY_SHAPE = (48, 96, 96)
TINY_TRAIN_OVERRIDES = [
    "model.args.filters=[8, 12, 16]", "train.patch_size=[32, 64, 64]", "infer.window=[48, 96, 96]",
    "train.epochs=2", "train.samples_per_epoch=8", "train.batch_size=2", "validate.every=1",
    "train.time_limit_min=null",
]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """4 train + 2 test runs of 48x96x96, denser than real so every class shows up."""
    from czii_kit.data.synth import SynthConfig, make_dataset

    out = tmp_path_factory.mktemp("synthetic") / "czii"
    return make_dataset(out, n_train=4, n_test=2, shape=TINY_SHAPE, seed=1, cfg=SynthConfig(density=6.0),
                        progress=False)


@pytest.fixture(scope="session")
def tiny_experiment(synthetic_root, tmp_path_factory):
    """A 2-epoch resunet trained on fold 0 of the tiny dataset: weights dir with fold0.pt."""
    from czii_kit.config import load_config
    from czii_kit.train.loop import train_fold

    cfg = load_config("cpu_quick", TINY_TRAIN_OVERRIDES)
    cfg["data"]["root"] = str(synthetic_root)
    out = tmp_path_factory.mktemp("weights") / "tiny"
    train_fold(cfg, 0, synthetic_root, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_yolo_experiment(synthetic_root, tmp_path_factory):
    """A 1-epoch 64-px YOLO slice detector on fold 0 of the tiny dataset (offline, from its yaml)."""
    from czii_kit.config import load_config
    from czii_kit.train.yolo import train_yolo_fold

    cfg = load_config("yolo_cpu_quick", ["yolo.imgsz=64", "yolo.epochs=1", "yolo.batch=8", "yolo.every=6",
                                         "yolo.conf=0.01", "yolo.max_det=50", "yolo.infer_batch=8",
                                         "yolo.cluster.min_size=2"])
    cfg["data"]["root"] = str(synthetic_root)
    out = tmp_path_factory.mktemp("weights") / "tiny_yolo"
    train_yolo_fold(cfg, 0, synthetic_root, out, progress=False)
    return out
