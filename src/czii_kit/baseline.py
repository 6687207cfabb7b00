"""A naive baseline: difference-of-Gaussians blob detection at each class's size.

What a trained model has to beat. Protein is dark, so blobs are minima: the response is
DoG(-volume) matched to each class radius (``data.lookalikes.dark_blob_response``, the same
filter that finds look-alikes for hard-negative patches). Peaks, post-processing and threshold
tuning reuse the model path.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from czii_kit.config import particle_set
from czii_kit.data.lookalikes import dark_blob_response
from czii_kit.infer.predictor import finalize
from czii_kit.metric import tuned_score
from czii_kit.particles import CZII, VOXEL_SPACING, ParticleSet
from czii_kit.post.peaks import find_peaks


def dog_response(volume: np.ndarray, ratio: float = 1.6, spacing: float = VOXEL_SPACING,
                 particles: ParticleSet = CZII) -> np.ndarray:
    """(C, Z, Y, X) float32 blob responses of a normalized volume, one channel per class."""
    out = np.empty((len(particles),) + volume.shape, np.float32)
    for i, p in enumerate(particles):
        out[i] = dark_blob_response(volume, p.radius / spacing, ratio)
    return out


def dog_score(runs, cfg: dict) -> tuple[dict[str, float], pd.DataFrame, float]:
    """Thresholds tuned on ``runs`` (``czii_kit.train.data.RunData``) themselves, per-class table, score."""
    particles = particle_set(cfg)
    cands = []
    for run in runs:
        peaks = find_peaks(dog_response(run.volume, spacing=run.spacing, particles=particles), particles.names,
                           dict.fromkeys(particles.names, 0.0), kernel_frac=cfg["peaks"]["kernel_frac"],
                           experiment=run.name, topk=cfg["peaks"]["topk"], spacing=run.spacing, particles=particles)
        cands.append(finalize({"dog": peaks}, cfg))
    solution = pd.concat([r.picks for r in runs], ignore_index=True)
    return tuned_score(solution, pd.concat(cands, ignore_index=True), particles=particles)
