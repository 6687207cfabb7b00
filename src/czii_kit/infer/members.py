"""Turn checkpoints into ready-to-run ensemble members on a device, with any engine kind."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.infer.engines import ENGINES, GraphEngine, TorchEngine
from czii_kit.infer.ensemble import check_compatible
from czii_kit.infer.export import cached_export, export_onnx, open_graph
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


def packed_onnx_path(ckpt_path: str | Path, window, batch_size: int, fp16: bool = False) -> Path:
    """Where tools/export.py puts a checkpoint's ONNX (and where predict and the Kaggle pack look for it)."""
    ckpt_path = Path(ckpt_path)
    precision = "_fp16" if fp16 else ""
    return ckpt_path.with_name(f"{ckpt_path.stem}_{'x'.join(map(str, window))}_b{batch_size}{precision}.onnx")


def onnx_path_for(ckpt: dict, window, batch_size: int, cache_dir: Path, fp16: bool = False) -> Path:
    """ONNX file for a checkpoint at a fixed window/batch: a packed one next to it, else exported into cache_dir."""
    return cached_export(ckpt["path"], packed_onnx_path(ckpt["path"], window, batch_size, fp16), cache_dir,
                         lambda path: export_onnx(prob_model(ckpt), tuple(window), path, batch_size, fp16=fp16))


def make_member(ckpt: dict, engine: str, device, window, batch_size: int, cache_dir: Path,
                weight: float = 1.0) -> Member:
    """An ensemble member: the torch model, or the graph the engine kind runs (see export.open_graph)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "torch":
        eng = TorchEngine(prob_model(ckpt), tuple(window), device=device)
    else:
        session = open_graph(engine, lambda fp16: onnx_path_for(ckpt, window, batch_size, cache_dir, fp16),
                             cache_dir, device)
        eng = GraphEngine(session, name=engine)
    return Member(eng, weight, name=f"{Path(ckpt['path']).parent.name}/{Path(ckpt['path']).stem}", meta=ckpt)
