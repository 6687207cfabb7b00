"""Training: one trainer per member kind (3D probability models, 2D YOLO slice detectors), same outputs."""
from __future__ import annotations

from collections.abc import Callable

from czii_kit.infer.kinds import VolumeKind, YoloKind, kind_of
from czii_kit.train.loop import train_fold
from czii_kit.train.yolo import train_yolo_fold

TRAINERS: dict[str, Callable[..., dict]] = {VolumeKind.name: train_fold, YoloKind.name: train_yolo_fold}


def trainer_for(cfg: dict) -> Callable[..., dict]:
    """The trainer of the member kind a config's ``model.name`` makes."""
    return TRAINERS[kind_of(cfg).name]


__all__ = ["TRAINERS", "train_fold", "train_yolo_fold", "trainer_for"]
