"""The two kinds of ensemble member, registered in one place: how a checkpoint of each kind is
recognised, loaded on an engine, exported as a graph, and turned into one source of raw candidates.

* ``unet``: 3D probability models (U-Nets with any encoder, the residual U-Net). All members run
  inside one sliding-window loop and are averaged in probability space (``predict_volume``), then
  peaks are found on the device the probabilities live on.
* ``yolo``: 2D YOLO slice detectors. Each member turns z-slices into 3D points; several members
  are fused per particle (confidence-weighted DBSCAN, equal weights by default).

The kind name is also the name of the source it produces (``fusion.weights`` keys, report rows).
A checkpoint's kind comes from ``model.name``: "yolo" for the slice detector, any 3D model otherwise.
"""
from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from czii_kit.checkpoints import load_checkpoint, probability_model
from czii_kit.models import ProbabilityModel
from czii_kit.data.io import Tomogram
from czii_kit.data.normalize import normalize_from_config
from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.infer.engines import GraphEngine, TorchEngine, check_engine_kind, resolve_device, run_fixed_batch
from czii_kit.infer.ensemble import WeightedMean, check_compatible
from czii_kit.infer.export import (EngineFiles, GraphSpec, cached_export, check_built_engine, export_graph, open_graph,
                                   probability_graph)
from czii_kit.infer.sliding_window import predict_volume
from czii_kit.infer.tta import Transform, parse_tta
from czii_kit.config import infer_window, particle_set
from czii_kit.particles import VOXEL_SPACING
from czii_kit.post.fusion import fuse
from czii_kit.post.peaks import find_peaks
from czii_kit.utils.backend import from_torch
from czii_kit.utils.checkpoint_files import find_checkpoints
from czii_kit.utils.registry import Registry
from czii_kit.utils.timing import StageClock
from czii_kit.yolo import detector

Passes = Mapping[int, Sequence[Transform]]  # member index -> TTA transforms (a time budget's plan)


@dataclass
class Member:
    """One loaded ensemble member: what runs (an Engine, or a YOLO runner), its weight and its checkpoint."""

    runner: Any
    weight: float = 1.0
    name: str = ""
    ckpt: dict = field(default_factory=dict)  # a checkpoint, or the metadata training validation provides


def member_name(ckpt: Mapping) -> str:
    path = Path(ckpt.get("path", "member"))
    return f"{path.parent.name}/{path.stem}"


def check_spacing(ckpt: Mapping, spacing: float, where: str) -> None:
    """Models learn particle sizes in voxels: a tomogram must have the voxel size the model was trained at."""
    trained = float(ckpt.get("voxel_spacing", VOXEL_SPACING))
    if not math.isclose(trained, spacing, rel_tol=1e-3):
        raise ConfigError(
            f"{member_name(ckpt)} was trained on {trained:.4f} Å voxels, but {where} has {spacing:.4f} Å voxels; "
            f"set data.level to the level the model was trained on (--set data.level=N)")


def check_tomogram(ckpt: Mapping, tomogram: Tomogram) -> None:
    check_spacing(ckpt, tomogram.spacing, f"run {tomogram.run} ({tomogram.recon}, level {tomogram.level})")


def graph_name(kind: MemberKind, ckpts: Sequence[Mapping], cfg: Mapping, fp16: bool,
               weights: Sequence[float] | None = None) -> str:
    """Experiment folder + ONNX stem (checkpoint, window or image size, batch, precision): what an engine is of."""
    return f"{Path(ckpts[0]['path']).parent.name}-{kind.onnx_path(ckpts, cfg, fp16, weights).stem}"


def graph_session(kind: MemberKind, ckpts: Sequence[Mapping], cfg: Mapping, engine: str, device,
                  files: EngineFiles, weights: Sequence[float] | None = None):
    """The ONNX Runtime / TensorRT session of a kind's graph. ONNX: the file tools/export.py packed next to the
    checkpoint when there is one, else one exported into the cache (never next to the checkpoint). TensorRT: a
    prebuilt engine whose key matches, else one built into the cache and compared with torch fp32 once
    (``check_built_engine``: beyond the fp16 tolerance it is refused, and prediction uses torch)."""
    def onnx_for(fp16: bool) -> Path:
        return cached_export([c["path"] for c in ckpts], kind.onnx_path(ckpts, cfg, fp16, weights), files.cache_dir,
                             lambda path: export_graph(kind.graph(ckpts, cfg, weights), path, fp16))

    if engine != "tensorrt":
        return open_graph(engine, onnx_for, device)
    path = files.engine_path(graph_name(kind, ckpts, cfg, True, weights), [c["path"] for c in ckpts],
                             resolve_device(device))
    fresh = not path.is_file()  # built now, here: compared with torch before any run uses it
    session = open_graph(engine, onnx_for, device, lambda: path)
    if fresh:
        check_built_engine(kind.graph(ckpts, cfg, weights), session, device, path)
    return session


def device_sync(device):
    """What a StageClock calls before a reading: wait for the GPU so a stage's time is its own."""
    if device is not None and device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


class MemberKind(ABC):
    """Everything the kit does differently for one kind of checkpoint."""

    name: str
    takes_passes: bool = False  # runs TTA passes a time budget may thin out (``Passes``)
    requires: tuple[str, ...] = ()  # distributions its inference imports beyond the kit's own (the Kaggle pack)

    @abstractmethod
    def matches(self, ckpt: Mapping) -> bool: ...

    def check(self, ckpts: Sequence[Mapping]) -> None:
        """Members of this kind that cannot be used together raise here, before any inference."""

    @abstractmethod
    def onnx_path(self, ckpts: Sequence[Mapping], cfg: Mapping, fp16: bool,
                  weights: Sequence[float] | None = None) -> Path:
        """Where tools/export.py writes the graph of ``ckpts`` (one checkpoint, or a weighted folded ensemble)."""

    @abstractmethod
    def graph(self, ckpts: Sequence[Mapping], cfg: Mapping, weights: Sequence[float] | None = None) -> GraphSpec:
        """The torch module a graph of ``ckpts`` is exported from, at its fixed input shape."""

    @abstractmethod
    def load(self, ckpts: Sequence[dict], weights: Sequence[float], cfg: Mapping, engine: str, device,
             files: EngineFiles) -> list[Member]: ...

    @abstractmethod
    def member(self, model: torch.nn.Module, ckpt: Mapping, device) -> Member:
        """A member running an in-memory ``model`` (training validation); ``ckpt``: the checkpoint fields it
        will be saved with (config, normalization, stride, voxel size, ...)."""

    @abstractmethod
    def candidates(self, members: Sequence[Member], tomogram: Tomogram, cfg: Mapping, floor: float,
                   passes: Passes | None = None, timings: dict | None = None) -> pd.DataFrame:
        """Raw candidates (score >= floor, before any post-processing) of this kind's members on a tomogram;
        ``timings`` (stage -> seconds) is filled in when given."""


KINDS: Registry = Registry("member kind")


class VolumeKind(MemberKind):
    name = "unet"
    takes_passes = True

    def matches(self, ckpt: Mapping) -> bool:
        return ckpt.get("model", {}).get("name") != "yolo"

    def check(self, ckpts: Sequence[Mapping]) -> None:
        check_compatible(ckpts)

    def onnx_path(self, ckpts, cfg, fp16: bool, weights=None) -> Path:
        window = "x".join(map(str, infer_window(cfg)))
        suffix = f"_{window}_b{cfg['infer']['batch_size']}{'_fp16' if fp16 else ''}.onnx"
        first = Path(ckpts[0]["path"])
        if len(ckpts) == 1:
            return first.with_name(first.stem + suffix)
        return first.with_name(f"ensemble-{ensemble_key(ckpts, weights)}{suffix}")

    def graph(self, ckpts, cfg, weights=None) -> GraphSpec:
        module = probability_model(ckpts[0]) if len(ckpts) == 1 else WeightedMean(
            [probability_model(c) for c in ckpts], weights or [1.0] * len(ckpts))
        return probability_graph(module, infer_window(cfg), int(cfg["infer"]["batch_size"]))

    def load(self, ckpts, weights, cfg, engine, device, files) -> list[Member]:
        check_engine_kind(engine)
        window = infer_window(cfg)
        if engine == "torch":
            return [Member(TorchEngine(probability_model(c), window, device=device), w, member_name(c), c)
                    for c, w in zip(ckpts, weights)]
        if cfg["infer"]["fold_ensemble"] and len(ckpts) > 1:
            session = graph_session(self, ckpts, cfg, engine, device, files, weights)
            return [Member(GraphEngine(session, name=engine), 1.0, f"ensemble of {len(ckpts)}", ckpts[0])]
        return [Member(GraphEngine(graph_session(self, [c], cfg, engine, device, files), name=engine), w,
                       member_name(c), c) for c, w in zip(ckpts, weights)]

    def member(self, model, ckpt, device) -> Member:
        engine = TorchEngine(ProbabilityModel(model, ckpt["activation"]), infer_window(ckpt["config"]), device=device)
        return Member(engine, 1.0, member_name(ckpt), ckpt)

    def candidates(self, members, tomogram, cfg, floor, passes=None, timings=None) -> pd.DataFrame:
        clock = StageClock(timings, device_sync(members[0].runner.device))
        for m in members:
            check_tomogram(m.ckpt, tomogram)
        meta = members[0].ckpt
        volume = normalize_from_config(tomogram.volume, meta["normalization"], name=f"run {tomogram.run}")
        clock.lap("normalize")
        if passes is None:
            tta = parse_tta(cfg["infer"]["tta"])
            passes = {i: tta for i in range(len(members))}
        active = [i for i in passes if passes[i]]
        prob = predict_volume([members[i].runner for i in active], volume,
                              weights=[members[i].weight for i in active], tta=[passes[i] for i in active],
                              overlap=cfg["infer"]["overlap"], batch_size=cfg["infer"]["batch_size"],
                              blend=cfg["infer"]["blend"])
        clock.lap("windows")
        particles = particle_set(cfg)
        peaks = find_peaks(from_torch(prob), particles.names, dict.fromkeys(particles.names, floor),
                           kernel_frac=cfg["peaks"]["kernel_frac"], stride=members[0].runner.stride,
                           experiment=tomogram.run, topk=cfg["peaks"]["topk"], spacing=tomogram.spacing,
                           particles=particles)
        clock.lap("peaks")
        return peaks


def ensemble_key(ckpts: Sequence[Mapping], weights: Sequence[float] | None = None) -> str:
    """Short stable id of a folded ensemble: its members' file names and weights."""
    weights = weights or [1.0] * len(ckpts)
    text = ";".join(f"{member_name(c)}:{float(w)}" for c, w in zip(ckpts, weights))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class YoloKind(MemberKind):
    name = "yolo"
    requires = ("ultralytics",)

    def matches(self, ckpt: Mapping) -> bool:
        return ckpt.get("model", {}).get("name") == "yolo"

    def onnx_path(self, ckpts, cfg, fp16: bool, weights=None) -> Path:
        (ckpt,) = ckpts
        imgsz, batch = detector.graph_geometry(ckpt)
        path = Path(ckpt["path"])
        return path.with_name(f"{path.stem}_yolo_{imgsz}_b{batch}{'_fp16' if fp16 else ''}.onnx")

    def graph(self, ckpts, cfg, weights=None) -> GraphSpec:
        (ckpt,) = ckpts
        imgsz, batch = detector.graph_geometry(ckpt)
        module = detector.RawDetections(detector.build_detection_model(ckpt))
        return GraphSpec(module.eval(), (batch, 3, imgsz, imgsz), "images", "raw_detections",
                         sample=lambda g: detector.random_images(ckpt, g), difference=detector.raw_difference)

    def load(self, ckpts, weights, cfg, engine, device, files) -> list[Member]:
        check_engine_kind(engine)
        device = resolve_device(device)
        members = []
        for ckpt, weight in zip(ckpts, weights):
            if engine == "torch":
                runner = detector.torch_runner(detector.build_detection_model(ckpt), device)
            else:
                runner = GraphRunner(graph_session(self, [ckpt], cfg, engine, device, files),
                                      detector.graph_geometry(ckpt)[0])
            members.append(Member(runner, weight, member_name(ckpt), ckpt))
        return members

    def member(self, model, ckpt, device) -> Member:
        return Member(detector.torch_runner(model, resolve_device(device)), 1.0, member_name(ckpt), ckpt)

    def candidates(self, members, tomogram, cfg, floor, passes=None, timings=None) -> pd.DataFrame:
        clock = StageClock(timings)
        for m in members:
            check_tomogram(m.ckpt, tomogram)
        particles = particle_set(cfg)
        points = {f"yolo{i}": detector.yolo_points(m.runner, tomogram.volume, tomogram.run, m.ckpt["config"],
                                                  floor=floor, spacing=tomogram.spacing, particles=particles)
                  for i, m in enumerate(members)}
        if len(points) > 1:
            points = {"yolo": fuse(points, method="dbscan", eps_frac=float(cfg["fusion"]["eps_frac"]),
                                   weights={f"yolo{i}": m.weight for i, m in enumerate(members)}, min_votes=0.0,
                                   particles=particles)}
        clock.lap("slices")
        return next(iter(points.values()))


for _kind in (VolumeKind(), YoloKind()):
    KINDS.register(_kind.name)(_kind)


class GraphRunner:
    """An ONNX or TensorRT session of a fixed-batch YOLO graph as a runner (batches split and zero-padded)."""

    def __init__(self, session, imgsz: int) -> None:
        shape = tuple(session.input_shape)
        if len(shape) != 4 or not isinstance(shape[0], int) or shape[0] < 1 or shape[1:] != (3, imgsz, imgsz):
            raise ConfigError(f"{session.path}: expected a fixed (B, 3, {imgsz}, {imgsz}) input, got {shape}; "
                              "re-export it with tools/export.py")
        self.session, self.batch_size = session, shape[0]

    def __call__(self, batch):
        return run_fixed_batch(batch, self.batch_size, self.session)


def kind_of(ckpt: Mapping) -> MemberKind:
    """The member kind of a checkpoint (exactly one matches)."""
    for kind in KINDS.values():
        if kind.matches(ckpt):
            return kind
    raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: no member kind recognises model "
                          f"{ckpt.get('model', {}).get('name')!r}")


def load_checkpoints(weights: Sequence[str | Path], folds: Sequence[int] | None = None) -> list[dict]:
    """Load every checkpoint of ``weights``; all must predict the same classes in the same order."""
    ckpts = [load_checkpoint(p) for w in weights for p in find_checkpoints(w, folds)]
    for c in ckpts[1:]:
        if list(c["classes"]) != list(ckpts[0]["classes"]):
            raise CheckpointError(f"{c['path']} predicts classes {list(c['classes'])}, but {ckpts[0]['path']} predicts "
                                  f"{list(ckpts[0]['classes'])}; ensemble only checkpoints of one class set")
    return ckpts


def group_by_kind(ckpts: Sequence[dict], weights: Sequence[float] | None = None) -> dict[str, list[tuple[dict, float]]]:
    """{kind name: [(checkpoint, weight), ...]} in registry order, checkpoints in the order given; members of one
    kind that cannot be used together (``MemberKind.check``) and bad weights are refused here."""
    weights = [1.0] * len(ckpts) if weights is None else list(weights)
    if len(weights) != len(ckpts):
        raise ConfigError(f"got {len(weights)} member weights for {len(ckpts)} checkpoints; give one per checkpoint")
    for w in weights:
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise ConfigError(f"member weights must be positive numbers, got {w!r}")
    groups: dict[str, list[tuple[dict, float]]] = {name: [] for name in KINDS}
    for ckpt, w in zip(ckpts, weights):
        groups[kind_of(ckpt).name].append((ckpt, float(w)))
    groups = {name: group for name, group in groups.items() if group}
    for name, group in groups.items():
        KINDS[name].check([c for c, _ in group])
    return groups
