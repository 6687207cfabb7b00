"""Engines built before the clock and runs that cannot fail quietly: engine keys and prebuilt lookup, the GPU
being current for every TensorRT call, the one-time fallback to torch, the per-run retry on torch.

Where TensorRT or CUDA is needed, stand-ins (a fake ``tensorrt`` module, a recording ``torch.cuda.device``)
check only OUR control flow: which calls happen, on which device, in which order. They prove nothing about
TensorRT itself; tools/gpu_check.py does that on a GPU.
"""
from __future__ import annotations

import shutil
import sys
import types

import pandas as pd
import pytest
import torch

from czii_kit.cli.predict import main as predict_main
from czii_kit.data import layout
from czii_kit.infer import engines as engines_module
from czii_kit.infer.export import EngineFiles, engine_name
from czii_kit.particles import CLASS_NAMES
from czii_kit.submission import read_submission

LOW = ",".join(f"{c}=0.005" for c in CLASS_NAMES)


def fake_tensorrt(version="10.7.0", calls=None):
    """The slice of TensorRT's runtime API TensorRTSession uses, recording the current (fake) CUDA device."""
    calls = [] if calls is None else calls
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32 = "float32"

    class Logger:
        WARNING = 2
        made = 0

        def __init__(self, level):
            Logger.made += 1

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class ExecutionContextAllocationStrategy:
        STATIC, ON_PROFILE_CHANGE, USER_MANAGED = 0, 1, 2

    class Context:
        def __init__(self):
            self.memory = None  # (pointer, size) given by set_device_memory

        def set_device_memory(self, pointer, size):
            self.memory = (pointer, size)

        def set_tensor_address(self, name, pointer):
            calls.append(("address", name, current()))

        def execute_async_v3(self, stream):
            calls.append(("execute", current()))
            return True

    class Engine:
        num_io_tensors = 2
        device_memory_size_v2 = 4096  # bytes of activation memory a context of this engine needs

        def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
            if strategy != ExecutionContextAllocationStrategy.USER_MANAGED:
                raise AssertionError("contexts must not allocate their own activation memory")
            calls.append(("context", current()))
            return Context()

        def get_tensor_name(self, i):
            return ["volume", "probabilities"][i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "volume" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            return (1, 1, 8, 16, 16) if name == "volume" else (1, 6, 4, 8, 8)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize", current()))
            return Engine()

    trt.Logger, trt.Runtime, trt.TensorIOMode, trt.calls = Logger, Runtime, TensorIOMode, calls
    trt.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    return trt


DEVICE_STACK: list = []


def current():
    return DEVICE_STACK[-1] if DEVICE_STACK else None


class RecordingCudaDevice:
    def __init__(self, device):
        self.device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)

    def __enter__(self):
        DEVICE_STACK.append(self.device)

    def __exit__(self, *exc):
        DEVICE_STACK.pop()


def cpu_activation_memory(monkeypatch) -> None:
    """Shared activation buffers from host memory, and a fresh set of them for this test."""
    monkeypatch.setattr(engines_module, "_device_buffer", lambda size, device: torch.empty(size, dtype=torch.uint8))
    monkeypatch.setattr(engines_module.SharedActivationMemory, "_buffers", {})
    monkeypatch.setattr(engines_module.SharedActivationMemory, "_contexts", {})


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two fake T4s: torch.cuda answers as if they were there; nothing here touches a real GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device", RecordingCudaDevice)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: ("stream", torch.device(device)))
    monkeypatch.setattr(engines_module, "_TRT_LOGGER", [])
    cpu_activation_memory(monkeypatch)
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def test_tensorrt_session_deserializes_and_creates_its_context_on_its_own_gpu(fake_gpus, tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    engines_module.TensorRTSession(path, "cuda:1")
    engines_module.TensorRTSession(path, "cuda:0")
    assert fake_gpus.calls == [("deserialize", torch.device("cuda", 1)), ("context", torch.device("cuda", 1)),
                               ("deserialize", torch.device("cuda", 0)), ("context", torch.device("cuda", 0))]
    assert fake_gpus.Logger.made == 1  # one TensorRT logger per process


def test_engine_key_names_weights_graph_gpu_and_version(tmp_path):
    ckpt = tmp_path / "a" / "fold0.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights v1")
    name = engine_name("exp-fold0_64x128x128_b2_fp16", [ckpt], "Tesla T4", "10.7.0")
    assert name.startswith("exp-fold0_64x128x128_b2_fp16-") and name.endswith("-Tesla-T4-trt10.7.0.engine")
    copy = tmp_path / "b" / "fold0.pt"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    assert engine_name("exp-fold0_64x128x128_b2_fp16", [copy], "Tesla T4", "10.7.0") == name  # same bytes, same key
    ckpt.write_bytes(b"weights v2")  # retrained
    assert engine_name("exp-fold0_64x128x128_b2_fp16", [ckpt], "Tesla T4", "10.7.0") != name
    assert engine_name("exp-fold0_64x128x128_b2_fp16", [copy], "NVIDIA L4", "10.7.0") != name
    assert engine_name("exp-fold0_64x128x128_b2_fp16", [copy], "Tesla T4", "11.4.0") != name


def test_prebuilt_engines_are_used_only_when_their_key_matches(fake_gpus, tmp_path):
    ckpt = tmp_path / "fold0.pt"
    ckpt.write_bytes(b"weights")
    prebuilt, cache = tmp_path / "dataset", tmp_path / "cache"
    prebuilt.mkdir()
    files = EngineFiles(cache, (prebuilt,))
    wanted = files.engine_path("exp-fold0_b1_fp16", [ckpt], torch.device("cuda", 0))
    assert wanted.parent == cache  # nothing prebuilt yet: build into the cache
    (prebuilt / wanted.name).write_bytes(b"engine")
    assert files.engine_path("exp-fold0_b1_fp16", [ckpt], torch.device("cuda", 1)) == prebuilt / wanted.name
    (prebuilt / wanted.name).rename(prebuilt / wanted.name.replace("trt10.7.0", "trt10.6.0"))  # another TensorRT
    assert files.engine_path("exp-fold0_b1_fp16", [ckpt], torch.device("cuda", 0)).parent == cache


def test_an_engine_that_cannot_be_set_up_falls_back_to_torch_once(synthetic_root, tiny_experiment, tmp_path, capsys):
    """No GPU here: --engine tensorrt fails at set-up, says why ONCE, and every run uses torch."""
    out, reference = tmp_path / "trt.csv", tmp_path / "torch.csv"
    common = ["--data", str(synthetic_root), "--weights", str(tiny_experiment), "--device", "cpu", "--tta", "none",
              "--thresholds", LOW, "--no-progress", "--engine-cache", str(tmp_path / "cache")]
    assert predict_main([*common, "--out", str(out), "--engine", "tensorrt"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("WARNING: engine tensorrt could not be set up") == 1 and "using the torch engine" in printed
    assert predict_main([*common, "--out", str(reference), "--engine", "torch"]) == 0
    pd.testing.assert_frame_equal(read_submission(out), read_submission(reference))


def test_a_run_failing_on_a_graph_engine_is_retried_on_torch(synthetic_root, tiny_experiment, tmp_path, capsys,
                                                              monkeypatch):
    run = layout.list_runs(synthetic_root, "test")[0]
    common = ["--data", str(synthetic_root), "--weights", str(tiny_experiment), "--device", "cpu", "--tta", "none",
              "--thresholds", LOW, "--no-progress", "--runs", run, "--engine-cache", str(tmp_path / "cache")]
    reference = tmp_path / "torch.csv"
    assert predict_main([*common, "--out", str(reference)]) == 0

    def crash(self, batch):
        raise RuntimeError("onnxruntime ran out of memory")

    monkeypatch.setattr(engines_module.OnnxSession, "__call__", crash)
    out = tmp_path / "onnx.csv"
    assert predict_main([*common, "--out", str(out), "--engine", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert f"{run} failed on onnx (RuntimeError: onnxruntime ran out of memory); retrying it on torch" in printed
    pd.testing.assert_frame_equal(read_submission(out), read_submission(reference))


def test_every_run_failing_writes_nothing_and_says_so(synthetic_root, tiny_experiment, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    for run in layout.list_runs(root, "test"):  # metadata fine, voxels corrupt: found only while predicting
        for chunk in (layout.tomogram_path(root, "test", run) / "0").rglob("*"):
            if chunk.is_file() and not chunk.name.startswith("."):
                chunk.write_bytes(b"corrupt")
    out = tmp_path / "s.csv"
    status = predict_main(["--data", str(root), "--weights", str(tiny_experiment), "--out", str(out),
                           "--device", "cpu", "--tta", "none", "--no-progress"])
    assert status == 2 and not out.exists()
    assert "every run failed, so no submission was written" in capsys.readouterr().err


def test_a_partial_submission_prints_a_loud_table_and_exits_non_zero(synthetic_root, tiny_experiment, tmp_path,
                                                                      capsys):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    broken = layout.list_runs(root, "test")[0]
    for chunk in (layout.tomogram_path(root, "test", broken) / "0").rglob("*"):
        if chunk.is_file() and not chunk.name.startswith("."):
            chunk.write_bytes(b"corrupt")
    out = tmp_path / "s.csv"
    assert predict_main(["--data", str(root), "--weights", str(tiny_experiment), "--out", str(out), "--device",
                         "cpu", "--tta", "none", "--no-progress", "--thresholds", LOW]) == 1
    printed = capsys.readouterr().out
    assert f"1 of 2 run(s) have NO predictions in {out}" in printed and f"!!!   {broken}: DataError" in printed
    assert broken not in set(read_submission(out)["experiment"])


def test_an_output_that_is_a_directory_is_refused_before_any_work(synthetic_root, tiny_experiment, tmp_path, capsys):
    assert predict_main(["--data", str(synthetic_root), "--weights", str(tiny_experiment), "--out", str(tmp_path),
                         "--device", "cpu"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_gpu_check_without_a_gpu_runs_the_cpu_checks_and_says_what_it_did_not_check(capsys, monkeypatch):
    from czii_kit.cli.gpu_check import main as gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check([]) == 0
    out = capsys.readouterr().out
    assert "no CUDA GPU here" in out and "the CUDA paths are NOT checked" in out
    assert "| NumPy peaks = scipy maximum_filter peaks | cpu |" in out and "2 of 2 checks passed" in out
