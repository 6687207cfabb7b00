"""The per-tomogram path, written once: tomogram -> raw candidates per source -> ``finalize``.

``Predictor.raw_candidates`` runs every member kind on a tomogram and returns one frame of
candidates per source (3D-model peaks as "unet", YOLO points as "yolo"), each with score >= a
floor and before any post-processing. ``finalize`` turns sources into detections: fusion when
there are several (per-class source weights, see ``czii_kit.post.fusion.fuse_sources``), the
post-processing switches (config ``post``), and the per-class thresholds (or none, to tune them).

A ``czii_kit.infer.plan.PredictionPlan`` loads a Predictor; prediction (``czii_kit.infer.split``),
validation during training, the cross-validation report (``czii_kit.evaluate``), the benchmarks and
the Kaggle notebook all go through these two steps, so they cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from czii_kit.config import particle_set
from czii_kit.data.io import Tomogram
from czii_kit.infer.kinds import KINDS, Member, Passes
from czii_kit.post.fusion import ClassWeights, fuse_sources
from czii_kit.post.steps import apply_thresholds, postprocess


@dataclass
class Predictor:
    """Ensemble members loaded on one device, by kind, and the inference config they share."""

    cfg: dict
    members: dict[str, list[Member]]  # kind (= source) name -> members
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, summed over calls

    @property
    def sources(self) -> list[str]:
        return list(self.members)

    def raw_candidates(self, tomogram: Tomogram, floor: float, passes: Passes | None = None) -> dict[str, pd.DataFrame]:
        """{source: candidates with score >= floor} before post-processing; ``passes`` (3D member index ->
        TTA transforms) lets a time budget thin out the 3D members' work (slice detectors ignore it)."""
        return {name: KINDS[name].candidates(members, tomogram, self.cfg, floor, passes, self.timings)
                for name, members in self.members.items()}

    def candidates(self, tomogram: Tomogram, floor: float, source_weights: ClassWeights | None = None,
                   passes: Passes | None = None) -> pd.DataFrame:
        """Candidates of one tomogram down to ``floor``, fused and post-processed: what thresholds are tuned on."""
        return finalize(self.raw_candidates(tomogram, floor, passes), self.cfg, None, source_weights)

    def predict(self, tomogram: Tomogram, thresholds: Mapping[str, float],
                source_weights: ClassWeights | None = None, passes: Passes | None = None) -> pd.DataFrame:
        """Detections of one tomogram: raw candidates above the lowest threshold, then ``finalize``."""
        sources = self.raw_candidates(tomogram, min(thresholds.values()), passes)
        return finalize(sources, self.cfg, thresholds, source_weights)


def finalize(sources: Mapping[str, pd.DataFrame], cfg: Mapping, thresholds: Mapping[str, float] | None = None,
             source_weights: ClassWeights | None = None) -> pd.DataFrame:
    """Sources -> fused (several sources) -> post-processed (config ``post``) -> thresholded (unless None)."""
    particles = particle_set(cfg)
    candidates = postprocess(fuse_sources(sources, cfg["fusion"], source_weights, particles), cfg["post"], particles)
    return candidates if thresholds is None else apply_thresholds(candidates, thresholds, particles)
