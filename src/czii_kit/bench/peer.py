"""The peer the inference benchmark compares against, built the way the top public solutions run inference, on
the same checkpoint, volume and threads.

MONAI's ``sliding_window_inference`` (gaussian blending) once per member and TTA pass, the mean
of the outputs, then ``torch.nn.functional.max_pool3d`` non-maximum suppression per class. MONAI is a dev
extra used only here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from czii_kit.infer.tta import Transform
from czii_kit.particles import CZII, ParticleSet
from czii_kit.post.peaks import kernel_size


def peer_probabilities(models: Sequence[torch.nn.Module], volume: np.ndarray, window: Sequence[int],
                       overlap: float, batch_size: int, tta: Sequence[Transform]) -> torch.Tensor:
    """(C, Z/s, Y/s, X/s): MONAI sliding windows per member and TTA pass, averaged."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    total = None
    with torch.inference_mode():
        for model in models:
            for transform in tta:
                out = sliding_window_inference(transform.apply(x), tuple(window), batch_size, model,
                                               overlap=overlap, mode="gaussian")
                out = transform.invert(out)
                total = out if total is None else total + out
    return total[0] / (len(models) * len(tta))


def peer_peaks(prob: torch.Tensor, threshold: float, stride: int, kernel_frac: float,
               particles: ParticleSet = CZII) -> list[torch.Tensor]:
    """Per class, (N, 3) output cells that equal their max-pooled neighbourhood and pass ``threshold``."""
    found = []
    for channel, name in zip(prob, particles.names):
        k = kernel_size(name, kernel_frac, stride, particles=particles)
        pooled = F.max_pool3d(channel[None, None], k, stride=1, padding=k // 2)[0, 0]
        found.append(torch.nonzero((channel == pooled) & (channel >= threshold)))
    return found
