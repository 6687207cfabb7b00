"""Inference: engines (torch / ONNX / TensorRT), sliding window with in-loop ensembles and TTA, member kinds,
the prediction plan and the per-tomogram predictor, split-level scheduling with a time budget."""
from czii_kit.infer.budget import TimeBudget
from czii_kit.infer.engines import ENGINE_KINDS, Engine, GraphEngine, TorchEngine, resolve_device
from czii_kit.infer.ensemble import WeightedMean, check_compatible
from czii_kit.infer.export import build_tensorrt_engine, export_graph, parity
from czii_kit.infer.kinds import KINDS, Member, kind_of, load_checkpoints
from czii_kit.infer.plan import PredictionPlan
from czii_kit.infer.predictor import Predictor, finalize
from czii_kit.infer.sliding_window import predict_volume, window_starts
from czii_kit.infer.split import SplitResult, predict_split
from czii_kit.infer.tta import Transform, parse_tta
from czii_kit.infer.workers import map_over_devices

__all__ = [
    "ENGINE_KINDS", "KINDS", "Engine", "GraphEngine", "Member", "Predictor", "SplitResult", "TimeBudget",
    "TorchEngine", "Transform", "WeightedMean", "build_tensorrt_engine", "check_compatible", "export_graph",
    "PredictionPlan", "finalize", "kind_of", "load_checkpoints", "map_over_devices", "parity", "parse_tta",
    "predict_split", "predict_volume", "resolve_device", "window_starts",
]
