"""Inference engines behind one interface: torch, onnxruntime and TensorRT.

Every engine takes a (B, 1, Z, Y, X) float32 batch of windows and returns class
probabilities (B, C, Z/s, Y/s, X/s) float32 on ``engine.device``, so the sliding window,
TTA and ensembling never care which backend runs. ONNX and TensorRT graphs have fixed
shapes, including the batch dimension chosen at export: export with the batch size you
will run; smaller batches are zero-padded up to it and the padding is dropped from the
output, larger ones are split.

GPU backends (CUDA torch, TensorRT, onnxruntime's CUDA provider) are imported lazily and
fail with a ConfigError that says what is missing and what to use instead.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from czii_kit.config import ENGINE_KINDS
from czii_kit.errors import CheckpointError, ConfigError, first_line

Shape3 = tuple[int, int, int]
GPU_EXTRA_HINT = "pip install 'czii-kit[gpu]'"


@runtime_checkable
class Engine(Protocol):
    """(B, 1, *window) float32 windows -> (B, num_classes, *window/stride) float32 probabilities."""

    window: Shape3
    stride: int
    num_classes: int
    device: torch.device
    name: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available else cpu; 'cpu', 'cuda', 'cuda:N' checked against this machine."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but torch sees no CUDA GPU "
            f"(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
        )
    return resolved


def check_window(window: Sequence[int], stride: int, input_multiple: int = 1) -> Shape3:
    """A (z, y, x) window whose sizes are multiples of the stride and of the model's input multiple."""
    multiple = int(np.lcm(stride, input_multiple))
    window = tuple(int(w) for w in window)
    if len(window) != 3 or any(w < 1 or w % multiple for w in window):
        sizes = (list(window) + [window[-1] if window else multiple] * 3)[:3]  # three sizes, whatever was given
        suggestion = tuple(max(multiple, round(w / multiple) * multiple) for w in sizes)
        raise ConfigError(
            f"window {window} must be 3 positive sizes, each a multiple of {multiple} (output "
            f"stride {stride}, model input multiple {input_multiple}); use e.g. {suggestion}"
        )
    return window


def tune_for_fixed_shapes(device: torch.device) -> None:
    """On a GPU, let cuDNN time its convolution algorithms once and keep the fastest: the window never changes shape."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


class TorchEngine:
    """A torch module (moved to ``device`` and set to eval); fp16 autocast on CUDA by default."""

    name = "torch"

    def __init__(
        self,
        prob_model: torch.nn.Module,
        window: Sequence[int],
        device: str | torch.device = "cpu",
        fp16: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.fp16 = self.device.type == "cuda" if fp16 is None else fp16
        if self.fp16 and self.device.type != "cuda":
            raise ConfigError("fp16 autocast needs a CUDA device; use fp16=False (fp32) on cpu")
        self.stride = int(prob_model.output_stride)
        self.window = check_window(window, self.stride, int(prob_model.input_multiple))
        self.model = prob_model.to(self.device).eval()
        tune_for_fixed_shapes(self.device)
        self.num_classes = self._probe_num_classes()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.fp16
        ):
            return self.model(batch.to(self.device, torch.float32)).float()

    def _probe_num_classes(self) -> int:
        """Run one zero window: checks the output grid matches the stride, and warms up."""
        probe = self(torch.zeros((1, 1, *self.window)))
        expected = tuple(w // self.stride for w in self.window)
        if probe.ndim != 5 or tuple(probe.shape[2:]) != expected:
            raise ConfigError(
                f"model maps a {self.window} window to {tuple(probe.shape)}, expected "
                f"(1, C, *{expected}) for output_stride {self.stride}; fix the model's output_stride"
            )
        return int(probe.shape[1])


class OnnxSession:
    """A one-input, one-output ONNX graph on onnxruntime: torch float32 in, torch float32 out on ``device``."""

    def __init__(self, onnx_path: str | Path, device: str | torch.device = "cpu") -> None:
        ort = require_onnxruntime("; or use --engine torch")
        self.device = resolve_device(device)
        self.path = _existing_file(onnx_path, "ONNX model", "export it with tools/export.py --format onnx")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=_onnx_providers(ort, self.device))
        except Exception as e:  # noqa: BLE001 -- onnxruntime's own error types: a truncated or foreign file
            raise CheckpointError(f"onnxruntime could not load {self.path} ({type(e).__name__}: {first_line(e, 160)}); "
                                  "a file cut short or from elsewhere is made again by czii export --weights "
                                  "CHECKPOINT --format onnx --force") from e
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise CheckpointError(f"{self.path}: expected one input and one output, got {len(inputs)} and "
                                  f"{len(outputs)}; re-export it with tools/export.py")
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        self.input_shape, self.output_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run([self._output_name], {self._input_name: array})
        return torch.from_numpy(out).to(self.device)


def run_on_stream(stream, caller, tensors, enqueue) -> bool:
    """``enqueue(stream handle)`` on ``stream``, ordered after the work ``caller`` (torch's current stream) has
    queued and before any it queues next; ``tensors`` (allocated on ``caller``, used on ``stream``) are marked in
    use by ``stream`` so torch's caching allocator does not hand their memory out before it is done."""
    stream.wait_stream(caller)
    ok = enqueue(stream.cuda_stream)
    for tensor in tensors:
        tensor.record_stream(stream)
    caller.wait_stream(stream)
    return ok


def _device_buffer(size: int, device: torch.device) -> torch.Tensor:
    """``size`` bytes on ``device`` from torch's allocator (256-byte aligned, as TensorRT requires)."""
    return torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)


class SharedActivationMemory:
    """One activation buffer per GPU, shared by every TensorRT execution context of this process on that GPU.

    Each context would otherwise hold its own activation memory, invisible to torch: several fold members on a
    16 GB T4 can run out of it. Sharing is safe because the contexts of one GPU never run at once: one worker per
    GPU, and each session's stream is ordered after torch's current stream, which waits for the previous one
    (``run_on_stream``). The buffer is the largest size any context asked for; when a larger one comes, every
    context is pointed at the new buffer (at set-up, before any execution)."""

    _buffers: dict[int, torch.Tensor] = {}
    _contexts: dict[int, list] = {}
    _lock = threading.Lock()

    @classmethod
    def attach(cls, context, size: int, device: torch.device) -> None:
        index = device.index or 0
        with cls._lock:
            buffer = cls._buffers.get(index)
            contexts = cls._contexts.setdefault(index, [])
            contexts.append(context)
            if buffer is None or buffer.numel() < size:
                buffer = cls._buffers[index] = _device_buffer(size, device)
                for each in contexts:
                    each.set_device_memory(buffer.data_ptr(), buffer.numel())
            else:
                context.set_device_memory(buffer.data_ptr(), buffer.numel())

    @classmethod
    def bytes_on(cls, index: int) -> int:
        """The activation memory TensorRT uses on GPU ``index`` (what torch's allocator statistics also count)."""
        buffer = cls._buffers.get(index)
        return 0 if buffer is None else buffer.numel()


class TensorRTSession:
    """A serialized one-input, one-output float32 TensorRT engine, run on torch CUDA tensors on a stream of its own.

    Deserialization, execution-context creation and every execution happen with the session's GPU current,
    so a second worker on cuda:1 uses cuda:1's CUDA context and stream, never GPU 0's. TensorRT asks for a
    non-default stream (the legacy default stream adds synchronization and a warning on every call): each
    session has its own, ordered against torch's current stream both ways (``run_on_stream``).
    """

    def __init__(self, engine_path: str | Path, device: str | torch.device = "cuda") -> None:
        trt = require_tensorrt()
        self.device = resolve_device(device)
        if self.device.type != "cuda":
            raise ConfigError(f"TensorRT engines run on CUDA only, got device {device!r}; use --device cuda")
        self.path = _existing_file(engine_path, "TensorRT engine", "build it with tools/build_engines.py")
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(tensorrt_logger(trt))
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                raise CheckpointError(
                    f"TensorRT could not load {self.path}: engines only run on the GPU model and TensorRT "
                    f"version that built them; delete it and rebuild with tools/build_engines.py")
            # no activation memory of its own: every context on this GPU shares one buffer (TensorRT 10 and 11)
            self._context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            SharedActivationMemory.attach(self._context, self._engine.device_memory_size_v2, self.device)
            self._stream = torch.cuda.Stream(self.device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1 or any(
            self._engine.get_tensor_dtype(n) != trt.float32 for n in names
        ):
            raise CheckpointError(f"{self.path}: expected one float32 input and one float32 output, got {names}")
        (self._input_name,), (self._output_name,) = inputs, outputs
        self.input_shape = tuple(self._engine.get_tensor_shape(self._input_name))
        self.output_shape = tuple(self._engine.get_tensor_shape(self._output_name))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):
            batch = batch.to(self.device, torch.float32).contiguous()
            if tuple(batch.shape) != self.input_shape:
                raise ConfigError(f"{self.path} takes {self.input_shape}, got {tuple(batch.shape)}")
            out = torch.empty(self.output_shape, dtype=torch.float32, device=self.device)
            self._context.set_tensor_address(self._input_name, batch.data_ptr())
            self._context.set_tensor_address(self._output_name, out.data_ptr())
            if not run_on_stream(self._stream, torch.cuda.current_stream(self.device), (batch, out),
                                 self._context.execute_async_v3):
                raise RuntimeError(f"TensorRT execution failed for a batch of shape {tuple(batch.shape)}")
            return out


_TRT_LOGGER: list = []  # one TensorRT logger per process (TensorRT warns when several are created)


def tensorrt_logger(trt):
    """The process's TensorRT logger (created on first use)."""
    if not _TRT_LOGGER:
        _TRT_LOGGER.append(trt.Logger(trt.Logger.WARNING))
    return _TRT_LOGGER[0]


GraphSession = OnnxSession | TensorRTSession


class GraphEngine:
    """A fixed-shape probability graph (ONNX or TensorRT session) as an Engine: geometry read from the graph."""

    name = "graph"

    def __init__(self, session: GraphSession, name: str | None = None) -> None:
        self.session, self.device = session, session.device
        self.name = name or self.name
        self.batch_size, self.window, self.stride, self.num_classes = geometry_from_shapes(
            session.input_shape, session.output_shape, session.path
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return run_fixed_batch(batch, self.batch_size, self.session)


def check_engine_kind(kind: str) -> str:
    if kind not in ENGINE_KINDS:
        raise ConfigError(f"unknown engine {kind!r}; expected one of {', '.join(ENGINE_KINDS)}")
    return kind


def geometry_from_shapes(
    input_shape: Sequence, output_shape: Sequence, source: str | Path
) -> tuple[int, Shape3, int, int]:
    """(batch, window, stride, num_classes) of a fixed (B, 1, Z, Y, X) -> (B, C, Z/s, Y/s, X/s) graph."""
    shapes = (tuple(input_shape), tuple(output_shape))
    fixed = all(len(s) == 5 and all(isinstance(d, int) and d > 0 for d in s) for s in shapes)
    if fixed:
        (batch, channels, *window), (out_batch, num_classes, *out_window) = shapes
        strides = {w // o for w, o in zip(window, out_window)}
        consistent = channels == 1 and out_batch == batch and len(strides) == 1 and all(
            w == o * next(iter(strides)) for w, o in zip(window, out_window)
        )
        if consistent:
            return batch, tuple(window), strides.pop(), num_classes
    raise ConfigError(
        f"{source}: expected fixed shapes (B, 1, Z, Y, X) -> (B, C, Z/s, Y/s, X/s), got "
        f"{shapes[0]} -> {shapes[1]}; re-export it with tools/export.py"
    )


def run_fixed_batch(
    batch: torch.Tensor, batch_size: int, run: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Feed a fixed-batch graph: split into ``batch_size`` chunks, zero-pad the last, drop the padding."""
    outputs = []
    for begin in range(0, len(batch), batch_size):
        chunk = batch[begin:begin + batch_size].float()
        n = len(chunk)
        if n < batch_size:
            chunk = torch.cat([chunk, chunk.new_zeros((batch_size - n, *chunk.shape[1:]))])
        outputs.append(run(chunk)[:n])
    return torch.cat(outputs)


def require_tensorrt() -> ModuleType:
    """The tensorrt module, or a ConfigError naming exactly what this machine lacks."""
    missing = [] if torch.cuda.is_available() else ["a CUDA GPU"]
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        missing.append("the tensorrt package")
    if missing:
        raise ConfigError(
            f"TensorRT engines need a CUDA GPU and the tensorrt package (missing here: "
            f"{' and '.join(missing)}): {GPU_EXTRA_HINT} on a GPU machine; "
            f"use --engine onnx or torch on this machine"
        )
    return trt


def _onnx_providers(ort: ModuleType, device: torch.device) -> list:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            "onnxruntime here has no CUDAExecutionProvider: pip install onnxruntime-gpu "
            "(instead of onnxruntime), or use --device cpu, or --engine torch / tensorrt on GPU"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def require_onnxruntime(alternative: str = "") -> ModuleType:
    """onnxruntime, or a one-line error with the install command (``alternative``: what else the caller can do)."""
    return _import_or_explain("onnxruntime", "ONNX graphs run in the onnxruntime package: pip install onnxruntime "
                                             f"(or onnxruntime-gpu){alternative}")


def _import_or_explain(module: str, explanation: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(explanation) from None


def _existing_file(path: str | Path, what: str, fix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}; {fix}")
    return path
