"""What the Kaggle machine is, and what follows from it: the engine to run, and whether CUDA runs at all.

Kaggle has retired the P100: since kaggle CLI 2.2.5 a session that asks for it runs on the default GPU,
the T4 (GPU T4 x2 for ``--accelerator NvidiaTeslaT4``, which ``kaggle kernels push`` takes from kaggle 1.8.4
on). A notebook can still land on a GPU TensorRT or the image's torch cannot use (an older kernel version,
an editor session with another accelerator): the pinned TensorRT 10.16 needs compute capability 7.5
(10.5 dropped Volta), and the cu128 torch has no Pascal (sm_60) kernels, so even its first CUDA op fails
there with "no kernel image is available for execution on the device". ``describe_gpus`` says what the
notebook got, ``choose_engine`` picks TensorRT only where it works and says why when it does not, and
``check_cuda_runs`` turns a GPU torch cannot run on into one clear error instead of a failure deep inside
inference.
"""
from __future__ import annotations

import importlib
import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from czii_kit.errors import ConfigError

TENSORRT_MIN_CAPABILITY = (7, 5)  # TensorRT 10.5 dropped Volta (7.0): Turing (the T4, 7.5) and newer
TENSORRT_MIN_MAJOR = 10  # the engine build needs the TensorRT 10/11 API
KAGGLE_CLI_MIN = (1, 8, 4)  # the first kaggle CLI whose `kernels push` takes --accelerator (and machine_shape)
PUSH_HINT = ("push with `kaggle kernels push -p kaggle_notebooks --accelerator NvidiaTeslaT4` (GPU T4 x2; "
             "kaggle CLI 1.8.4 or newer)")
NVIDIA_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class GpuInfo:
    """One visible CUDA GPU, as torch reports it."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    @property
    def compute_capability(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"

    def __str__(self) -> str:
        return (f"GPU {self.index}: {self.name}, compute capability {self.compute_capability}, "
                f"{self.memory_bytes / 2**30:.1f} GiB")


@dataclass(frozen=True)
class Environment:
    """The visible GPUs and the versions that decide what runs on them."""

    gpus: tuple[GpuInfo, ...]
    python: str
    torch: str
    cuda: str | None  # the CUDA torch is built with (torch.version.cuda), None for a CPU build
    driver: str | None  # the NVIDIA driver (nvidia-smi), None where nvidia-smi is absent or fails
    arches: tuple[str, ...] = ()  # the GPU architectures this torch has kernels for (sm_75, ...)


def nvidia_driver() -> str | None:
    """The driver version nvidia-smi reports, None when there is no nvidia-smi or it fails (never raises)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        done = subprocess.run([executable, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    versions = sorted({line.strip() for line in done.stdout.splitlines() if line.strip()})
    return ", ".join(versions) if done.returncode == 0 and versions else None


def describe_gpus() -> Environment:
    """Every visible GPU (index, name, compute capability, memory) and the Python/torch/CUDA/driver versions."""
    gpus: list[GpuInfo] = []
    arches: tuple[str, ...] = ()
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(GpuInfo(index, props.name, (int(props.major), int(props.minor)), int(props.total_memory)))
        try:
            arches = tuple(torch.cuda.get_arch_list())
        except (RuntimeError, AssertionError):
            arches = ()
    return Environment(tuple(gpus), platform.python_version(), torch.__version__, torch.version.cuda,
                       nvidia_driver() if gpus else None, arches)


def format_environment(env: Environment | None = None) -> str:
    """The few lines the notebook prints: versions, then one line per GPU (or that there is none)."""
    env = env or describe_gpus()
    cuda = f"CUDA {env.cuda}" if env.cuda else "a CPU build"
    kernels = f", kernels for {' '.join(env.arches)}" if env.arches else ""
    driver = f", NVIDIA driver {env.driver}" if env.driver else ""
    lines = [f"Python {env.python}, torch {env.torch} ({cuda}{kernels}){driver}"]
    if not env.gpus:
        lines.append("no CUDA GPU visible: inference runs on the CPU")
    else:
        names = sorted({g.name for g in env.gpus})
        lines.append(f"{len(env.gpus)} GPU(s): {', '.join(names)}")
        lines += [f"  {gpu}" for gpu in env.gpus]
    return "\n".join(lines)


def _selected(gpus: Sequence[GpuInfo], device: str) -> list[GpuInfo]:
    """The GPUs a --device value runs on: cuda:N one, auto/cuda every visible one."""
    match = re.fullmatch(r"\s*cuda:(\d+)\s*", str(device))
    if match is None:
        return list(gpus)
    return [g for g in gpus if g.index == int(match[1])]


def _fallback(reason: str) -> str:
    print(f"engine torch: {reason}")
    return "torch"


def choose_engine(requested: str, device: str, gpus: Environment | Sequence[GpuInfo] | None = None) -> str:
    """The engine to run here: TensorRT only when every GPU it would use has compute capability >= 7.5 and
    tensorrt imports; otherwise torch (fp16 on a GPU), with one printed line saying why. Other engines stay.

    Kaggle's image may lack tensorrt, or the notebook may have landed on an older GPU: one line and torch
    beat a failed submission.
    """
    if requested != "tensorrt":
        return requested
    if str(device).strip().lower() == "cpu":
        return _fallback("--device cpu, and TensorRT needs a CUDA GPU")
    if gpus is None:
        gpus = describe_gpus()
    gpus = list(gpus.gpus if isinstance(gpus, Environment) else gpus)
    used = _selected(gpus, device)
    if not used:
        return _fallback(f"no CUDA GPU is visible for --device {device} and TensorRT needs one; on Kaggle "
                         f"{PUSH_HINT}")
    for gpu in used:
        if gpu.capability < TENSORRT_MIN_CAPABILITY:
            need = "{}.{}".format(*TENSORRT_MIN_CAPABILITY)
            return _fallback(f"GPU {gpu.index} is a {gpu.name} (compute capability {gpu.compute_capability}) and "
                             f"TensorRT {TENSORRT_MIN_MAJOR}+ needs >= {need}; {PUSH_HINT}")
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        return _fallback(f"the tensorrt package does not import ({e}); pack its wheels "
                         "(kaggle_notebooks/README.md, section 1) to build TensorRT engines")
    version = str(getattr(trt, "__version__", ""))
    major = re.match(r"(\d+)", version)
    if major is None or int(major[1]) < TENSORRT_MIN_MAJOR:
        return _fallback(f"tensorrt {version or '(no version)'} is installed and the engine build needs "
                         f"TensorRT {TENSORRT_MIN_MAJOR}+; pack a tensorrt-cu12 {TENSORRT_MIN_MAJOR}.x wheel")
    return "tensorrt"


def _tiny_op(index: int) -> float:
    """One small CUDA kernel on GPU index, synchronized: raises where torch has no kernel image for the GPU."""
    x = torch.ones(8, device=f"cuda:{index}")
    value = float((x * 2).sum().item())
    torch.cuda.synchronize(index)
    return value


def check_cuda_runs(env: Environment | None = None) -> Environment:
    """Run one tiny CUDA op on every visible GPU; a GPU torch cannot run on raises a ConfigError naming it.

    On a Pascal GPU (a P100) with a cu128 torch, torch.cuda.is_available() is True but every kernel
    launch fails with cudaErrorNoKernelImageForDevice: this says so before hours of inference.
    No GPU: nothing to check (the CPU path needs none).
    """
    env = env or describe_gpus()
    for gpu in env.gpus:
        try:
            _tiny_op(gpu.index)
        except RuntimeError as e:  # torch.AcceleratorError and the older CUDA RuntimeError alike
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            kernels = f"kernels for {' '.join(env.arches)}" if env.arches else "its kernels"
            raise ConfigError(
                f"CUDA does not run on GPU {gpu.index}, a {gpu.name} (compute capability {gpu.compute_capability}): "
                f"{first}. This torch {env.torch} ships {kernels}, none for this GPU. On Kaggle ask for the T4s, "
                f"which the current image can use: {PUSH_HINT}, or set machine_shape to NvidiaTeslaT4 in "
                "kernel-metadata.json"
            ) from e
    return env
