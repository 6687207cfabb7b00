"""Per-tomogram inference shared by validation (training) and tools/predict.py.

volume -> ensemble of engines with TTA over a sliding window -> class probabilities
-> peaks -> post-processing -> thresholds. One copy of this path, used everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from czii_kit.infer.ensemble import EnsembleAccumulator
from czii_kit.infer.sliding_window import predict_volume
from czii_kit.infer.tta import parse_tta
from czii_kit.particles import CLASS_NAMES
from czii_kit.post.peaks import find_peaks
from czii_kit.post.pipeline import apply_thresholds, postprocess


@dataclass
class Member:
    """One ensemble member ready to run: an engine plus its averaging weight."""
    engine: object
    weight: float = 1.0
    name: str = ""
    meta: dict = field(default_factory=dict)


def infer_window(cfg: dict) -> tuple[int, int, int]:
    return tuple(cfg["infer"]["window"] or cfg["train"]["patch_size"])


def predict_probabilities(members: list[Member], volume: np.ndarray, cfg: dict, tta=None,
                          passes: dict[int, list] | None = None, progress: bool = False) -> np.ndarray:
    """Weighted mean of the members' TTA-averaged class probabilities, (C, Z/s, Y/s, X/s).

    ``passes`` (member index -> TTA transforms) lets a time budget drop passes or members;
    by default every member runs every transform of ``tta`` (or of cfg.infer.tta).
    """
    if passes is None:
        tta = parse_tta(cfg["infer"]["tta"]) if tta is None else tta
        passes = {i: tta for i in range(len(members))}
    acc = EnsembleAccumulator()
    for i, transforms in passes.items():
        m = members[i]
        prob = predict_volume(m.engine, volume, overlap=cfg["infer"]["overlap"], batch_size=cfg["infer"]["batch_size"],
                              blend=cfg["infer"]["blend"], tta=transforms, progress=progress)
        acc.add(prob, m.weight)
    return acc.result()


def candidates(prob, experiment: str, stride: int, cfg: dict, floor: float) -> pd.DataFrame:
    """All peaks scoring >= floor, post-processed: what thresholds are tuned on and applied to."""
    peaks = find_peaks(prob, list(CLASS_NAMES), {c: floor for c in CLASS_NAMES},
                       kernel_frac=cfg["peaks"]["kernel_frac"], stride=stride,
                       experiment=experiment, topk=cfg["peaks"]["topk"])
    return postprocess(peaks, cfg["post"])


def detect(prob, experiment: str, stride: int, cfg: dict, thresholds: dict[str, float]) -> pd.DataFrame:
    floor = min(thresholds.values())
    return apply_thresholds(candidates(prob, experiment, stride, cfg, floor), thresholds)


def detect_fused(sources: dict[str, pd.DataFrame], cfg: dict, thresholds: dict[str, float]) -> pd.DataFrame:
    """U-Net peaks and YOLO points (both before post-processing) -> fusion -> post-processing -> thresholds."""
    from czii_kit.post.fusion import fused_candidates

    return apply_thresholds(fused_candidates(sources, cfg.get("fusion"), cfg["post"]), thresholds)
