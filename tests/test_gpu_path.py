"""The GPU path's control flow, on CPU: streams, engine parity after a build here, pinned uploads, cuDNN autotuning
and the CuPy probe. The stand-ins below mirror the calls our code makes; they prove our control flow only, never
the library (tools/gpu_check.py, on a GPU, does that)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from czii_kit.errors import CheckpointError
from czii_kit.infer import engines, export, kinds
from czii_kit.infer.export import FP16_TOLERANCE, probability_graph
from czii_kit.infer.sliding_window import upload
from czii_kit.utils import backend


class Recorder:
    def __init__(self, calls, name):
        self.calls, self.name, self.cuda_stream = calls, name, f"handle-{name}"

    def wait_stream(self, other):
        self.calls.append((self.name, "waits for", other.name))

    def record_stream(self, stream):
        self.calls.append((self.name, "used on", stream.name))


def test_tensorrt_runs_on_its_own_stream_ordered_against_torch_both_ways():
    calls = []
    ours, torch_current = Recorder(calls, "engine stream"), Recorder(calls, "torch stream")
    batch, out = Recorder(calls, "batch"), Recorder(calls, "out")
    assert engines.run_on_stream(ours, torch_current, (batch, out),
                                 lambda handle: calls.append(("enqueue on", handle)) or True)
    assert calls == [("engine stream", "waits for", "torch stream"),  # inputs written before are ready
                     ("enqueue on", "handle-engine stream"),  # never on torch's (default) stream
                     ("batch", "used on", "engine stream"), ("out", "used on", "engine stream"),
                     ("torch stream", "waits for", "engine stream")]  # what follows sees finished outputs


def test_each_session_makes_its_stream_on_its_own_gpu(monkeypatch, tmp_path):
    from test_engine_runs import RecordingCudaDevice, cpu_activation_memory, current, fake_tensorrt

    made = []

    class Stream:
        def __init__(self, device):
            made.append((torch.device(device), current()))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device", RecordingCudaDevice)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(engines, "_TRT_LOGGER", [])
    cpu_activation_memory(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    engines.TensorRTSession(path, "cuda:1")
    assert made == [(torch.device("cuda", 1), torch.device("cuda", 1))]


class Tiny(torch.nn.Module):
    output_stride, input_multiple = 1, 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


class Session:
    """A graph session that returns the torch model's output plus ``error``."""

    def __init__(self, model, shape, error=0.0):
        self.model, self.input_shape, self.error = model, shape, error

    def __call__(self, batch):
        with torch.no_grad():
            return self.model(batch) + self.error


def test_an_engine_built_here_is_compared_with_torch_and_refused_beyond_fp16_tolerance(tmp_path):
    model = Tiny().eval()
    spec = probability_graph(model, (8, 8, 8), 1)
    good, bad = tmp_path / "good.engine", tmp_path / "bad.engine"
    good.write_bytes(b"engine")
    bad.write_bytes(b"engine")
    assert export.check_built_engine(spec, Session(model, spec.input_shape, 1e-3), "cpu", good) <= FP16_TOLERANCE
    assert good.exists()
    with pytest.raises(CheckpointError, match="bad.engine just built here differs from torch fp32 by 5.00e-02"):
        export.check_built_engine(spec, Session(model, spec.input_shape, 0.05), "cpu", bad)
    assert not bad.exists()  # not reused by a later run


def test_only_a_fresh_build_is_checked_and_a_prebuilt_engine_is_not(monkeypatch, tmp_path):
    engine_file = tmp_path / "exp-fold0.engine"
    checked = []
    def open_graph(kind, onnx_for, device, engine_for):  # builds the engine file, returns its session
        engine_for().write_bytes(b"engine")
        return "session"

    monkeypatch.setattr(kinds, "open_graph", open_graph)
    monkeypatch.setattr(kinds, "check_built_engine", lambda spec, session, device, path: checked.append(path))
    monkeypatch.setattr(kinds, "graph_name", lambda *a: "exp-fold0")

    class Kind:
        def graph(self, *a):
            return "spec"

    files = types.SimpleNamespace(engine_path=lambda graph, sources, device: engine_file, cache_dir=tmp_path)
    monkeypatch.setattr(kinds, "resolve_device", lambda d: torch.device("cpu"))
    ckpts = [{"path": str(tmp_path / "fold0.pt")}]
    assert kinds.graph_session(Kind(), ckpts, {}, "tensorrt", "cuda:0", files) == "session"
    assert checked == [engine_file]  # built now: compared once
    assert kinds.graph_session(Kind(), ckpts, {}, "tensorrt", "cuda:0", files) == "session"
    assert checked == [engine_file]  # found built: not compared again


def test_window_batches_go_through_pinned_memory_without_blocking_on_a_gpu():
    cpu = torch.ones(2, 1, 4, 4, 4)
    assert upload(cpu, torch.device("cpu")) is cpu or torch.equal(upload(cpu, torch.device("cpu")), cpu)
    calls = []

    class Batch:
        def pin_memory(self):
            calls.append("pin")
            return self

        def to(self, device, non_blocking=False):
            calls.append(("to", str(device), non_blocking))
            return self

    upload(Batch(), torch.device("cuda", 1))
    assert calls == ["pin", ("to", "cuda:1", True)]


def test_cudnn_autotunes_for_the_fixed_window_on_a_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    engines.tune_for_fixed_shapes(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    engines.tune_for_fixed_shapes(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True


def fake_cupy(broken: bool):
    """A stand-in with the calls the probe makes; NumPy behind it (so find_peaks takes the host path)."""
    cupy = types.ModuleType("cupy")
    cupy.float32 = np.float32

    def zeros(shape, dtype):
        if broken:
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        return np.zeros(shape, dtype)

    class Device:
        def __init__(self, index=0):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

    cupy.zeros, cupy.cuda = zeros, types.SimpleNamespace(Device=Device)
    return cupy


@pytest.fixture
def no_recorded_failures():
    yield
    backend._CUPY_FAILED.clear()


def test_a_cupy_that_fails_its_probe_sends_every_volume_of_that_gpu_to_the_host(monkeypatch, no_recorded_failures):
    from czii_kit.post.peaks import probe_gpu_peaks

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(broken=True))
    reason = probe_gpu_peaks("cuda:1")
    assert reason.startswith("RuntimeError: CUDA driver version is insufficient")
    assert backend.cupy_failure(1) == reason and backend.cupy_failure(0) is None

    class CudaTensor:  # what from_torch reads of a tensor on cuda:1
        device = torch.device("cuda", 1)

        def detach(self):
            return self

        def cpu(self):
            return torch.ones(2)

    assert isinstance(backend.from_torch(CudaTensor()), np.ndarray)  # the host path, CuPy not touched
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(broken=False))
    assert probe_gpu_peaks("cuda:1") is None and backend.cupy_failure(1) is None  # a probe that passes clears it


def test_the_probe_runs_once_per_gpu_at_set_up_and_warns_once(monkeypatch, no_recorded_failures):
    from czii_kit.infer import split

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(broken=True))
    said = []
    notes = split.probe_peak_finding(["cpu", "cuda:0", "cuda:1"], said.append)
    assert len(notes) == 2 and len(said) == 2 and all("peaks are found on the host for every run" in s for s in said)
    assert split.probe_peak_finding(["cpu"], said.append) == [] and len(said) == 2


def test_the_suite_runs_cpu_only_even_on_a_gpu_machine():
    """conftest hides the GPUs (unless CZII_TEST_GPU=1), so a lent GPU machine runs the same CPU suite."""
    import os

    if os.environ.get("CZII_TEST_GPU") == "1":
        pytest.skip("CZII_TEST_GPU=1: the GPUs were left visible on purpose")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()


def test_tensorrt_contexts_of_one_gpu_share_one_activation_buffer(monkeypatch):
    from test_engine_runs import cpu_activation_memory

    cpu_activation_memory(monkeypatch)

    class Context:
        memory = None

        def set_device_memory(self, pointer, size):
            self.memory = (pointer, size)

    small, large, other_gpu = Context(), Context(), Context()
    engines.SharedActivationMemory.attach(small, 1000, torch.device("cuda", 0))
    engines.SharedActivationMemory.attach(large, 3000, torch.device("cuda", 0))
    engines.SharedActivationMemory.attach(other_gpu, 500, torch.device("cuda", 1))
    assert small.memory == large.memory and small.memory[1] == 3000  # grown once, both re-pointed at it
    assert other_gpu.memory[1] == 500 and other_gpu.memory[0] != small.memory[0]  # one buffer per GPU
    assert engines.SharedActivationMemory.bytes_on(0) == 3000 and engines.SharedActivationMemory.bytes_on(2) == 0


def test_a_session_creates_its_context_without_memory_and_attaches_the_shared_buffer(monkeypatch, tmp_path):
    from test_engine_runs import RecordingCudaDevice, cpu_activation_memory, fake_tensorrt

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", RecordingCudaDevice)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: "stream")
    monkeypatch.setattr(engines, "_TRT_LOGGER", [])
    cpu_activation_memory(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    a, b = engines.TensorRTSession(path, "cuda:0"), engines.TensorRTSession(path, "cuda:0")
    assert a._context.memory == b._context.memory and a._context.memory[1] == 4096


def test_the_self_check_samples_what_the_driver_sees_not_torch_alone():
    from czii_kit.selfcheck import DeviceMemorySampler

    free = {"cuda:0": [10, 6, 3, 7, 9], "cuda:1": [10, 10, 8, 10, 10]}  # GiB free of 16, per sample

    def mem_get_info(device):
        values = free[device]
        value = values.pop(0) if len(values) > 1 else values[0]
        return value * 2**30, 16 * 2**30

    sampler = DeviceMemorySampler(["cuda:0", "cuda:1"], period_s=0.0, mem_get_info=mem_get_info)
    for _ in range(5):
        sampler.sample()
    assert sampler.peak == {"cuda:0": 13 * 2**30, "cuda:1": 8 * 2**30}  # the highest use seen on each GPU
