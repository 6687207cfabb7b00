"""Inference core: engines (torch / ONNX / TensorRT), sliding window, TTA, ensembling, time budget."""
from czii_kit.infer.budget import TimeBudget
from czii_kit.infer.engines import (
    ENGINES,
    Engine,
    OnnxEngine,
    TensorRTEngine,
    TorchEngine,
    create_engine,
    resolve_device,
)
from czii_kit.infer.ensemble import EnsembleAccumulator, average_probabilities, check_compatible
from czii_kit.infer.export import build_tensorrt_engine, export_onnx, parity
from czii_kit.infer.sliding_window import predict_volume, window_starts
from czii_kit.infer.tta import Transform, parse_tta
from czii_kit.infer.workers import map_over_devices

__all__ = [
    "ENGINES", "Engine", "EnsembleAccumulator", "OnnxEngine", "TensorRTEngine", "TimeBudget",
    "TorchEngine", "Transform", "average_probabilities", "build_tensorrt_engine", "check_compatible",
    "create_engine", "export_onnx", "map_over_devices", "parity", "parse_tta", "predict_volume",
    "resolve_device", "window_starts",
]
