"""One prediction plan: checkpoints grouped by kind, the config they run with, thresholds and source weights,
and the runs they will predict with their geometry, resolved and checked once before the first tomogram.

Every caller that turns models into candidates goes through a plan: ``predict`` (a split, thresholded, to
submission.csv and friends), ``evaluate`` (raw candidates of each fold's held-out runs), the recipe study
(candidates down to a floor, to tune thresholds on), training validation (an in-memory model that is not a
checkpoint yet), the benchmarks and the Kaggle notebook (through ``predict``). Thresholds are, from weakest to
strongest: the members' own (mean over members) < a thresholds file from ``tools/evaluate.py`` (which also
brings per-class source weights) < explicit per-class values.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from czii_kit.config import apply_overrides, particle_set
from czii_kit.data.source import DataSource
from czii_kit.errors import ConfigError, IncompleteDataError
from czii_kit.infer.engines import check_engine_kind
from czii_kit.infer.export import EngineFiles
from czii_kit.infer.kinds import KINDS, Member, check_spacing, group_by_kind, kind_of, load_checkpoints
from czii_kit.infer.predictor import Predictor
from czii_kit.infer.sliding_window import check_blend
from czii_kit.infer.tta import parse_tta
from czii_kit.particles import ParticleSet
from czii_kit.post.fusion import ClassWeights
from czii_kit.tuning import Tuning, check_sources, guessed_thresholds, load_tuning

Groups = dict[str, list[tuple[dict, float]]]  # kind name -> [(checkpoint, member weight)], registry order
Geometry = tuple[tuple[int, ...], float]  # ((z, y, x) shape, Å per voxel)


@dataclass(frozen=True)
class RunSet:
    """The runs of one split a plan predicts, each checked (metadata only) and with its geometry; ``skipped``:
    runs whose tomogram is incomplete (missing chunks), refused with the reason, never read."""

    data: DataSource
    split: str
    names: list[str]
    geometry: dict[str, Geometry]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def to_predict(self) -> list[str]:
        return [run for run in self.names if run not in self.skipped]


@dataclass(frozen=True)
class PredictionPlan:
    """What runs, with which settings, on which runs; ``thresholds`` None means candidates only (validation)."""

    groups: Groups
    cfg: dict
    thresholds: dict[str, float] | None = None
    source_weights: ClassWeights | None = None
    tuning: Tuning | None = None
    explicit_thresholds: bool = False  # per-class values given by the caller (no guessed-threshold warning)
    default_fusion: bool = False  # several sources may fuse with the config's fusion.weights (asked for on purpose)
    files: EngineFiles = EngineFiles()
    runs: RunSet | None = None

    # ------------------------------------------------------------------ making one
    @classmethod
    def from_weights(cls, weights: Sequence[str | Path], folds: Sequence[int] | None = None,
                     **options) -> PredictionPlan:
        """The plan of every checkpoint of ``weights`` (experiment folders or files); see ``from_checkpoints``."""
        return cls.from_checkpoints(load_checkpoints(weights, folds), **options)

    @classmethod
    def from_checkpoints(cls, ckpts: Sequence[dict], *, overrides: Sequence[str] = (), tta: str | None = None,
                         engine: str | None = None, device: str | None = None,
                         member_weights: Sequence[float] | None = None,
                         thresholds: str | Mapping[str, float] | None = None,
                         thresholds_from: str | Path | None = None, default_fusion: bool = False,
                         files: EngineFiles = EngineFiles()) -> PredictionPlan:
        """Group ``ckpts`` by kind (checking member weights and that each kind's members fit together), resolve
        the inference config (the first kind's first checkpoint's, with ``overrides``, ``tta``, ``engine`` and
        ``device``), and the thresholds and source weights."""
        groups = group_by_kind(ckpts, member_weights)
        cfg = inference_config(groups, overrides, tta, engine, device)
        particles = particle_set(cfg)
        tuning = load_tuning(thresholds_from, particles.names) if thresholds_from else None
        if tuning is not None:
            check_sources(tuning, groups)
        base = tuning.thresholds if tuning else mean_thresholds(ckpts, particles)
        source_weights = tuning.source_weights if tuning else stored_source_weights(ckpts)
        return cls(groups, cfg, parse_thresholds(thresholds, base, particles), source_weights, tuning,
                   explicit_thresholds=bool(thresholds), default_fusion=default_fusion, files=files)

    @classmethod
    def for_training(cls, ckpt: dict) -> PredictionPlan:
        """The plan of a model being trained (``ckpt``: the fields its checkpoint will have, its config): no
        thresholds yet, those are what validation tunes."""
        return cls({kind_of(ckpt).name: [(ckpt, 1.0)]}, ckpt["config"])

    # ------------------------------------------------------------------ what it holds
    @property
    def checkpoints(self) -> list[dict]:
        return [ckpt for group in self.groups.values() for ckpt, _ in group]

    @property
    def particles(self) -> ParticleSet:
        return particle_set(self.cfg)

    @property
    def sources(self) -> list[str]:
        return list(self.groups)

    def warning(self) -> str | None:
        """A loud line when the thresholds are the config's defaults of a full-data model (trained without
        ``--thresholds-from``): a guess, worth about 0.07 F4 less than thresholds tuned by cross-validation."""
        guessed = [] if (self.tuning or self.explicit_thresholds) else guessed_thresholds(self.checkpoints)
        if not guessed:
            return None
        carry = "carries" if len(guessed) == 1 else "carry"
        return (f"WARNING: {', '.join(guessed)} {carry} the config's default thresholds, not tuned ones (trained on "
                "every run without --thresholds-from). Tune them on the fold models with tools/evaluate.py and pass "
                "--thresholds-from REPORT here (or to tools/train_fold.py --fold -1)")

    def threshold_source(self) -> str:
        """Where the thresholds come from, in words (prediction's header line)."""
        if self.tuning:
            source = f"from {self.tuning.path}"
        else:
            rules = dict.fromkeys(c["validation"].get("thresholds_from") or "tuned on its validation run"
                                  for c in self.checkpoints)
            several = len(self.checkpoints) > 1
            source = f"{'each checkpoint' if several else 'the checkpoint'}'s own ({'; '.join(rules)})" + (
                ", averaged" if several else "")
        return source + (", with the per-class values given" if self.explicit_thresholds else "")

    def check_fusion(self) -> None:
        """Several sources are fused for final detections only with per-class source weights tuned on out-of-fold
        candidates, or with the config's default weights when asked for on purpose: untuned, a U-Net and a YOLO
        model trained on every run scored F4 0.816 together against 0.947 for the U-Net alone on held-out data."""
        if len(self.groups) < 2 or self.source_weights is not None or self.default_fusion:
            return
        raise ConfigError(
            f"the checkpoints give {len(self.groups)} sources ({', '.join(self.sources)}) but no per-class source "
            "weights to fuse them with; untuned fusion can score below the best source alone. Tune them on the fold "
            "models (czii evaluate --weights EXP EXP_YOLO --out REPORT) and pass --thresholds-from REPORT here (or "
            "to czii train --fold -1), predict with one kind of checkpoint, or pass --default-fusion to fuse with "
            "the config's fusion.weights on purpose")

    def single(self, kind: str, ckpt: dict) -> PredictionPlan:
        """One of its checkpoints alone, with the same config (one engine per checkpoint)."""
        return dataclasses.replace(self, groups={kind: [(ckpt, 1.0)]})

    def down_to(self, floor: float) -> PredictionPlan:
        """The same plan keeping every candidate scoring >= ``floor`` (or its own threshold, if lower): for
        thresholds chosen afterwards."""
        return dataclasses.replace(self, thresholds={c: min(floor, t) for c, t in self.thresholds.items()},
                                   explicit_thresholds=True)

    # ------------------------------------------------------------------ the runs
    def on_runs(self, data: DataSource, split: str, runs: Sequence[str] | None = None) -> PredictionPlan:
        """The plan with ``runs`` of ``split`` (default: all), checked before any inference: the data has the
        models' classes, every run exists and opens (metadata only), and has the voxel size they were trained at.
        A run whose store lacks chunks is skipped (``RunSet.skipped``, with the reason), not read as zeros."""
        if set(self.particles.names) != set(data.particles.names):
            raise ConfigError(f"the checkpoints predict {', '.join(self.particles.names)} but {data} has "
                              f"{', '.join(data.particles.names)}; use checkpoints trained on this project's classes")
        names = data.select_runs(split, runs)
        geometry, skipped = {}, {}
        for run in names:
            try:
                geometry[run] = data.run_geometry(run, split, self.cfg["data"])
            except IncompleteDataError as error:
                skipped[run] = f"{type(error).__name__}: {error}"
                continue
            for ckpt in self.checkpoints:
                check_spacing(ckpt, geometry[run][1], f"run {run} ({self.cfg['data']['recon']}, "
                                                      f"level {self.cfg['data']['level']})")
        return dataclasses.replace(self, runs=RunSet(data, split, names, geometry, skipped))

    # ------------------------------------------------------------------ loading
    def load(self, device: str | torch.device = "cpu", engine: str | None = None) -> Predictor:
        """Every member loaded on ``device`` with ``engine`` (default: the config's)."""
        engine = engine or self.cfg["infer"]["engine"]
        cfg = {**self.cfg, "infer": {**self.cfg["infer"], "engine": engine}}
        members = {name: KINDS[name].load([c for c, _ in group], [w for _, w in group], cfg, engine, device,
                                          self.files) for name, group in self.groups.items()}
        return Predictor(cfg, members)

    def with_model(self, model: torch.nn.Module, device: str | torch.device) -> Predictor:
        """A predictor running an in-memory model (training validation: the plan's one checkpoint-to-be)."""
        ((name, [(ckpt, _)]),) = self.groups.items()
        member: Member = KINDS[name].member(model, ckpt, device)
        return Predictor(self.cfg, {name: [member]})


def inference_config(groups: Groups, overrides: Sequence[str] = (), tta: str | None = None,
                     engine: str | None = None, device: str | None = None) -> dict:
    """The config an ensemble runs with: the resolved config of the first checkpoint of its first kind (registry
    order: 3D models before slice detectors), which carries its own schema (no configs/ needed), with the
    caller's overrides."""
    primary = next(iter(groups.values()))[0][0]
    cfg = apply_overrides(primary["config"], list(overrides), schema=primary["config"])
    for key, value in (("tta", tta), ("engine", engine), ("device", device)):
        if value is not None:
            cfg["infer"][key] = value
    check_infer_settings(cfg)
    return cfg


def check_infer_settings(cfg: dict) -> None:
    """The infer section names a known engine, TTA and blend: checked before any tomogram is read (training's
    validation predicts with them too)."""
    check_engine_kind(cfg["infer"]["engine"])
    parse_tta(cfg["infer"]["tta"])
    check_blend(cfg["infer"]["blend"])


def parse_thresholds(text: str | Mapping[str, float] | None, base: Mapping[str, float],
                     particles: ParticleSet) -> dict[str, float]:
    """Per-class overrides ('ribosome=0.4,thyroglobulin=0.2' or a mapping) over ``base``."""
    out = dict(base)
    items = text.items() if isinstance(text, Mapping) else (
        item.partition("=")[::2] for item in filter(None, (text or "").split(",")))
    for name, value in items:
        if name not in particles:
            raise ConfigError(f"--thresholds: unknown particle type {name!r}; expected {', '.join(particles.names)}")
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--thresholds: {name}={value!r} needs a number, e.g. {name}=0.3") from None
        if not 0 <= out[name] <= 1:
            raise ConfigError(f"--thresholds: {name}={value} is not a probability in [0, 1], e.g. {name}=0.3")
    return out


def mean_thresholds(ckpts: Sequence[dict], particles: ParticleSet) -> dict[str, float]:
    """Per-class thresholds averaged over the members' own tuned values (each tuned on one held-out run)."""
    return {c: float(np.mean([k["thresholds"][c] for k in ckpts])) for c in particles.names}


def stored_source_weights(ckpts: Sequence[dict]) -> dict | None:
    """Per-class source weights full-data checkpoints carry from their thresholds file (all the same), else None."""
    weights = [c["validation"].get("source_weights") for c in ckpts]
    return weights[0] if weights and weights[0] and all(w == weights[0] for w in weights) else None
