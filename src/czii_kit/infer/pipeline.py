"""The per-tomogram path, written once: tomogram -> raw candidates per source -> ``finalize``.

``Predictor.raw_candidates`` runs every member kind on a tomogram and returns one frame of
candidates per source (3D-model peaks as "unet", YOLO points as "yolo"), each with score >= a
floor and before any post-processing. ``finalize`` turns sources into detections: fusion when
there are several (per-class source weights, see ``czii_kit.post.fusion.fuse_sources``), the
post-processing switches (config ``post``), and the per-class thresholds (or none, to tune them).

Prediction (``czii_kit.infer.split``), validation during training, the cross-validation report
(``czii_kit.evaluate``), the benchmarks and the Kaggle notebook all go through these two steps,
so they cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from czii_kit.config import apply_overrides, particle_set
from czii_kit.data.io import Tomogram
from czii_kit.infer.engines import check_engine_kind
from czii_kit.infer.export import EngineFiles
from czii_kit.infer.kinds import KINDS, Member, Passes, group_by_kind, kind_of
from czii_kit.infer.tta import parse_tta
from czii_kit.post.fusion import ClassWeights, fuse_sources
from czii_kit.post.pipeline import apply_thresholds, postprocess


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

    def predict(self, tomogram: Tomogram, thresholds: Mapping[str, float],
                source_weights: ClassWeights | None = None, passes: Passes | None = None) -> pd.DataFrame:
        """Detections of one tomogram: raw candidates above the lowest threshold, then ``finalize``."""
        sources = self.raw_candidates(tomogram, min(thresholds.values()), passes)
        return finalize(sources, self.cfg, thresholds, source_weights)


def inference_config(ckpts: Sequence[dict], overrides: Sequence[str] = (), tta: str | None = None,
                     engine: str | None = None, device: str | None = None) -> dict:
    """The config an ensemble runs with: the resolved config of its first 3D checkpoint (else its first one),
    which carries its own schema (no configs/ needed), with the caller's overrides."""
    primary = next((c for c in ckpts if kind_of(c).name == "unet"), ckpts[0])
    cfg = apply_overrides(primary["config"], list(overrides), schema=primary["config"])
    for key, value in (("tta", tta), ("engine", engine), ("device", device)):
        if value is not None:
            cfg["infer"][key] = value
    check_engine_kind(cfg["infer"]["engine"])
    parse_tta(cfg["infer"]["tta"])
    return cfg


def load_predictor(ckpts: Sequence[dict], cfg: dict, device="cpu", engine: str = "torch",
                   files: EngineFiles = EngineFiles(), member_weights: Sequence[float] | None = None) -> Predictor:
    """Every checkpoint loaded as a member of its kind on ``device`` with engine kind ``engine``."""
    members = {name: KINDS[name].load([c for c, _ in group], [w for _, w in group], cfg, engine, device, files)
               for name, group in group_by_kind(ckpts, member_weights).items()}
    return Predictor(cfg, members)


def finalize(sources: Mapping[str, pd.DataFrame], cfg: Mapping, thresholds: Mapping[str, float] | None = None,
             source_weights: ClassWeights | None = None) -> pd.DataFrame:
    """Sources -> fused (several sources) -> post-processed (config ``post``) -> thresholded (unless None)."""
    particles = particle_set(cfg)
    candidates = postprocess(fuse_sources(sources, cfg["fusion"], source_weights, particles), cfg["post"], particles)
    return candidates if thresholds is None else apply_thresholds(candidates, thresholds, particles)
