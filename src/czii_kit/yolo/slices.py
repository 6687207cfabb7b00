"""Z-slices of a tomogram as 8-bit images with YOLO box labels, and the dataset folder ultralytics reads.

A particle of radius r (voxels) centred at z0 cuts slice z when |z - z0| < r; its disc there
has diameter 2 * sqrt(r^2 - (z - z0)^2). Voxel index i is the centre of image pixel i, i.e.
pixel coordinate i + 0.5 in YOLO's continuous image frame (pixel i spans [i, i + 1)).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from czii_kit.data.folds import fold_runs
from czii_kit.data.io import points_from_picks
from czii_kit.data.open_data import open_data
from czii_kit.data.source import DataSource
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet
from czii_kit.utils.progress import progress_bar
from czii_kit.utils.atomic import check_output_folder, write_text_atomic


def normalize_to_uint8(volume: np.ndarray, low: float = 0.5, high: float = 99.5, subsample: int = 4) -> np.ndarray:
    """Per-tomogram percentile window -> uint8 (same statistics for every slice, so z-contrast is kept)."""
    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(volume[::subsample, ::subsample, ::subsample], [low, high])
    scaled = (volume - lo) / max(float(hi - lo), 1e-6)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def cross_section_diameter(radius: np.ndarray | float, dz: np.ndarray | float) -> np.ndarray:
    """Diameter of a sphere's disc at distance dz from its centre (0 where the slice misses it)."""
    radius, dz = np.asarray(radius, dtype=np.float64), np.asarray(dz, dtype=np.float64)
    return 2.0 * np.sqrt(np.clip(radius**2 - dz**2, 0.0, None))


def voxel_to_pixel(index: np.ndarray | float) -> np.ndarray:
    """Voxel index (centre of a voxel) -> continuous pixel coordinate of the image frame."""
    return np.asarray(index, dtype=np.float64) + 0.5


def pixel_to_voxel(coordinate: np.ndarray | float) -> np.ndarray:
    """Inverse of ``voxel_to_pixel``."""
    return np.asarray(coordinate, dtype=np.float64) - 0.5


def slice_boxes(points_zyx: np.ndarray, labels: np.ndarray, z: int, shape_yx: tuple[int, int],
                min_diameter: float = 0.0, spacing: float = VOXEL_SPACING, particles: ParticleSet = CZII) -> np.ndarray:
    """(K, 5) YOLO rows (class, x_centre, y_centre, width, height), normalized to [0, 1], for slice z.

    One square box per particle whose sphere cuts the slice, side = the disc diameter, clipped
    to the image; discs thinner than ``min_diameter`` voxels (the poles) are left out.
    """
    points_zyx = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(labels, dtype=np.int64)
    height, width = shape_yx
    radius = np.array([p.radius for p in particles])  # Å per class index
    diameter = cross_section_diameter(radius[labels] / spacing, points_zyx[:, 0] - z)
    keep = (diameter > 0) & (diameter >= min_diameter)
    x = voxel_to_pixel(points_zyx[keep, 2])
    y = voxel_to_pixel(points_zyx[keep, 1])
    half = diameter[keep] / 2
    x0, x1 = np.clip(x - half, 0, width), np.clip(x + half, 0, width)
    y0, y1 = np.clip(y - half, 0, height), np.clip(y + half, 0, height)
    inside = (x1 > x0) & (y1 > y0)
    return np.stack([labels[keep], (x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                     (x1 - x0) / width, (y1 - y0) / height], axis=1)[inside].reshape(-1, 5)


def format_labels(boxes: np.ndarray) -> str:
    """YOLO txt content: one 'class xc yc w h' line per box (empty string: a background image)."""
    return "".join(f"{int(b[0])} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f} {b[4]:.6f}\n" for b in boxes)


def slice_indices(depth: int, every: int = 1) -> np.ndarray:
    """The z indices used: every ``every``-th slice starting at 0."""
    if not (isinstance(every, (int, np.integer)) and every >= 1):
        raise ConfigError(f"every (slice step) must be an integer >= 1, got {every!r}")
    return np.arange(0, depth, every)


# --------------------------------------------------------------------------- dataset folder
def write_split(data: DataSource, runs: list[str], split: str, out: Path, data_cfg, every: int = 1,
                min_diameter: float = 0.0, progress: bool = True) -> int:
    """PNG slices and label files of ``runs`` under out/images/<split> and out/labels/<split>; returns #images."""
    from PIL import Image

    images, labels = out / "images" / split, out / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    count = 0
    for run in progress_bar(runs, desc=f"yolo {split} slices", enabled=progress, leave=False):
        tomogram = data.read_run(run, "train", data_cfg)
        volume = normalize_to_uint8(tomogram.volume)
        points, classes = points_from_picks(data.read_picks(run, data_cfg), tomogram.spacing, data.particles)
        for z in slice_indices(volume.shape[0], every):
            stem = f"{run}_z{z:04d}"
            Image.fromarray(volume[z]).save(images / f"{stem}.png")
            boxes = slice_boxes(points, classes, int(z), volume.shape[1:], min_diameter, tomogram.spacing,
                                data.particles)
            (labels / f"{stem}.txt").write_text(format_labels(boxes))
            count += 1
    return count


def write_data_yaml(out: Path, has_val: bool, particles: ParticleSet) -> Path:
    """ultralytics' dataset description; without held-out runs the train images double as val."""
    import yaml

    doc = {"path": str(out.resolve()), "train": "images/train", "val": "images/val" if has_val else "images/train",
           "names": dict(enumerate(particles.names))}
    path = out / "data.yaml"
    write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    return path


def write_dataset(data, out, fold: int, data_cfg, every: int = 1, min_diameter: float = 0.0,
                  progress: bool = True) -> tuple[Path, list[str], list[str]]:
    """Slices of fold ``fold``'s train and held-out runs (the U-Net's split, ``data.fold_file``), read with
    ``data.recon`` and ``data.level``; returns (data.yaml, train runs, val runs)."""
    data = open_data(data)
    out = check_output_folder(out)
    if (out / "data.yaml").exists():
        raise DataError(f"{out} already holds a YOLO dataset ({out / 'data.yaml'}); "
                        "delete that folder or pick another --out")
    train_runs, val_runs = fold_runs(data, data_cfg, fold)
    write_split(data, train_runs, "train", out, data_cfg, every, min_diameter, progress)
    if val_runs:
        write_split(data, val_runs, "val", out, data_cfg, every, min_diameter, progress)
    return write_data_yaml(out, bool(val_runs), data.particles), train_runs, val_runs
