"""Turn checkpoints into ready-to-run ensemble members on a device, with any engine kind."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from czii_kit.errors import CheckpointError
from czii_kit.errors import ConfigError
from czii_kit.infer.engines import ENGINES, create_engine
from czii_kit.infer.ensemble import check_compatible
from czii_kit.infer.export import build_tensorrt_engine, export_onnx
from czii_kit.infer.predictor import Member
from czii_kit.models.activation import ProbabilityModel
from czii_kit.particles import CLASS_NAMES
from czii_kit.yolo.predict import is_yolo_checkpoint
from czii_kit.train.checkpoint import build_model, find_checkpoints, load_checkpoint

def load_checkpoints(weights: list[str | Path], folds: list[int] | None = None) -> list[dict]:
    """Load and check checkpoints; 3D members must agree on normalization and stride (YOLO ones are 2D)."""
    ckpts = [load_checkpoint(p) for w in weights for p in find_checkpoints(w, folds)]
    volumetric = [c for c in ckpts if not is_yolo_checkpoint(c)]
    if volumetric:
        check_compatible(volumetric)
    for c in ckpts:
        if list(c["classes"]) != list(CLASS_NAMES):
            raise CheckpointError(f"{c['path']}: class order {c['classes']} differs from this czii-kit's {CLASS_NAMES}")
    return ckpts


def mean_thresholds(ckpts: list[dict]) -> dict[str, float]:
    """Per-class thresholds averaged over the members' tuned values (a common fold-ensemble choice)."""
    return {c: float(np.mean([k["thresholds"][c] for k in ckpts])) for c in CLASS_NAMES}


def prob_model(ckpt: dict) -> ProbabilityModel:
    return ProbabilityModel(build_model(ckpt), ckpt["activation"]).eval()


def packed_onnx_path(ckpt_path: str | Path, window, batch_size: int) -> Path:
    """Where tools/export.py puts a checkpoint's ONNX (and where predict and the Kaggle pack look for it)."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(f"{ckpt_path.stem}_{'x'.join(map(str, window))}_b{batch_size}.onnx")


def onnx_path_for(ckpt: dict, window, batch_size: int, cache_dir: Path) -> Path:
    """ONNX file for a checkpoint at a fixed window/batch: a packed one next to it, else exported into cache_dir."""
    ckpt_path = Path(ckpt["path"])
    packed = packed_onnx_path(ckpt_path, window, batch_size)
    if packed.exists():
        return packed
    key = hashlib.sha256(f"{ckpt_path.resolve()}:{ckpt_path.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{key}_{packed.name}"
    if not path.exists():
        export_onnx(prob_model(ckpt), tuple(window), path, batch_size=batch_size)
    return path


def engine_inputs(ckpt: dict, kind: str, window, batch_size: int, cache_dir: Path) -> tuple:
    """What ENGINES[kind] is built from: the torch model, an ONNX file, or a TensorRT engine built from it."""
    if kind == "torch":
        return prob_model(ckpt), tuple(window)
    onnx = onnx_path_for(ckpt, window, batch_size, cache_dir)
    return (onnx,) if kind == "onnx" else (build_tensorrt_engine(onnx, cache_dir, fp16=True),)


def make_member(ckpt: dict, engine: str, device, window, batch_size: int, cache_dir: Path,
                weight: float = 1.0) -> Member:
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    eng = create_engine(engine, *engine_inputs(ckpt, engine, window, batch_size, cache_dir), device=device)
    return Member(eng, weight, name=f"{Path(ckpt['path']).parent.name}/{Path(ckpt['path']).stem}", meta=ckpt)
