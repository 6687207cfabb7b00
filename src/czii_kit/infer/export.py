"""Export any member kind's model to ONNX, check parity, build cached TensorRT engines, open graph sessions.

Member kinds (``czii_kit.infer.kinds``) say what they export as a ``GraphSpec``; everything here is
shared by them. ONNX export uses torch's TorchScript-based exporter (``dynamo=False``): in torch 2.14 the
dynamo exporter needs the extra ``onnxscript`` package and gains nothing for plain conv
nets. Shapes are fixed, batch included (see engines.py).

fp16 lives in the graph, not in a builder flag: TensorRT 11 builds strongly typed networks
only and has no ``BuilderFlag.FP16``, so ``fp16=True`` exports fp16 weights and compute
between float32 input and output casts. TensorRT 10 and 11 build the same fp16 engine from
that file, and onnxruntime runs it on CPU, which is how its accuracy is checked without a GPU.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.infer.engines import GraphSession, OnnxSession, TensorRTSession, check_window, require_tensorrt
from czii_kit.utils.atomic import atomic_path

log = logging.getLogger(__name__)
FP32_TOLERANCE = 1e-4  # torch vs an fp32 graph, on probabilities (YOLO: scores, boxes relative to size)
FP16_TOLERANCE = 2e-2  # torch fp32 vs an fp16 graph (ONNX Runtime or TensorRT)


class HalfPrecision(torch.nn.Module):
    """fp16 weights and compute behind float32 input and output: what an fp16 TensorRT engine is built from."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


@dataclass(frozen=True)
class GraphSpec:
    """What a member kind exports: a torch module at one fixed input shape, and how to check a graph of it.

    ``sample`` draws an input like the real ones (parity checks); ``difference`` measures how far two
    outputs differ where it matters (max abs difference for probabilities; see the YOLO kind for boxes).
    """

    module: torch.nn.Module
    input_shape: tuple[int, ...]
    input_name: str
    output_name: str
    sample: Callable[[torch.Generator], torch.Tensor]
    difference: Callable[[torch.Tensor, torch.Tensor], float]


def max_abs_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    if expected.shape != actual.shape:
        raise ConfigError(f"graph output {tuple(actual.shape)} differs from torch's {tuple(expected.shape)}; "
                          "re-export it with tools/export.py --force")
    return float((expected.float().cpu() - actual.float().cpu()).abs().max())


def probability_graph(model: torch.nn.Module, window: Sequence[int], batch_size: int = 1) -> GraphSpec:
    """A 3D probability model (``ProbabilityModel``-like: output_stride, input_multiple) at a fixed window and batch:
    (B, 1, Z, Y, X) float32 -> (B, C, Z/s, Y/s, X/s) probabilities."""
    window = check_window(window, int(model.output_stride), int(model.input_multiple))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    shape = (int(batch_size), 1, *window)
    return GraphSpec(model.eval(), shape, "volume", "probabilities",
                     sample=lambda generator: torch.randn(shape, generator=generator), difference=max_abs_difference)


def export_onnx(model: torch.nn.Module, window: Sequence[int], path: str | Path, batch_size: int = 1,
                fp16: bool = False) -> Path:
    """Export a 3D probability model at a fixed window and batch (the graph a 3D member's engine runs)."""
    return export_graph(probability_graph(model, window, batch_size), path, fp16)


def export_graph(spec: GraphSpec, path: str | Path, fp16: bool = False, opset: int = 17) -> Path:
    """Write ``spec.module`` traced at its fixed input shape as a one-input, one-output ONNX file, atomically."""
    module = (HalfPrecision(spec.module) if fp16 else spec.module).eval()
    parameter = next(spec.module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros(spec.input_shape, device=device)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module, (example,), str(tmp), dynamo=False, opset_version=opset,
            input_names=[spec.input_name], output_names=[spec.output_name], do_constant_folding=True,
        )
    log.info("exported %s (input %s, opset %d, %s)", path, spec.input_shape, opset, "fp16" if fp16 else "fp32")
    return path


def cached_export(sources: Sequence[str | Path], packed: Path, cache_dir: str | Path,
                  export: Callable[[Path], Path]) -> Path:
    """``packed`` when tools/export.py put it next to the checkpoint(s), else an export into ``cache_dir``.

    Never writes next to a checkpoint: on Kaggle it sits in a read-only dataset. The cache key holds
    the source checkpoints' paths and modification times, so re-training invalidates it.
    """
    if packed.exists():
        return packed
    stamp = ";".join(f"{Path(p).resolve()}:{Path(p).stat().st_mtime_ns}" for p in sources)
    path = Path(cache_dir) / f"{hashlib.sha256(stamp.encode()).hexdigest()[:12]}_{packed.name}"
    if not path.exists():
        export(path)
    return path


def parity(spec: GraphSpec, candidate: Callable[[torch.Tensor], torch.Tensor], device: str | torch.device = "cpu",
           n_batches: int = 2, seed: int = 0) -> float:
    """Worst ``spec.difference`` between the fp32 torch module and ``candidate`` over random inputs."""
    takes = getattr(candidate, "input_shape", None)
    if takes is not None and tuple(takes) != tuple(spec.input_shape):
        raise ConfigError(f"the graph takes {tuple(takes)}, but the model was exported at {tuple(spec.input_shape)}; "
                          "re-export it (tools/export.py --force) with the window and batch you run")
    module = spec.module.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n_batches):
        batch = spec.sample(generator).to(device)
        with torch.inference_mode():
            expected = module(batch)
        worst = max(worst, spec.difference(expected, candidate(batch)))
    return worst


def check_parity(what: str, diff: float, fp16: bool) -> None:
    """Print the max abs difference against its tolerance; raise when it is exceeded."""
    tol = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    print(f"parity {what}: max abs diff {diff:.3e} (tolerance {tol:.0e}) {'OK' if diff <= tol else 'FAILED'}")
    if diff > tol:
        raise CheckpointError(f"{what}: outputs differ by {diff:.3e} > {tol:.0e}; the export is not faithful "
                              "(for fp16, try the fp32 graph: --precision fp32)")


def tensorrt_engine_path(onnx_path: str | Path, cache_dir: str | Path, gpu_name: str, trt_version: str) -> Path:
    """Cache location: engines only run on the GPU model and TensorRT version that built them."""
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-")
    return Path(cache_dir) / f"{Path(onnx_path).stem}-{gpu}-trt{trt_version}-{digest}.engine"


def strongly_typed_flags(trt) -> int:
    """Network creation flags: strongly typed (opt-in on TensorRT 10, the only mode, flag accepted, on 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_tensorrt_engine(onnx_path: str | Path, cache_dir: str | Path, workspace_gb: float = 4) -> Path:
    """Build (or reuse from ``cache_dir``) a serialized TensorRT engine for this GPU.

    Precision follows the ONNX file (export it with ``fp16=True`` for an fp16 engine).
    """
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise CheckpointError(f"ONNX model not found: {onnx_path}; export it with export_onnx first")
    target = tensorrt_engine_path(onnx_path, cache_dir, torch.cuda.get_device_name(), trt.__version__)
    if target.is_file():
        log.info("reusing TensorRT engine %s", target)
        return target
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    log.info("building TensorRT engine %s (takes minutes)", target)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    with atomic_path(target, suffix=".engine") as tmp:
        tmp.write_bytes(bytes(serialized))
    return target


def open_graph(kind: str, onnx_for: Callable[[bool], Path], cache_dir: str | Path,
               device: str | torch.device) -> GraphSession:
    """The session a graph engine kind runs, for U-Nets and YOLO alike.

    ``onnx_for(fp16)`` gives the ONNX file of that precision (exporting it if needed): onnx runs the
    fp32 file, onnx_fp16 the fp16 one, tensorrt an engine built from the fp16 one. TensorRT is
    checked before anything is exported.
    """
    if kind == "tensorrt":
        require_tensorrt()
        return TensorRTSession(build_tensorrt_engine(onnx_for(True), cache_dir), device)
    if kind not in ("onnx", "onnx_fp16"):
        raise ConfigError(f"unknown engine {kind!r}; use torch, onnx, onnx_fp16 or tensorrt")
    return OnnxSession(onnx_for(kind == "onnx_fp16"), device)
