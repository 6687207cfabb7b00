"""The checks of every CUDA path the Kaggle notebook can take, for one table (``czii gpu-check``).

    czii gpu-check [--weights weights/EXP] [--runs 2] [--shape 184 630 630]     (= python tools/gpu_check.py)

On every visible GPU: the fp16 TensorRT engine against torch fp32 (max abs difference), CuPy peaks against
NumPy peaks on the same probability volume, torch fp16 autocast against fp32. Then a predict over full-size
synthetic runs with one worker per GPU, for each engine (seconds per tomogram, peak GPU memory), and the
time budget's projection against the measured time. Without a GPU it says so, runs the CPU-side checks
(NumPy peaks against the reference maximum filter, the fp16 ONNX graph in ONNX Runtime) and exits 0.
Exit status 1 when any check fails.
"""
from __future__ import annotations

import importlib.util
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from czii_kit.checkpoints import load_checkpoint, save_checkpoint, untrained_checkpoint
from czii_kit.config import load_config
from czii_kit.errors import CziiError
from czii_kit.infer.export import FP16_TOLERANCE, export_onnx, parity, probability_graph
from czii_kit.particles import CLASS_NAMES


@dataclass
class Check:
    name: str
    device: str
    ok: bool
    value: str

    def row(self) -> str:
        return f"| {self.name} | {self.device} | {self.value} | {'OK' if self.ok else 'FAILED'} |"


def untrained_checkpoint_file(config: str, path: Path) -> Path:
    """A checkpoint file of an untrained model of ``config``: timings and parity need weights, not skill."""
    payload = untrained_checkpoint(load_config(config))
    save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "format_version", "package_version",
                                                                     "path")}, path)
    return path


def smooth_probabilities(shape, seed: int = 0) -> np.ndarray:
    """(6, Z, Y, X) float32 in [0, 1] with many separated maxima: a realistic peak-finding workload."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(rng.random((len(CLASS_NAMES), *shape), dtype=np.float32), (0, 2, 2, 2))
    prob -= prob.min()
    return prob / prob.max()


def cpu_checks(ckpt: dict, workdir: Path) -> list[Check]:
    from czii_kit.checkpoints import probability_model
    from czii_kit.infer.engines import OnnxSession
    from czii_kit.post.peaks import find_peaks, reference_peaks

    prob = smooth_probabilities((48, 96, 96))
    thresholds = dict.fromkeys(CLASS_NAMES, 0.6)
    ours, ref = find_peaks(prob, CLASS_NAMES, thresholds), reference_peaks(prob, CLASS_NAMES, thresholds)
    same = len(ours) == len(ref) and np.allclose(ours[["x", "y", "z"]].to_numpy(), ref[["x", "y", "z"]].to_numpy())
    checks = [Check("NumPy peaks = scipy maximum_filter peaks", "cpu", same, f"{len(ours)} vs {len(ref)} peaks")]
    model = probability_model(ckpt)
    multiple = math.lcm(int(model.output_stride), int(model.input_multiple))
    window = tuple(max(multiple, min(w, 32) // multiple * multiple) for w in ckpt["window"])  # fp16 is slow on CPU
    path = export_onnx(model, window, workdir / "half.onnx", batch_size=1, fp16=True)
    diff = parity(probability_graph(model, window, 1), OnnxSession(path))
    checks.append(Check("fp16 ONNX graph (what TensorRT builds from) vs torch fp32", "cpu",
                        diff <= FP16_TOLERANCE, f"max abs diff {diff:.2e}"))
    return checks


def gpu_checks(ckpt: dict, device: str, workdir: Path) -> list[Check]:
    from czii_kit.checkpoints import probability_model
    from czii_kit.infer.engines import TensorRTSession
    from czii_kit.infer.export import build_tensorrt_engine
    from czii_kit.post.peaks import find_peaks

    checks = []
    model, window = probability_model(ckpt).to(device), tuple(ckpt["window"])
    spec = probability_graph(model, window, int(ckpt["config"]["infer"]["batch_size"]))
    x = torch.randn(spec.input_shape, device=device)
    with torch.inference_mode():
        fp32 = model(x)
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = model(x).float()
    diff = float((fp32 - fp16).abs().max())
    checks.append(Check("torch fp16 autocast vs fp32", device, diff <= FP16_TOLERANCE, f"max abs diff {diff:.2e}"))
    try:
        onnx = export_onnx(model.cpu(), window, workdir / f"m-{device[-1]}.onnx", spec.input_shape[0], fp16=True)
        t0 = time.monotonic()
        engine = build_tensorrt_engine(onnx, workdir / f"m-{device[-1]}.engine", device)
        built = time.monotonic() - t0
        diff = parity(spec, TensorRTSession(engine, device), device)
        checks.append(Check("TensorRT fp16 engine vs torch fp32", device, diff <= FP16_TOLERANCE,
                            f"max abs diff {diff:.2e} (built in {built:.0f} s)"))
    except CziiError as error:
        checks.append(Check("TensorRT fp16 engine vs torch fp32", device, False, str(error)[:120]))
    if importlib.util.find_spec("cupy") is None:
        checks.append(Check("CuPy peaks = NumPy peaks", device, False, "cupy is not installed (pip install cupy-cuda12x)"))
        return checks
    import cupy

    prob = smooth_probabilities((92, 315, 315))
    thresholds = dict.fromkeys(CLASS_NAMES, 0.6)
    with cupy.cuda.Device(torch.device(device).index or 0):
        t0 = time.monotonic()
        on_gpu = find_peaks(cupy.asarray(prob), CLASS_NAMES, thresholds, stride=2)
        cupy.cuda.Device().synchronize()
        t_gpu = time.monotonic() - t0
    t0 = time.monotonic()
    on_cpu = find_peaks(prob, CLASS_NAMES, thresholds, stride=2)
    t_cpu = time.monotonic() - t0
    same = len(on_gpu) == len(on_cpu) and np.allclose(on_gpu[["x", "y", "z", "score"]].to_numpy(),
                                                       on_cpu[["x", "y", "z", "score"]].to_numpy())
    checks.append(Check("CuPy peaks = NumPy peaks", device, same,
                        f"{len(on_gpu)} vs {len(on_cpu)} peaks; {t_gpu:.2f} s vs {t_cpu:.2f} s"))
    return checks


class DeviceMemorySampler:
    """The memory each GPU really uses while it predicts: ``torch.cuda.mem_get_info`` (what the driver sees: torch's
    allocator, TensorRT's and CuPy's memory and the CUDA context alike) sampled in a background thread; the peak per
    device is ``peak``. Torch's allocator statistics alone would miss TensorRT's and CuPy's memory."""

    def __init__(self, devices, period_s: float = 0.05, mem_get_info=None) -> None:
        import threading

        self.devices, self.period_s = list(devices), period_s
        self.mem_get_info = mem_get_info or torch.cuda.mem_get_info
        self.peak = {d: 0 for d in self.devices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-memory-sampler", daemon=True)

    def sample(self) -> None:
        for d in self.devices:
            free, total = self.mem_get_info(d)
            self.peak[d] = max(self.peak[d], total - free)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def __enter__(self) -> DeviceMemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def memory_summary(sampler: DeviceMemorySampler, devices) -> str:
    """Peak GPU memory in use, and what holds it: torch's allocator, TensorRT's shared activations, CuPy's pool."""
    from czii_kit.infer.engines import SharedActivationMemory

    gib = 2**30
    used = max(sampler.peak.values()) / gib
    allocated = max(torch.cuda.max_memory_allocated(d) for d in devices) / gib
    tensorrt = max(SharedActivationMemory.bytes_on(torch.device(d).index or 0) for d in devices) / gib
    cupy_pool = 0.0
    if importlib.util.find_spec("cupy") is not None:
        import cupy

        cupy_pool = cupy.get_default_memory_pool().total_bytes() / gib
    return (f"peak GPU memory {used:.1f} GB in use (driver; torch allocator peak {allocated:.1f} GB, of it TensorRT "
            f"activations {tensorrt:.2f} GB; CuPy pool {cupy_pool:.2f} GB)")


def predict_checks(ckpt_path: Path, devices: list[str], n_runs: int, shape, workdir: Path) -> list[Check]:
    """Full-size synthetic runs through predict_split, one worker per GPU, each engine; budget projection."""
    from czii_kit.data.open_data import open_data
    from czii_kit.data.synth import SynthConfig, make_dataset
    from czii_kit.infer.export import EngineFiles
    from czii_kit.infer.plan import PredictionPlan
    from czii_kit.infer.split import predict_split

    root = make_dataset(workdir / "data", n_train=0, n_test=n_runs, shape=tuple(shape), seed=3,
                        cfg=SynthConfig(shape=tuple(shape)), progress=False)
    checks = []
    for engine in ("torch", "tensorrt"):
        plan = PredictionPlan.from_weights([ckpt_path], engine=engine, tta="flips",
                                           thresholds=dict.fromkeys(CLASS_NAMES, 0.5),
                                           files=EngineFiles(workdir / "engines")).on_runs(open_data(root), "test")
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
        t0 = time.monotonic()
        with DeviceMemorySampler(devices) as sampler:
            result = predict_split(plan, devices, time_budget_h=1.0, progress=False, report=lambda line: None)
        total = time.monotonic() - t0
        per_run = np.mean(list(result.seconds.values())) if result.seconds else math.nan
        ok = not result.failures and result.engine == engine
        checks.append(Check(f"predict {n_runs} x {'x'.join(map(str, shape))}, flip TTA, engine {engine}",
                            f"{len(devices)} worker(s)", ok,
                            f"{per_run:.1f} s per tomogram, {total:.0f} s in all (set-up {result.setup_seconds:.0f} "
                            f"s), {memory_summary(sampler, devices)}"
                            + ("" if ok else f"; {result.failures or result.decisions}")))
        projected = [d for d in result.decisions if d.startswith("first item")]
        if projected:
            checks.append(Check(f"budget projection, engine {engine}", "-", True,
                                f"{projected[0]}; measured {total:.0f} s"))
    return checks


def run(weights: str | None, n_runs: int, shape, config: str = "cpu_quick") -> list[Check]:
    with tempfile.TemporaryDirectory(prefix="czii-gpu-check-") as tmp:
        workdir = Path(tmp)
        ckpt_path = Path(weights) if weights else untrained_checkpoint_file(config, workdir / "untrained" / "fold0.pt")
        if ckpt_path.is_dir():
            ckpt_path = sorted(ckpt_path.glob("fold*.pt"))[0]
        ckpt = load_checkpoint(ckpt_path)
        checks = cpu_checks(ckpt, workdir)
        if not torch.cuda.is_available():
            return checks
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        for device in devices:
            checks += gpu_checks(ckpt, device, workdir)
        checks += predict_checks(ckpt_path, devices, n_runs, shape, workdir)
        return checks


def header() -> str:
    """What this machine is, in one line, and what will not be checked without a GPU."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)) if gpus else "none"
    line = f"czii-kit GPU self-check: torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: {names}"
    if not gpus:
        line += "\nno CUDA GPU here: only the CPU-side checks run; the CUDA paths are NOT checked"
    return line


def table(checks: list[Check]) -> str:
    """The markdown table of the checks (what the README's GPU table is made from) and a count."""
    failed = [c for c in checks if not c.ok]
    return "\n".join(["| check | device | result | status |", "|---|---|---|---|", *(c.row() for c in checks),
                      f"{len(checks) - len(failed)} of {len(checks)} checks passed"
                      + (f"; FAILED: {len(failed)}" if failed else "")])
