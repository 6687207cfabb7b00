"""Slice detections -> 3D particle centres: link boxes on neighbouring slices, one point per chain.

Per class, two 2D detections are linked when their slices are 1..``max_gap`` apart and their
centres lie within ``link_frac`` x the class radius (voxels, in x-y); connected components
are particles. A component with fewer than ``min_size`` detections (a stray box) is dropped.
Its centre is the confidence-weighted mean of the boxes' x, y and slice z; its score is the
mean of its ``topk`` best confidences (one very confident slice does not make a particle).
Positions go to Å only through ``voxel_to_angstrom``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from czii_kit.config import exact_section
from czii_kit.errors import DataError
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet, voxel_to_angstrom
from czii_kit.post.peaks import class_value, detections_frame, empty_detections

SLICE_COLUMNS = ["z", "y", "x", "conf", "class_id"]  # voxel units; z is the slice index
CLUSTER_KEYS = ("link_frac", "max_gap", "min_size", "topk")  # yolo.cluster in configs/base.yaml


def check_slice_detections(df: pd.DataFrame) -> None:
    missing = [c for c in SLICE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"slice detections lack column(s) {', '.join(missing)}; expected {', '.join(SLICE_COLUMNS)}")


def link_components(zyx: np.ndarray, link_distance: float, max_gap: int) -> np.ndarray:
    """Component label per detection; edges join detections 1..max_gap slices apart and <= link_distance in x-y."""
    if len(zyx) == 0:
        return np.empty(0, dtype=np.int64)
    pairs = cKDTree(zyx[:, 1:]).query_pairs(link_distance, output_type="ndarray")
    dz = np.abs(zyx[pairs[:, 0], 0] - zyx[pairs[:, 1], 0])
    pairs = pairs[(dz > 0) & (dz <= max_gap)]
    adjacency = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(zyx),) * 2)
    return connected_components(adjacency, directed=False)[1]


def top_k_mean(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per label (0..max), the mean of its k largest values (all of them when it has fewer)."""
    order = np.lexsort((-values, labels))
    sorted_labels = labels[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_labels, sorted_labels, side="left")
    top = rank < k
    n = int(labels.max()) + 1
    return np.bincount(sorted_labels[top], values[order][top], n) / np.bincount(sorted_labels[top], minlength=n)


def cluster_class(zyx: np.ndarray, conf: np.ndarray, radius: float, link_frac: float, max_gap: int,
                  min_size: int, topk: int, spacing: float = VOXEL_SPACING) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) voxel (z, y, x) centres and (M,) scores of one class's particles (``radius`` in Å)."""
    if len(zyx) == 0:
        return np.empty((0, 3)), np.empty(0)
    labels = link_components(zyx, link_frac * radius / spacing, max_gap)
    sizes = np.bincount(labels)
    weights = np.maximum(conf, np.finfo(np.float64).tiny)
    total = np.bincount(labels, weights)
    centres = np.stack([np.bincount(labels, weights * zyx[:, a]) / total for a in range(3)], axis=1)
    scores = top_k_mean(conf, labels, topk)
    keep = sizes >= min_size
    return centres[keep], scores[keep]


def check_cluster_config(cfg: Mapping) -> dict:
    """The ``yolo.cluster`` section: exactly the keys of configs/base.yaml (its defaults live there only)."""
    return exact_section(cfg, CLUSTER_KEYS, "yolo.cluster")


def slices_to_points(slices: pd.DataFrame, experiment: str, cfg: Mapping,
                     spacing: float = VOXEL_SPACING, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Slice detections of one tomogram -> detections frame (experiment, particle_type, x, y, z Å, score)."""
    check_slice_detections(slices)
    cfg = check_cluster_config(cfg)
    zyx_all = slices[["z", "y", "x"]].to_numpy(dtype=np.float64)
    conf_all = slices["conf"].to_numpy(dtype=np.float64)
    class_ids = slices["class_id"].to_numpy(dtype=np.int64)
    frames = [empty_detections()]
    for index, name in enumerate(particles.names):
        rows = class_ids == index
        centres, scores = cluster_class(
            zyx_all[rows], conf_all[rows], particles[name].radius,
            link_frac=float(class_value(cfg["link_frac"], name, "yolo.cluster.link_frac")),
            max_gap=int(class_value(cfg["max_gap"], name, "yolo.cluster.max_gap")),
            min_size=int(class_value(cfg["min_size"], name, "yolo.cluster.min_size")),
            topk=int(class_value(cfg["topk"], name, "yolo.cluster.topk")), spacing=spacing)
        order = np.argsort(-scores, kind="stable")
        frames.append(detections_frame(experiment, name, voxel_to_angstrom(centres[order], spacing), scores[order]))
    return pd.concat(frames, ignore_index=True)
