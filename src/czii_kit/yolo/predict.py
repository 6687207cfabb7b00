"""YOLO inference on a tomogram: z-slices -> 2D boxes (batched, confidence floor) -> 3D points.

The checkpoint holds the architecture (ultralytics' model yaml as a dict) and a float state
dict, so loading needs no pickled ultralytics objects and no download. Slices are letterboxed
like ultralytics does (long side resized to imgsz, centred grey padding), run through torch or
a fixed-shape ONNX / fp16 TensorRT graph of it (the same export and engine code as the U-Net),
then ultralytics' NMS; box centres go back to voxel coordinates and are linked across slices
by ``czii_kit.yolo.cluster``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.yolo.cluster import SLICE_COLUMNS, slices_to_points
from czii_kit.yolo.slices import normalize_to_uint8, pixel_to_voxel

PAD_VALUE = 114 / 255  # ultralytics' letterbox grey
Runner = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) in [0, 1] -> raw (B, 4 + C, anchors)


def is_yolo_checkpoint(ckpt: Mapping) -> bool:
    return ckpt.get("model", {}).get("name") == "yolo"


def build_detection_model(ckpt: Mapping) -> torch.nn.Module:
    """ultralytics DetectionModel from the checkpoint's yaml dict and weights, fused, in eval mode."""
    from czii_kit.yolo.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    args = ckpt["model"]["args"]
    model = DetectionModel(cfg=dict(args["yaml"]), ch=3, nc=int(args["nc"]), verbose=False)
    try:
        model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt.get('path', '?')}: YOLO weights do not fit its model yaml ({e}); "
                              "re-train it with this czii-kit") from e
    model.names = dict(enumerate(ckpt["classes"]))
    return model.float().fuse(verbose=False).eval()


class RawDetections(torch.nn.Module):
    """A DetectionModel reduced to its (B, 4 + C, anchors) tensor (in eval mode ultralytics also returns features)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        return out[0] if isinstance(out, (list, tuple)) else out


def torch_runner(model: torch.nn.Module, device: torch.device) -> Runner:
    model = RawDetections(model).to(device).eval()

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(device))

    return run


def graph_geometry(ckpt: Mapping) -> tuple[int, int]:
    """(imgsz, batch) of the checkpoint's fixed-shape graphs: its config's yolo.imgsz and yolo.infer_batch."""
    settings = yolo_settings(ckpt["config"])
    return int(settings["imgsz"]), int(settings["infer_batch"])


def yolo_onnx_path(ckpt_path: str | Path, imgsz: int, batch_size: int, fp16: bool = False) -> Path:
    """Where tools/export.py writes a YOLO checkpoint's ONNX and where predict and the Kaggle pack look for it."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(f"{ckpt_path.stem}_yolo_{imgsz}_b{batch_size}{'_fp16' if fp16 else ''}.onnx")


def export_onnx(ckpt: Mapping, path: str | Path, fp16: bool = False, opset: int = 17) -> Path:
    """Fixed-shape (infer_batch, 3, imgsz, imgsz) -> (infer_batch, 4 + C, anchors) ONNX file, NMS left outside."""
    from czii_kit.infer.export import export_graph

    imgsz, batch = graph_geometry(ckpt)
    example = torch.zeros((batch, 3, imgsz, imgsz))
    return export_graph(RawDetections(build_detection_model(ckpt)), example, path, "images", "raw_detections",
                        opset, fp16)


def onnx_for(ckpt: Mapping, cache_dir: str | Path, fp16: bool = False) -> Path:
    """The exported ONNX next to the checkpoint, else one exported into ``cache_dir``."""
    from czii_kit.infer.export import cached_export

    imgsz, batch = graph_geometry(ckpt)
    return cached_export(ckpt["path"], yolo_onnx_path(ckpt["path"], imgsz, batch, fp16), cache_dir,
                         lambda path: export_onnx(ckpt, path, fp16))


def graph_runner(session, imgsz: int) -> Runner:
    """An ONNX or TensorRT session of a fixed-batch YOLO graph as a runner (batches split and zero-padded)."""
    from czii_kit.infer.engines import run_fixed_batch

    shape = tuple(session.input_shape)
    if len(shape) != 4 or not isinstance(shape[0], int) or shape[0] < 1 or shape[1:] != (3, imgsz, imgsz):
        raise ConfigError(f"{session.path}: expected a fixed (B, 3, {imgsz}, {imgsz}) input, got {shape}; "
                          "re-export it with tools/export.py")
    return lambda batch: run_fixed_batch(batch, shape[0], session)


def make_runner(ckpt: Mapping, engine: str = "torch", device: str | torch.device = "auto",
                cache_dir: str | Path = "build/engines") -> Runner:
    """A runner for a YOLO checkpoint: torch, or the graph an engine kind runs (see infer.export.open_graph)."""
    from czii_kit.infer.engines import resolve_device
    from czii_kit.infer.export import open_graph

    device = resolve_device(device)
    if engine == "torch":
        return torch_runner(build_detection_model(ckpt), device)
    session = open_graph(engine, lambda fp16: onnx_for(ckpt, cache_dir, fp16), cache_dir, device)
    return graph_runner(session, graph_geometry(ckpt)[0])


def parity(ckpt: Mapping, candidate: Runner, device: str | torch.device = "cpu", n_batches: int = 2,
           seed: int = 0) -> float:
    """Max difference to torch fp32 over random images, on every anchor: class scores as they are, box
    centres and sides (pixels) relative to the box's longer side, which is what IoU and NMS see.

    Relative, because an untrained or background anchor may regress a box several images wide,
    where fp16's ~0.1% rounding shows as whole pixels that change no overlap.
    """
    from czii_kit.infer.engines import resolve_device

    imgsz, batch = graph_geometry(ckpt)
    reference = torch_runner(build_detection_model(ckpt), resolve_device(device))
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n_batches):
        images = torch.rand((batch, 3, imgsz, imgsz), generator=generator)
        expected, actual = reference(images).float().cpu(), candidate(images).float().cpu()
        if expected.shape != actual.shape:
            raise ConfigError(f"graph output {tuple(actual.shape)} differs from torch's {tuple(expected.shape)}; "
                              "re-export it with tools/export.py --force")
        size = expected[:, 2:4].amax(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, anchors): xywh boxes
        boxes = ((expected[:, :4] - actual[:, :4]).abs() / size).amax()
        worst = max(worst, float(boxes), float((expected[:, 4:] - actual[:, 4:]).abs().amax()))
    return worst


def letterbox(images: np.ndarray, imgsz: int) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """(B, H, W) uint8 -> (B, 3, imgsz, imgsz) float in [0, 1], with the scale and (left, top) padding."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)[:, None]
    height, width = images.shape[1:]
    scale = imgsz / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    if (new_h, new_w) != (height, width):
        batch = F.interpolate(batch, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (imgsz - new_h) // 2, (imgsz - new_w) // 2
    batch = F.pad(batch, (left, imgsz - new_w - left, top, imgsz - new_h - top), value=PAD_VALUE)
    return batch.expand(-1, 3, -1, -1).contiguous(), scale, (left, top)


def _batches(depth: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, depth, size):
        yield np.arange(start, min(start + size, depth))


def detect_slices(runner: Runner, volume_u8: np.ndarray, imgsz: int, conf: float = 0.05, iou: float = 0.5,
                  batch_size: int = 16, max_det: int = 300, progress: bool = False) -> pd.DataFrame:
    """Boxes of every z-slice: z (slice), y, x (voxel centre), conf, class_id, plus box width/height (voxels)."""
    from ultralytics.utils.nms import non_max_suppression

    rows = []
    for zs in tqdm(list(_batches(volume_u8.shape[0], batch_size)), desc="yolo slices", disable=not progress,
                   leave=False):
        batch, scale, (left, top) = letterbox(volume_u8[zs], imgsz)
        for z, boxes in zip(zs, non_max_suppression(runner(batch), conf, iou, max_det=max_det)):
            b = boxes.float().cpu().numpy()
            x = pixel_to_voxel(((b[:, 0] + b[:, 2]) / 2 - left) / scale)
            y = pixel_to_voxel(((b[:, 1] + b[:, 3]) / 2 - top) / scale)
            rows.append(pd.DataFrame({"z": float(z), "y": y, "x": x, "conf": b[:, 4], "class_id": b[:, 5].astype(int),
                                      "width": (b[:, 2] - b[:, 0]) / scale, "height": (b[:, 3] - b[:, 1]) / scale}))
    columns = [*SLICE_COLUMNS, "width", "height"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def yolo_settings(cfg: Mapping) -> dict:
    """The inference part of a config's ``yolo`` section, checked."""
    section = cfg.get("yolo")
    if not isinstance(section, Mapping):
        raise ConfigError("config has no 'yolo' section; use a YOLO config such as configs/yolo_cpu_quick.yaml")
    return {k: section[k] for k in ("imgsz", "conf", "iou", "max_det", "infer_batch", "cluster")}


def yolo_points(runner: Runner, volume: np.ndarray, experiment: str, cfg: Mapping, floor: float = 0.0,
                progress: bool = False) -> pd.DataFrame:
    """Raw tomogram -> 3D detections (experiment, particle_type, x, y, z Å, score) with score >= floor."""
    settings = yolo_settings(cfg)
    slices = detect_slices(runner, normalize_to_uint8(volume), settings["imgsz"], conf=settings["conf"],
                           iou=settings["iou"], batch_size=settings["infer_batch"], max_det=settings["max_det"],
                           progress=progress)
    points = slices_to_points(slices, experiment, settings["cluster"])
    return points[points["score"] >= floor].reset_index(drop=True)


def ensemble_points(runners: list[Runner], cfgs: list[Mapping], volume: np.ndarray, experiment: str,
                    floor: float = 0.0) -> pd.DataFrame:
    """3D points of several YOLO models (e.g. the fold models) on one tomogram, fused per particle.

    Equal weights and the ``dbscan`` fusion rule: a particle's score is the mean over models, a model
    that misses it counting 0, so agreement ranks higher than one model's guess.
    """
    from czii_kit.post.fusion import fuse

    points = {f"yolo{i}": yolo_points(r, volume, experiment, c, floor) for i, (r, c) in enumerate(zip(runners, cfgs))}
    if len(points) == 1:
        return next(iter(points.values()))
    eps = float(cfgs[0].get("fusion", {}).get("eps_frac", 0.5))
    return fuse(points, method="dbscan", eps_frac=eps, weights=dict.fromkeys(points, 1.0))
