"""YOLO branch: slice labels, 3D clustering of slice boxes, coordinate round trip, offline training and ONNX."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from czii_kit.config import load_config
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, VOXEL_SPACING, particle
from czii_kit.yolo.cluster import slices_to_points
from czii_kit.yolo.slices import cross_section_diameter, slice_boxes, write_dataset

APO, RIBO = CLASS_NAMES.index("apo-ferritin"), CLASS_NAMES.index("ribosome")
BASE = load_config("yolo_cpu_quick")  # yolo.cluster defaults live in configs/base.yaml only


def cluster(**changes) -> dict:
    return {**BASE["yolo"]["cluster"], **changes}


def yolo_kind():
    from czii_kit.infer.kinds import KINDS

    return KINDS["yolo"]


def tiny_yolo_config(epochs: int = 1) -> dict:
    """cpu_quick plus the proposed `yolo:` section, shrunk for tests."""
    from czii_kit.config import load_config

    cfg = load_config("cpu_quick")
    cfg["yolo"] = {"model": "yolov8n.yaml", "imgsz": 64, "epochs": epochs, "batch": 8, "workers": 0, "every": 6,
                   "min_box": 2.0, "args": {}, "conf": 0.01, "iou": 0.5, "max_det": 50, "infer_batch": 8,
                   "cluster": {"link_frac": 0.5, "max_gap": 1, "min_size": 2, "topk": 3}}
    return cfg


# --------------------------------------------------------------------------- slice labels
def test_boxes_only_on_slices_within_radius_with_cross_section_size():
    r = particle("apo-ferritin").radius / VOXEL_SPACING
    centre = np.array([[10.0, 20.0, 30.0]])  # z, y, x voxels
    for z in range(0, 21):
        boxes = slice_boxes(centre, np.array([APO]), z, (64, 80))
        dz = z - 10.0
        if abs(dz) >= r:
            assert len(boxes) == 0, z
            continue
        assert len(boxes) == 1, z
        side = 2 * np.sqrt(r**2 - dz**2)
        cls, xc, yc, w, h = boxes[0]
        assert cls == APO
        assert xc == pytest.approx(30.5 / 80) and yc == pytest.approx(20.5 / 64)  # voxel i = pixel centre i + 0.5
        assert w == pytest.approx(side / 80) and h == pytest.approx(side / 64)


def test_cross_section_diameter_values():
    assert cross_section_diameter(5.0, 0.0) == pytest.approx(10.0)
    assert cross_section_diameter(5.0, 3.0) == pytest.approx(8.0)  # 2 * sqrt(25 - 9)
    assert cross_section_diameter(5.0, 6.0) == 0.0


def test_boxes_clipped_at_border_and_class_ids():
    r_ribo = particle("ribosome").radius / VOXEL_SPACING
    points = np.array([[5.0, 1.0, 2.0], [5.0, 30.0, 30.0]])
    boxes = slice_boxes(points, np.array([APO, RIBO]), 5, (64, 64))
    r_apo = particle("apo-ferritin").radius / VOXEL_SPACING
    assert boxes[:, 0].tolist() == [APO, RIBO]
    x0, x1 = 0.0, 2.5 + r_apo  # left edge clipped at the image border
    assert boxes[0, 1] == pytest.approx((x0 + x1) / 2 / 64) and boxes[0, 3] == pytest.approx((x1 - x0) / 64)
    assert boxes[1, 3] == pytest.approx(2 * r_ribo / 64)
    assert np.all((boxes[:, 1:] >= 0) & (boxes[:, 1:] <= 1))


def test_min_diameter_drops_poles():
    r = particle("apo-ferritin").radius / VOXEL_SPACING
    z_pole = int(np.floor(10 + r - 1e-9))  # last slice cut, a thin disc
    pole = cross_section_diameter(r, z_pole - 10)
    assert pole < 2 * r
    centre, label = np.array([[10.0, 20.0, 20.0]]), np.array([APO])
    assert len(slice_boxes(centre, label, z_pole, (64, 64), min_diameter=pole - 0.1)) == 1
    assert len(slice_boxes(centre, label, z_pole, (64, 64), min_diameter=pole + 0.1)) == 0
    assert len(slice_boxes(centre, label, 10, (64, 64), min_diameter=pole + 0.1)) == 1  # the equator stays


def test_dataset_labels_match_picks_and_split(synthetic_root, tmp_path):
    from czii_kit.data import io
    from czii_kit.viz import picks_in_slice

    data_yaml, train_runs, val_runs = write_dataset(synthetic_root, tmp_path / "ds", 1, BASE["data"], every=5, progress=False)
    doc = yaml.safe_load(data_yaml.read_text())
    assert doc["names"] == dict(enumerate(CLASS_NAMES)) and doc["val"] == "images/val"
    runs = sorted(io.read_all_picks(synthetic_root)["experiment"].unique())
    assert val_runs == [runs[1]] and sorted(train_runs) == [r for r in runs if r != runs[1]]
    picks = io.read_picks(synthetic_root, val_runs[0])
    for z in (0, 10, 25):
        lines = (tmp_path / "ds" / "labels" / "val" / f"{val_runs[0]}_z{z:04d}.txt").read_text().splitlines()
        expected = picks_in_slice(picks, z)  # independent geometry (viz)
        assert sorted(int(line.split()[0]) for line in lines) == sorted(
            CLASS_NAMES.index(n) for n in expected["particle_type"])
    assert not (tmp_path / "ds" / "labels" / "val" / f"{val_runs[0]}_z0001.txt").exists()  # every=5
    with pytest.raises(DataError, match="already holds"):
        write_dataset(synthetic_root, tmp_path / "ds", 1, BASE["data"], progress=False)


# --------------------------------------------------------------------------- 3D clustering
def _slices(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["z", "y", "x", "conf", "class_id"])


def test_close_in_xy_separated_in_z_gives_two_particles():
    rows = [(z, 50.0, 50.0, 0.9, RIBO) for z in range(10, 15)] + [(z, 50.0, 51.0, 0.8, RIBO) for z in range(17, 22)]
    points = slices_to_points(_slices(rows), "run", cluster(min_size=3))
    assert len(points) == 2
    assert sorted(points["z"] / VOXEL_SPACING) == pytest.approx([12.0, 19.0])
    merged = slices_to_points(_slices(rows), "run", cluster(min_size=3, max_gap=3))  # the 2-slice hole is bridged
    assert len(merged) == 1


def test_singletons_dropped_and_weighted_centre_exact():
    rows = [(10, 20.0, 30.0, 0.2, APO), (11, 21.0, 30.0, 0.4, APO), (12, 22.0, 31.5, 0.6, APO),
            (40, 5.0, 5.0, 0.99, APO),  # a lone box: noise
            (11, 21.0, 30.0, 0.5, RIBO)]  # same place, other class: never linked with the apo boxes
    points = slices_to_points(_slices(rows), "TS_1", cluster(min_size=2, topk=2))
    assert points["particle_type"].tolist() == ["apo-ferritin"]
    p = points.iloc[0]
    w = np.array([0.2, 0.4, 0.6])
    assert p["z"] == pytest.approx(np.dot(w, [10, 11, 12]) / w.sum() * VOXEL_SPACING)
    assert p["y"] == pytest.approx(np.dot(w, [20, 21, 22]) / w.sum() * VOXEL_SPACING)
    assert p["x"] == pytest.approx(np.dot(w, [30, 30, 31.5]) / w.sum() * VOXEL_SPACING)
    assert p["score"] == pytest.approx(0.5)  # mean of the top 2 confidences
    assert p["experiment"] == "TS_1"


def test_link_distance_is_class_radius_fraction():
    r = particle("apo-ferritin").radius / VOXEL_SPACING
    near = [(10, 20.0, 20.0, 0.5, APO), (11, 20.0, 20.0 + 0.4 * r, 0.5, APO)]
    far = [(10, 20.0, 20.0, 0.5, APO), (11, 20.0, 20.0 + 0.6 * r, 0.5, APO)]
    assert len(slices_to_points(_slices(near), "r", cluster(min_size=1, link_frac=0.5))) == 1
    assert len(slices_to_points(_slices(far), "r", cluster(min_size=1, link_frac=0.5))) == 2
    with pytest.raises(ConfigError, match="unknown"):
        slices_to_points(_slices(near), "r", cluster(min_sise=1))


# --------------------------------------------------------------------------- image <-> voxel round trip
def test_detect_slices_maps_boxes_back_to_voxels():
    """A fake network that puts a box at a known input-pixel spot: the voxel centre must come back."""
    from czii_kit.yolo.detector import detect_slices

    height, width, imgsz = 90, 96, 64
    scale = imgsz / 96
    top = (imgsz - round(height * scale)) // 2  # letterbox padding on y
    y_vox, x_vox, side = 20.0, 30.0, 12.0

    def runner(batch: torch.Tensor) -> torch.Tensor:
        assert batch.shape[1:] == (3, imgsz, imgsz)
        out = torch.zeros(batch.shape[0], 4 + len(CLASS_NAMES), 1)
        out[:, 0, 0] = (x_vox + 0.5) * scale
        out[:, 1, 0] = (y_vox + 0.5) * scale + top
        out[:, 2, 0] = out[:, 3, 0] = side * scale
        out[:, 4 + RIBO, 0] = 0.7
        return out

    volume = np.zeros((3, height, width), dtype=np.uint8)
    found = detect_slices(runner, volume, imgsz, conf=0.1, iou=0.5, batch_size=2)
    assert found["z"].tolist() == [0, 1, 2]
    assert found["x"].to_numpy() == pytest.approx(x_vox, abs=1e-4)
    assert found["y"].to_numpy() == pytest.approx(y_vox, abs=1e-4)
    assert found["width"].to_numpy() == pytest.approx(side, abs=1e-4)
    assert (found["class_id"] == RIBO).all() and found["conf"].to_numpy() == pytest.approx(0.7)


# --------------------------------------------------------------------------- offline training + ONNX
GUARDED_SCRIPT = textwrap.dedent("""
    import json, socket, sys

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:200])
        raise OSError("network access attempted during an offline test")

    socket.socket.connect = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    import yaml
    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.infer.export import export_graph
    from czii_kit.infer.kinds import KINDS
    from czii_kit.train.yolo import train_yolo_fold

    root, out, cfg_path = sys.argv[1:4]
    cfg = yaml.safe_load(open(cfg_path))
    result = train_yolo_fold(cfg, 0, root, out, progress=False)
    ckpt = load_checkpoint(result["paths"].best)
    export_graph(KINDS["yolo"].graph([ckpt], cfg), out + "/fold0_yolo.onnx")
    print(json.dumps({"score": result["best"]["score"], "val_runs": result["val_runs"], "attempts": attempts}))
""")


def _files_under(path) -> list[str]:
    return sorted(str(p) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def trained_yolo(synthetic_root, tmp_path_factory):
    """One epoch of yolov8n at 64 px on every 6th slice, trained and exported in a subprocess with no network."""
    base = tmp_path_factory.mktemp("yolo")
    home, out, cfg_path = base / "home", base / "weights", base / "cfg.yaml"
    home.mkdir()
    cfg_path.write_text(yaml.safe_dump(tiny_yolo_config()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "XDG_", "MPLCONFIGDIR"))}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", TMPDIR=str(base / "tmp"))
    (base / "tmp").mkdir()
    proc = subprocess.run([sys.executable, "-c", GUARDED_SCRIPT, str(synthetic_root), str(out), str(cfg_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "home": home, "tmp": base / "tmp", "result": json.loads(proc.stdout.strip().splitlines()[-1]),
            "stderr": proc.stderr}


def test_offline_training_writes_only_chosen_dirs(trained_yolo):
    assert trained_yolo["result"]["attempts"] == []  # no connection tried, not even a swallowed one
    assert _files_under(trained_yolo["home"]) == []  # nothing in ~/.config, ~/.cache, ...
    assert _files_under(trained_yolo["tmp"]) == []
    out = trained_yolo["out"]
    assert (out / "fold0.pt").is_file() and (out / "fold0_log.csv").is_file()
    assert not list(out.rglob("*.pt.download")) and not (out / "yolov8n.pt").exists()
    assert np.isfinite(trained_yolo["result"]["score"]) and len(trained_yolo["result"]["val_runs"]) == 1
    assert "get_trial_id" not in trained_yolo["stderr"]  # ultralytics' Ray Tune callback is off (Ray is installed)


def test_checkpoint_reloads_with_weights_only_and_matches_onnx(trained_yolo):
    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.infer.engines import OnnxSession
    from czii_kit.infer.kinds import GraphRunner, kind_of
    from czii_kit.yolo.detector import build_detection_model, torch_runner

    ckpt = load_checkpoint(trained_yolo["out"] / "fold0.pt")  # torch.load(weights_only=True) inside
    assert kind_of(ckpt).name == "yolo" and ckpt["classes"] == list(CLASS_NAMES) and ckpt["fold"] == 0
    assert set(ckpt["thresholds"]) == set(CLASS_NAMES)
    session = OnnxSession(trained_yolo["out"] / "fold0_yolo.onnx")
    assert session.input_shape == (8, 3, 64, 64)  # fixed: yolo.infer_batch and yolo.imgsz
    batch = torch.rand(11, 3, 64, 64)  # one full graph batch and one padded one
    expected = torch_runner(build_detection_model(ckpt), torch.device("cpu"))(batch)
    got = GraphRunner(session, 64)(batch)
    assert got.shape == expected.shape == (11, 4 + len(CLASS_NAMES), expected.shape[2])
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    with pytest.raises(ConfigError, match=r"\(B, 3, 96, 96\).*re-export"):
        GraphRunner(session, 96)  # a graph exported at another image size


def test_fp16_graph_is_fp16_inside_float32_outside_and_close_to_torch(trained_yolo, tmp_path):
    import onnx

    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.infer.engines import OnnxSession
    from czii_kit.infer.export import FP16_TOLERANCE, FP32_TOLERANCE, export_graph, parity
    from czii_kit.infer.kinds import GraphRunner

    ckpt = load_checkpoint(trained_yolo["out"] / "fold0.pt")
    spec = yolo_kind().graph([ckpt], ckpt["config"])
    path = export_graph(spec, tmp_path / "half.onnx", fp16=True)
    graph = onnx.load(str(path)).graph
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert {t.data_type for t in graph.initializer if t.dims} == {float16}  # weights in fp16
    assert graph.input[0].type.tensor_type.elem_type == graph.output[0].type.tensor_type.elem_type == float32
    fp32 = parity(spec, GraphRunner(OnnxSession(trained_yolo["out"] / "fold0_yolo.onnx"), 64))
    fp16 = parity(spec, GraphRunner(OnnxSession(path), 64))
    assert fp32 < FP32_TOLERANCE and 0 < fp16 < FP16_TOLERANCE and fp16 > fp32  # fp16 rounding shows, within bounds


def test_runners_export_into_the_cache_and_never_next_to_the_checkpoint(trained_yolo, tmp_path, monkeypatch):
    import shutil

    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.infer.export import FP16_TOLERANCE, parity

    from czii_kit.infer.export import EngineFiles

    def make_runner(ckpt, engine, device, cache_dir="build/engines"):
        return yolo_kind().load([ckpt], [1.0], ckpt["config"], engine, device, EngineFiles(cache_dir))[0].runner

    weights, cache = tmp_path / "dataset", tmp_path / "cache"  # a read-only Kaggle dataset
    weights.mkdir()
    shutil.copy(trained_yolo["out"] / "fold0.pt", weights / "fold0.pt")
    weights.chmod(0o555)
    try:
        ckpt = load_checkpoint(weights / "fold0.pt")
        spec = yolo_kind().graph([ckpt], ckpt["config"])
        assert parity(spec, make_runner(ckpt, "onnx", "cpu", cache_dir=cache)) < 1e-4
        assert parity(spec, make_runner(ckpt, "onnx_fp16", "cpu", cache_dir=cache)) < FP16_TOLERANCE
        assert [p.name for p in weights.iterdir()] == ["fold0.pt"]
        cached = sorted(p.name[p.name.index("_") + 1:] for p in cache.iterdir())  # key_ prefix dropped
        assert cached == ["fold0_yolo_64_b8.onnx", "fold0_yolo_64_b8_fp16.onnx"]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(ConfigError, match="a CUDA GPU"):
            make_runner(ckpt, "tensorrt", "cpu", cache_dir=cache)
        assert len(list(cache.iterdir())) == 2  # refused before exporting anything
        with pytest.raises(ConfigError, match="expected one of torch, onnx, onnx_fp16, tensorrt"):
            make_runner(ckpt, "openvino", "cpu")
    finally:
        weights.chmod(0o755)


def test_yolo_model_must_be_a_yaml_definition(tmp_path, synthetic_root):
    from czii_kit.train.yolo import train_yolo_fold

    cfg = tiny_yolo_config()
    cfg["yolo"]["model"] = "yolov8n.pt"
    with pytest.raises(ConfigError, match="never downloaded"):
        train_yolo_fold(cfg, 0, synthetic_root, tmp_path / "w", progress=False)


def test_ensemble_of_identical_models_equals_one_model_and_halves_lone_points():
    from czii_kit.data.io import Tomogram
    from czii_kit.infer.kinds import Member

    def runner_at(x_pixel: float, conf: float):
        def run(batch: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(batch.shape[0], 4 + len(CLASS_NAMES), 1)
            out[:, 0, 0], out[:, 1, 0], out[:, 2:4, 0], out[:, 4 + RIBO, 0] = x_pixel, 20.5, 10.0, conf
            return out
        return run

    cfg = tiny_yolo_config()
    cfg["yolo"]["imgsz"] = 64
    volume = np.random.default_rng(0).normal(size=(6, 64, 64)).astype(np.float32)
    tomogram = Tomogram("TS", "test", "denoised", 0, volume, VOXEL_SPACING)

    def points(*runners):
        members = [Member(r, 1.0, f"m{i}", {"config": cfg}) for i, r in enumerate(runners)]
        return yolo_kind().candidates(members, tomogram, cfg, floor=0.0)

    one = points(runner_at(30.5, 0.8))
    same = points(runner_at(30.5, 0.8), runner_at(30.5, 0.8))
    assert len(one) == 1 and one["score"].iloc[0] == pytest.approx(0.8)
    pd.testing.assert_frame_equal(one, same[one.columns], check_exact=False)
    apart = points(runner_at(10.5, 0.8), runner_at(50.5, 0.6))
    assert sorted(apart["score"]) == pytest.approx([0.3, 0.4])  # each seen by one of two models
