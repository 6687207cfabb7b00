"""Engines behind one interface, ONNX export and parity, ensembling, and the device work queue."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.infer import engines as engines_module
from czii_kit.infer.engines import (
    ENGINE_KINDS,
    Engine,
    GraphEngine,
    OnnxSession,
    TensorRTSession,
    TorchEngine,
    check_engine_kind,
    geometry_from_shapes,
    resolve_device,
)
from czii_kit.infer.ensemble import WeightedMean, check_compatible
from czii_kit.infer.export import (FP16_TOLERANCE, build_tensorrt_engine, check_parity, export_onnx, parity,
                                   probability_graph)
from czii_kit.infer.sliding_window import predict_volume
from czii_kit.infer.tta import parse_tta
from czii_kit.infer.workers import map_over_devices

WINDOW = (8, 16, 16)


class TinyProbModel(torch.nn.Module):
    """A strided conv net ending in a softmax: the shape contract of a ProbabilityModel."""

    output_stride = 2
    input_multiple = 4

    def __init__(self, num_classes: int = 6):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv3d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv3d(8, num_classes, 1),
        )

    def forward(self, x):
        return torch.softmax(self.body(x), dim=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyProbModel()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, WINDOW, tmp_path_factory.mktemp("onnx") / "tiny.onnx", batch_size=2)


def test_torch_engine_reads_geometry_from_the_model(model):
    engine = TorchEngine(model, WINDOW)
    assert (engine.window, engine.stride, engine.num_classes, engine.device) == (WINDOW, 2, 6, torch.device("cpu"))
    assert isinstance(engine, Engine)
    probs = engine(torch.randn(3, 1, *WINDOW))
    assert probs.shape == (3, 6, 4, 8, 8) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3, 4, 8, 8))


def test_torch_engine_rejects_bad_windows_strides_and_cpu_fp16(model):
    with pytest.raises(ConfigError, match="multiple of 4"):
        TorchEngine(model, (8, 16, 18))
    with pytest.raises(ConfigError, match="fp16"):
        TorchEngine(model, WINDOW, fp16=True)
    liar = TinyProbModel()
    liar.output_stride = 4
    with pytest.raises(ConfigError, match="output_stride"):
        TorchEngine(liar, WINDOW)


def OnnxEngine(path) -> GraphEngine:
    return GraphEngine(OnnxSession(path), name="onnx")


def test_onnx_engine_reads_geometry_from_the_file(onnx_file):
    engine = OnnxEngine(onnx_file)
    assert (engine.batch_size, engine.window, engine.stride, engine.num_classes) == (2, WINDOW, 2, 6)
    assert isinstance(engine, Engine)
    assert [p.name for p in onnx_file.parent.iterdir()] == ["tiny.onnx"]  # atomic: no temp left


def test_onnx_matches_torch(model, onnx_file):
    torch_engine, onnx_engine = TorchEngine(model, WINDOW), OnnxEngine(onnx_file)
    assert parity(probability_graph(model, WINDOW, 2), onnx_engine, n_batches=2) < 1e-4
    batch = torch.randn(3, 1, *WINDOW)  # not a multiple of the exported batch of 2: split and padded
    assert torch.allclose(onnx_engine(batch), torch_engine(batch), atol=1e-4)
    volume = np.random.default_rng(0).normal(size=(11, 21, 19)).astype(np.float32)
    tta = parse_tta("flips")
    expected = predict_volume(torch_engine, volume, tta=tta, batch_size=3)
    np.testing.assert_allclose(predict_volume(onnx_engine, volume, tta=tta, batch_size=3), expected, atol=1e-4)


def test_parity_detects_a_different_model(model, onnx_file):
    torch.manual_seed(1)
    assert parity(probability_graph(TinyProbModel(), WINDOW, 2), OnnxEngine(onnx_file)) > 1e-3


def test_parity_refuses_a_graph_of_another_shape(model, onnx_file):
    with pytest.raises(ConfigError, match=r"takes \(2, 1, 8, 16, 16\).*\(2, 1, 8, 16, 8\)"):
        parity(probability_graph(model, (8, 16, 8), 2), OnnxSession(onnx_file))


def test_fp16_graph_has_fp16_weights_float32_io_and_stays_close(model, tmp_path):
    import onnx

    path = export_onnx(model, WINDOW, tmp_path / "half.onnx", batch_size=2, fp16=True)
    graph = onnx.load(str(path)).graph
    assert {t.data_type for t in graph.initializer if t.dims} == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    half = OnnxEngine(path)
    assert (half.batch_size, half.window, half.stride, half.num_classes) == (2, WINDOW, 2, 6)
    diff = parity(probability_graph(model, WINDOW, 2), half, n_batches=2)
    assert 1e-6 < diff < FP16_TOLERANCE  # rounded like an fp16 engine, and no worse than the export tool accepts
    assert next(model.parameters()).dtype == torch.float32  # the user's model is not converted in place


def test_check_parity_prints_and_refuses_beyond_the_precision_tolerance(capsys):
    check_parity("m: torch vs onnx fp16", 1e-3, fp16=True)  # within fp16's 2e-2
    assert "max abs diff 1.000e-03 (tolerance 2e-02) OK" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="differ by 1.000e-03 > 1e-04"):
        check_parity("m: torch vs onnx fp32", 1e-3, fp16=False)  # the same difference is a broken fp32 export
    assert "FAILED" in capsys.readouterr().out


class FakeTensorRT:
    """The slice of the TensorRT 11 builder API build_tensorrt_engine uses: strongly typed only, no FP16 flag."""

    __version__ = "11.4.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = 0

    class BuilderFlag:  # TensorRT 11 removed FP16 and every other precision flag
        pass

    def __init__(self, parses: bool = True):
        self.calls, self.parses = [], parses
        trt = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                trt.calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                class Config:
                    def set_memory_pool_limit(self, pool, size):
                        trt.calls.append(("workspace", size))

                    def set_flag(self, flag):
                        trt.calls.append(("set_flag", flag))

                return Config()

            def build_serialized_network(self, network, config):
                trt.calls.append(("build", network))
                return b"serialized engine"

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                trt.calls.append(("parse", len(data)))
                return trt.parses

            def get_error(self, i):
                return "Unsupported ONNX op: Foo"

        self.Builder, self.OnnxParser = Builder, OnnxParser


class FakeCudaDevice:
    """Stands in for torch.cuda.device on a machine without a GPU: records which device is current."""

    current: list = []

    def __init__(self, device):
        self.device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)

    def __enter__(self):
        FakeCudaDevice.current.append(self.device)

    def __exit__(self, *exc):
        FakeCudaDevice.current.pop()


def test_tensorrt_build_is_strongly_typed_atomic_and_on_the_right_gpu(onnx_file, tmp_path, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", FakeCudaDevice)
    seen = []
    real_create = fake.Builder.create_network
    monkeypatch.setattr(fake.Builder, "create_network",
                        lambda self, flags: seen.append(list(FakeCudaDevice.current)) or real_create(self, flags))
    target = tmp_path / "cache" / "tiny.engine"
    engine = build_tensorrt_engine(onnx_file, target, "cuda:1", workspace_gb=1)
    assert engine == target and engine.read_bytes() == b"serialized engine"
    assert list(engine.parent.iterdir()) == [engine]  # atomic: no temp file left
    assert seen == [[torch.device("cuda", 1)]]  # built with the requested GPU current
    assert ("create_network", 1 << 5) in fake.calls and ("workspace", 1 << 30) in fake.calls
    assert not [c for c in fake.calls if c[0] == "set_flag"]  # precision comes from the graph
    fake.calls.clear()
    assert build_tensorrt_engine(onnx_file, target) == engine and fake.calls == []  # reused
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(parses=False))
    with pytest.raises(ConfigError, match="cannot parse .*Unsupported ONNX op: Foo"):
        build_tensorrt_engine(onnx_file, tmp_path / "other" / "x.engine")
    assert not (tmp_path / "other").exists() or list((tmp_path / "other").iterdir()) == []


def test_failed_export_leaves_no_file(tmp_path):
    class Broken(TinyProbModel):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Broken(), WINDOW, tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []


def test_dynamic_onnx_graph_is_refused(model, tmp_path):
    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, *WINDOW),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    with pytest.raises(ConfigError, match="fixed shapes"):
        OnnxEngine(path)


def test_geometry_from_shapes():
    assert geometry_from_shapes((4, 1, 16, 32, 32), (4, 7, 8, 16, 16), "m") == (4, (16, 32, 32), 2, 7)
    for bad_input, bad_output in [
        ((4, 1, 16, 32, 32), (4, 7, 8, 16, 32)),  # stride differs per axis
        ((4, 2, 16, 32, 32), (4, 7, 16, 32, 32)),  # two input channels
        ((-1, 1, 16, 32, 32), (-1, 7, 16, 32, 32)),  # TensorRT dynamic batch
        (("b", 1, 16, 32, 32), ("b", 7, 16, 32, 32)),  # ONNX symbolic batch
    ]:
        with pytest.raises(ConfigError):
            geometry_from_shapes(bad_input, bad_output, "m")


def test_missing_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="tools/export.py --format onnx"):
        OnnxEngine(tmp_path / "nope.onnx")


def test_tensorrt_without_gpu_or_package_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    for make in (lambda: TensorRTSession(tmp_path / "m.engine"),
                 lambda: build_tensorrt_engine(tmp_path / "m.onnx", tmp_path / "m.engine")):
        with pytest.raises(ConfigError) as error:
            make()
        message = str(error.value)
        assert "a CUDA GPU and the tensorrt package" in message.split("missing here:")[1]
        assert "czii-kit[gpu]" in message and "--engine onnx or torch" in message


def test_tensorrt_with_gpu_but_no_package_names_only_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ConfigError) as error:
        engines_module.require_tensorrt()
    assert "missing here: the tensorrt package)" in str(error.value)


def test_engine_kinds_and_device_resolution(model, monkeypatch):
    assert set(ENGINE_KINDS) == {"torch", "onnx", "onnx_fp16", "tensorrt"}
    assert check_engine_kind("onnx_fp16") == "onnx_fp16"
    with pytest.raises(ConfigError, match="torch, onnx, onnx_fp16, tensorrt"):
        check_engine_kind("openvino")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve_device("meta")


# ---------------------------------------------------------------- ensembling

def test_in_loop_ensemble_is_the_weighted_mean_of_the_members(model):
    torch.manual_seed(3)
    other = TinyProbModel()
    a, b = TorchEngine(model, WINDOW), TorchEngine(other, WINDOW)
    volume = np.random.default_rng(1).normal(size=(13, 27, 22)).astype(np.float32)
    flips = parse_tta("flips")
    alone_a = predict_volume(a, volume, tta=flips, batch_size=2)
    alone_b = predict_volume(b, volume, tta=parse_tta("none"), batch_size=2)
    both = predict_volume([a, b], volume, weights=[1, 3], tta=[flips, parse_tta("none")], batch_size=2)
    torch.testing.assert_close(both, (alone_a + 3 * alone_b) / 4, atol=1e-6, rtol=0)
    torch.testing.assert_close(predict_volume([a, a], volume, batch_size=2), predict_volume(a, volume, batch_size=2),
                               atol=1e-6, rtol=0)


def test_in_loop_ensemble_refuses_members_it_cannot_average(model):
    volume = np.zeros((8, 16, 16), np.float32)
    with pytest.raises(ConfigError, match="window differs"):
        predict_volume([TorchEngine(model, WINDOW), TorchEngine(model, (8, 16, 8))], volume)
    with pytest.raises(ConfigError, match="2 engines, 1 weights"):
        predict_volume([TorchEngine(model, WINDOW)] * 2, volume, weights=[1])
    with pytest.raises(ConfigError, match="positive"):
        predict_volume([TorchEngine(model, WINDOW)] * 2, volume, weights=[1, 0])


def test_weighted_mean_module_folds_an_ensemble_into_one_graph(model, tmp_path):
    torch.manual_seed(4)
    other = TinyProbModel()
    folded = WeightedMean([model, other], [1.0, 3.0]).eval()
    x = torch.randn(2, 1, *WINDOW)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), (model(x) + 3 * other(x)) / 4)
    path = export_onnx(folded, WINDOW, tmp_path / "ensemble.onnx", batch_size=2)
    assert parity(probability_graph(folded, WINDOW, 2), OnnxSession(path)) < 1e-5
    with pytest.raises(ConfigError, match="positive"):
        WeightedMean([model, other], [1.0, -1.0])


def test_check_compatible_names_checkpoints_and_field():
    meta = {"classes": ["a", "b"], "normalization": {"method": "robust_zscore", "clip": 6.0}, "stride": 2}
    check_compatible([meta, dict(meta, classes=("a", "b"))], ["one.pt", "two.pt"])
    for field, value in [("classes", ["b", "a"]), ("normalization", {"method": "zscore"}), ("stride", 1)]:
        with pytest.raises(ConfigError) as error:
            check_compatible([meta, meta, dict(meta, **{field: value})], ["one.pt", "two.pt", "three.pt"])
        message = str(error.value)
        assert "one.pt" in message and "three.pt" in message and f"{field} differs" in message
    with pytest.raises(ConfigError, match="a/fold0.pt and b/fold1.pt"):  # names default to meta["path"]
        check_compatible([dict(meta, path="a/fold0.pt"), dict(meta, path="b/fold1.pt", stride=1)])
    with pytest.raises(CheckpointError, match="member 1 lacks stride"):
        check_compatible([meta, {"classes": ["a", "b"], "normalization": {}}])


# ---------------------------------------------------------------- work queue

def test_map_over_devices_isolates_failures_and_uses_every_device():
    both_busy = threading.Barrier(2, timeout=10)
    threads = set()

    def work(item, device):
        assert device == "cpu"
        threads.add(threading.current_thread().name)
        if item < 2:
            both_busy.wait()  # only passes if two workers hold an item at the same time
        if item in (3, 7):
            raise ValueError(f"bad item {item}")
        return item * item

    results, failures = map_over_devices(list(range(10)), ["cpu", "cpu"], work, progress=False)
    assert results == {i: i * i for i in range(10) if i not in (3, 7)}
    assert list(results) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert failures == {3: "ValueError: bad item 3", 7: "ValueError: bad item 7"}
    assert len(threads) == 2


def test_one_device_works_in_the_calling_thread_and_still_isolates_failures():
    threads = set()

    def work(item, device):
        threads.add(threading.current_thread())
        if item == 1:
            raise ValueError("bad item 1")
        return item + 10

    results, failures = map_over_devices([0, 1, 2], ["cpu"], work, progress=False)
    assert results == {0: 10, 2: 12} and failures == {1: "ValueError: bad item 1"}
    assert threads == {threading.current_thread()}  # no second thread: torch on CPU ran slower in one


def test_map_over_devices_rejects_no_devices_and_duplicates():
    with pytest.raises(ConfigError, match="at least one device"):
        map_over_devices([1], [], lambda item, device: item)
    with pytest.raises(ConfigError, match="unique"):
        map_over_devices([1, 1], ["cpu"], lambda item, device: item)
