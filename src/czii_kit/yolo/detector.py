"""The YOLO slice detector on a tomogram: z-slices -> 2D boxes (batched, confidence floor) -> 3D points.

The checkpoint holds the architecture (ultralytics' model yaml as a dict) and a float state
dict, so loading needs no pickled ultralytics objects and no download. Slices are letterboxed
like ultralytics does (long side resized to imgsz, centred grey padding) and handed to a
``Runner``: the torch model here, or a fixed-shape ONNX / TensorRT graph of it (built by
``czii_kit.infer.kinds``, with the same export and engine code as the 3D models). Then
ultralytics' NMS; box centres go back to voxel coordinates and are linked across slices by
``czii_kit.yolo.cluster``. Nothing here knows about engines.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from czii_kit.errors import CheckpointError, ConfigError
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet
from czii_kit.utils.progress import progress_bar
from czii_kit.yolo.cluster import SLICE_COLUMNS, slices_to_points
from czii_kit.yolo.slices import normalize_to_uint8, pixel_to_voxel

PAD_VALUE = 114 / 255  # ultralytics' letterbox grey
Runner = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) in [0, 1] -> raw (B, 4 + C, anchors)


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


def random_images(ckpt: Mapping, generator: torch.Generator) -> torch.Tensor:
    """A batch of random images in [0, 1] at the graph's fixed shape (parity checks)."""
    imgsz, batch = graph_geometry(ckpt)
    return torch.rand((batch, 3, imgsz, imgsz), generator=generator)


def raw_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """How far two raw outputs differ where it matters: class scores as they are, box centres and sides
    (pixels) relative to the box's longer side, which is what IoU and NMS see.

    Relative, because an untrained or background anchor may regress a box several images wide,
    where fp16's ~0.1% rounding shows as whole pixels that change no overlap.
    """
    expected, actual = expected.float().cpu(), actual.float().cpu()
    if expected.shape != actual.shape:
        raise ConfigError(f"graph output {tuple(actual.shape)} differs from torch's {tuple(expected.shape)}; "
                          "re-export it with tools/export.py --force")
    size = expected[:, 2:4].amax(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, anchors): xywh boxes
    boxes = ((expected[:, :4] - actual[:, :4]).abs() / size).amax()
    return max(float(boxes), float((expected[:, 4:] - actual[:, 4:]).abs().amax()))


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


def detect_slices(runner: Runner, volume_u8: np.ndarray, imgsz: int, conf: float, iou: float,
                  batch_size: int = 16, max_det: int = 300, progress: bool = False) -> pd.DataFrame:
    """Boxes of every z-slice: z (slice), y, x (voxel centre), conf, class_id, plus box width/height (voxels)."""
    from ultralytics.utils.nms import non_max_suppression

    rows = []
    for zs in progress_bar(list(_batches(volume_u8.shape[0], batch_size)), desc="yolo slices", enabled=progress,
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
                spacing: float = VOXEL_SPACING, particles: ParticleSet = CZII, progress: bool = False) -> pd.DataFrame:
    """Raw tomogram -> 3D detections (experiment, particle_type, x, y, z Å, score) with score >= floor."""
    settings = yolo_settings(cfg)
    slices = detect_slices(runner, normalize_to_uint8(volume), settings["imgsz"], conf=settings["conf"],
                           iou=settings["iou"], batch_size=settings["infer_batch"], max_det=settings["max_det"],
                           progress=progress)
    points = slices_to_points(slices, experiment, settings["cluster"], spacing, particles)
    return points[points["score"] >= floor].reset_index(drop=True)
