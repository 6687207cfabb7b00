"""A naive baseline: difference-of-Gaussians blob detection at each class's size.

What a trained model has to beat. Protein is dark, so blobs are minima: the response is
DoG(-volume) with sigmas matched to each class radius (a sphere of radius R responds best
at sigma ~ R / sqrt(3)). Peaks, post-processing and threshold tuning reuse the model path.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from czii_kit.particles import PARTICLES


def dog_response(volume: np.ndarray, ratio: float = 1.6) -> np.ndarray:
    """(6, Z, Y, X) float32 blob responses of a normalized volume, one channel per class."""
    out = np.empty((len(PARTICLES),) + volume.shape, np.float32)
    inverted = -volume.astype(np.float32)
    for i, p in enumerate(PARTICLES):
        sigma = p.radius_vox / np.sqrt(3.0)
        out[i] = ndimage.gaussian_filter(inverted, sigma) - ndimage.gaussian_filter(inverted, sigma * ratio)
    return out
