"""Hard negatives: places that look like a particle but are none, for patches the model must learn to reject.

Real tomograms have no labels for what is not a target (distractor proteins, membranes, ice contamination),
so look-alikes are found from the image itself: the strongest blobs of a difference-of-Gaussians at a particle's
size that lie farther than that particle size from every pick. ``train.hard_negative_fraction`` of the patches
are centred on them (``PatchSampler``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def dark_blob_response(volume: np.ndarray, radius_vox: float, ratio: float = 1.6) -> np.ndarray:
    """Difference of Gaussians of the inverted volume (protein is dark), tuned to spheres of radius ``radius_vox``:
    a sphere of radius R responds best at sigma ~ R / sqrt(3). Float32, shaped like ``volume``."""
    sigma = radius_vox / np.sqrt(3.0)
    inverted = -np.asarray(volume, dtype=np.float32)
    return ndimage.gaussian_filter(inverted, sigma) - ndimage.gaussian_filter(inverted, sigma * ratio)


def lookalike_centres(volume: np.ndarray, points_zyx: np.ndarray, radius_vox: float, n: int,
                      ratio: float = 1.6) -> np.ndarray:
    """Up to ``n`` (z, y, x) voxel centres of the strongest dark blobs of radius ~``radius_vox`` (protein is dark in
    a normalized tomogram) that are farther than ``radius_vox`` from every point in ``points_zyx``."""
    if n <= 0:
        return np.empty((0, 3), dtype=np.int64)
    response = dark_blob_response(volume, radius_vox, ratio)
    size = max(3, int(2 * round(radius_vox) + 1))
    peaks = np.argwhere((response == ndimage.maximum_filter(response, size=size)) & (response > 0))
    if len(peaks) == 0:
        return np.empty((0, 3), dtype=np.int64)
    order = np.argsort(-response[tuple(peaks.T)], kind="stable")
    peaks = peaks[order]
    points = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    if len(points):
        distance, _ = cKDTree(points).query(peaks, k=1)
        peaks = peaks[distance > radius_vox]
    return peaks[:n].astype(np.int64)
