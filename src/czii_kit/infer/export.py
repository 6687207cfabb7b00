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
import functools
import hashlib
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.infer.engines import (GraphSession, OnnxSession, TensorRTSession, check_window, require_tensorrt,
                                    tensorrt_logger)
from czii_kit.utils.atomic import atomic_path
from czii_kit.utils.digest import sha256_file

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


def check_built_engine(spec: GraphSpec, session, device: str | torch.device, path: Path) -> float:
    """Parity of an engine built in this process (in the notebook, say) against torch fp32, once, on a fixed window:
    beyond the fp16 tolerance the engine file is removed (so it is not reused) and an error says so, which makes
    prediction use torch for every run. Returns the max abs difference."""
    diff = parity(spec, session, device, n_batches=1)
    if diff > FP16_TOLERANCE:
        Path(path).unlink(missing_ok=True)
        raise CheckpointError(f"the TensorRT engine {Path(path).name} just built here differs from torch fp32 by "
                              f"{diff:.2e} > {FP16_TOLERANCE:.0e} on a fixed window: it is not used (deleted from the "
                              "cache); check the export with czii export --format onnx --precision fp16")
    log.warning("built %s: max abs diff vs torch fp32 %.2e (tolerance %.0e)", Path(path).name, diff, FP16_TOLERANCE)
    return diff


def check_parity(what: str, diff: float, fp16: bool) -> None:
    """Print the max abs difference against its tolerance; raise when it is exceeded."""
    tol = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    print(f"parity {what}: max abs diff {diff:.3e} (tolerance {tol:.0e}) {'OK' if diff <= tol else 'FAILED'}")
    if diff > tol:
        raise CheckpointError(f"{what}: outputs differ by {diff:.3e} > {tol:.0e}; the export is not faithful "
                              "(for fp16, try the fp32 graph: --precision fp32)")


@dataclass(frozen=True)
class EngineFiles:
    """Where graphs and engines live: exports and builds go to ``cache_dir``; ``prebuilt`` folders (e.g. a
    Kaggle dataset made by tools/build_engines.py) are searched first and never written to."""

    cache_dir: Path = Path("build/engines")
    prebuilt: tuple[Path, ...] = ()
    engine_dir: Path | None = None  # where new engines go (default: cache_dir); tools/build_engines.py sets it

    def engine_path(self, graph: str, sources: Sequence[str | Path], device: torch.device) -> Path:
        """The engine file for ``graph`` on this GPU: a prebuilt one whose key matches, else where to build it."""
        trt = require_tensorrt()
        name = engine_name(graph, sources, torch.cuda.get_device_name(device), trt.__version__)
        for folder in self.prebuilt:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
        return Path(self.engine_dir or self.cache_dir) / name


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """Cached by size and modification time: a file is hashed once per process unless it changes."""
    return sha256_file(path)


def weights_digest(sources: Sequence[str | Path]) -> str:
    """sha256 over the checkpoint files a graph is made of (their bytes: copies and packs keep the key)."""
    parts = []
    for path in map(Path, sources):
        stat = path.stat()
        parts.append(_file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(";".join(parts).encode()).hexdigest()


def engine_name(graph: str, sources: Sequence[str | Path], gpu_name: str, trt_version: str) -> str:
    """An engine runs only for the weights, window, batch and precision it was built from (``graph``, the ONNX
    file's stem, and the weights' digest), on the GPU model and TensorRT version that built it: all in the name."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-")
    return f"{graph}-{weights_digest(sources)[:12]}-{gpu}-trt{trt_version}.engine"


def strongly_typed_flags(trt) -> int:
    """Network creation flags: strongly typed (opt-in on TensorRT 10, the only mode, flag accepted, on 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_tensorrt_engine(onnx_path: str | Path, target: str | Path, device: str | torch.device = "cuda",
                          workspace_gb: float = 4) -> Path:
    """Build a serialized TensorRT engine for this GPU into ``target`` (atomically), unless it is there already.

    Precision follows the ONNX file (export it with ``fp16=True`` for an fp16 engine).
    """
    trt = require_tensorrt()
    onnx_path, target = Path(onnx_path), Path(target)
    if not onnx_path.is_file():
        raise CheckpointError(f"ONNX model not found: {onnx_path}; export it with tools/export.py first")
    if target.is_file():
        log.info("reusing TensorRT engine %s", target)
        return target
    with torch.cuda.device(torch.device(device)):
        logger = tensorrt_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(strongly_typed_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ConfigError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        log.warning("building TensorRT engine %s (takes minutes)", target.name)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    with atomic_path(target, suffix=".engine") as tmp:
        tmp.write_bytes(bytes(serialized))
    return target


def open_graph(kind: str, onnx_for: Callable[[bool], Path], device: str | torch.device,
               engine_for: Callable[[], Path] | None = None) -> GraphSession:
    """The session a graph engine kind runs, for every member kind.

    ``onnx_for(fp16)`` gives the ONNX file of that precision (exporting it if needed): onnx runs the
    fp32 file, onnx_fp16 the fp16 one, tensorrt the engine at ``engine_for()``, built from the fp16
    file when it is not there yet. TensorRT is checked before anything is exported.
    """
    if kind == "tensorrt":
        require_tensorrt()
        if engine_for is None:
            raise ConfigError("internal: a TensorRT session needs the engine's path")
        return TensorRTSession(build_tensorrt_engine(onnx_for(True), engine_for(), device), device)
    if kind not in ("onnx", "onnx_fp16"):
        raise ConfigError(f"unknown engine {kind!r}; use torch, onnx, onnx_fp16 or tensorrt")
    return OnnxSession(onnx_for(kind == "onnx_fp16"), device)
