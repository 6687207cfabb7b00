"""Export a probability model to ONNX, check parity between engines, build cached TensorRT engines.

ONNX export uses torch's TorchScript-based exporter (``dynamo=False``): in torch 2.14 the
dynamo exporter needs the extra ``onnxscript`` package and gains nothing for plain conv
nets. Shapes are fixed, batch included (see engines.py).
"""
from __future__ import annotations

import hashlib
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.infer.engines import Engine, check_window, require_tensorrt
from czii_kit.utils.atomic import atomic_path

log = logging.getLogger(__name__)
INPUT_NAME = "volume"
OUTPUT_NAME = "probabilities"


def export_onnx(
    prob_model: torch.nn.Module,
    window: Sequence[int],
    path: str | Path,
    batch_size: int = 1,
    opset: int = 17,
) -> Path:
    """Write a fixed-shape (batch_size, 1, *window) -> (batch_size, C, *window/stride) ONNX graph atomically."""
    window = check_window(window, int(prob_model.output_stride), int(prob_model.input_multiple))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    model = prob_model.eval()
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros((batch_size, 1, *window), device=device)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        torch.onnx.export(
            model, (example,), str(tmp), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
        )
    log.info("exported %s (batch %d, window %s, opset %d)", path, batch_size, window, opset)
    return path


def parity(
    reference: Engine, candidate: Engine, n_batches: int = 2, seed: int = 0, batch_size: int = 1
) -> float:
    """Max |reference - candidate| probability over random N(0, 1) windows (normalized-volume-like)."""
    for field in ("window", "stride", "num_classes"):
        ours, theirs = getattr(reference, field), getattr(candidate, field)
        if ours != theirs:
            raise ConfigError(
                f"cannot compare engines {reference.name} and {candidate.name}: {field} differs "
                f"({ours} vs {theirs})"
            )
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n_batches):
        batch = torch.randn((batch_size, 1, *reference.window), generator=generator)
        expected = reference(batch.to(reference.device)).float().cpu()
        actual = candidate(batch.to(candidate.device)).float().cpu()
        worst = max(worst, float((expected - actual).abs().max()))
    return worst


def tensorrt_engine_path(onnx_path: str | Path, cache_dir: str | Path, fp16: bool, gpu_name: str,
                         trt_version: str) -> Path:
    """Cache location: engines only run on the GPU model and TensorRT version that built them."""
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-")
    precision = "fp16" if fp16 else "fp32"
    return Path(cache_dir) / f"{Path(onnx_path).stem}-{gpu}-trt{trt_version}-{precision}-{digest}.engine"


def build_tensorrt_engine(
    onnx_path: str | Path, cache_dir: str | Path, fp16: bool = True, workspace_gb: float = 4
) -> Path:
    """Build (or reuse from ``cache_dir``) a serialized TensorRT engine for this GPU."""
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise CheckpointError(f"ONNX model not found: {onnx_path}; export it with export_onnx first")
    target = tensorrt_engine_path(onnx_path, cache_dir, fp16, torch.cuda.get_device_name(), trt.__version__)
    if target.is_file():
        log.info("reusing TensorRT engine %s", target)
        return target
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    log.info("building TensorRT engine %s (takes minutes)", target)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    with atomic_path(target, suffix=".engine") as tmp:
        tmp.write_bytes(serialized)
    return target
