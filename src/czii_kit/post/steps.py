"""Post-processing switches applied to detection DataFrames, configured by a plain dict.

Order is fixed: merge -> dbscan -> offsets. Fusing steps run first so duplicates of one
particle are collapsed before anything else looks at them; offsets run last, otherwise a
later fusion step would merge the offset candidates straight back into their source.
``cfg`` is the ``post:`` section of the YAML config: one mapping per step with ``enabled`` and the
step function's keyword parameters (merge: radius_frac; dbscan: eps_frac, min_samples; offsets:
classes, primary_frac, diagonal_frac, min_spacing_frac, score_factor).

A missing step is disabled; an enabled step must give every setting (the defaults live in
configs/base.yaml only, which every resolved config carries).
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Mapping

import pandas as pd

from czii_kit.errors import ConfigError
from czii_kit.post.merging import check_detections, dbscan_merge, merge_close
from czii_kit.post.offsets import add_hard_particle_offsets
from czii_kit.particles import CZII, ParticleSet
from czii_kit.post.peaks import check_thresholds

# Steps by name, in the order postprocess applies them.
POSTPROCESSORS: dict[str, Callable[..., pd.DataFrame]] = {
    "merge": merge_close,
    "dbscan": dbscan_merge,
    "offsets": add_hard_particle_offsets,
}


def step_parameters(name: str) -> list[str]:
    """The settings of step ``name`` (its keyword parameters but the particle set): the keys its config section must give."""
    return [p for p in list(inspect.signature(POSTPROCESSORS[name]).parameters)[1:] if p != "particles"]


def check_post_config(cfg: Mapping) -> None:
    """Raise ConfigError naming the first unknown step or setting, a missing setting of an enabled step,
    or a non-boolean ``enabled``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"post config must be a mapping of step name -> settings, got {type(cfg).__name__}")
    for name, step in cfg.items():
        if name not in POSTPROCESSORS:
            raise ConfigError(f"post.{name}: unknown post-processing step; valid steps: {', '.join(POSTPROCESSORS)}")
        if not isinstance(step, Mapping):
            raise ConfigError(f"post.{name} must be a mapping of settings, got {step!r}")
        allowed = ["enabled", *step_parameters(name)]
        for key in step:
            if key not in allowed:
                raise ConfigError(f"post.{name}.{key}: unknown setting; valid settings: {', '.join(allowed)}")
        if not isinstance(step.get("enabled", False), bool):
            raise ConfigError(f"post.{name}.enabled must be true or false, got {step['enabled']!r}")
        missing = [key for key in step_parameters(name) if key not in step]
        if step.get("enabled", False) and missing:
            raise ConfigError(f"post.{name} is enabled but lacks {', '.join(missing)}; "
                              f"configs/base.yaml lists every setting with its default")


def postprocess(df: pd.DataFrame, cfg: Mapping, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Apply the enabled steps of ``cfg`` to detections ``df`` in the order of ``POSTPROCESSORS``."""
    check_post_config(cfg)
    check_detections(df)
    for name, step in POSTPROCESSORS.items():
        settings = dict(cfg.get(name, {}))
        if settings.pop("enabled", False):
            df = step(df, **settings, particles=particles)
    return df


def with_steps(cfg: Mapping, steps: Iterable[str]) -> dict:
    """A copy of a (complete) ``post`` section with exactly ``steps`` enabled: the ablation switches."""
    steps = set(steps)
    unknown = sorted(steps - set(POSTPROCESSORS))
    if unknown:
        raise ConfigError(f"unknown post-processing step(s) {unknown}; valid steps: {', '.join(POSTPROCESSORS)}")
    return {name: {**copy.deepcopy(dict(cfg.get(name, {}))), "enabled": name in steps} for name in POSTPROCESSORS}


def apply_thresholds(df: pd.DataFrame, thresholds: Mapping[str, float], particles: ParticleSet = CZII) -> pd.DataFrame:
    """Rows whose score is >= the threshold of their class (every class present needs one)."""
    check_detections(df)
    check_thresholds(thresholds, df["particle_type"].unique(), particles)
    keep = df["score"].to_numpy() >= df["particle_type"].map(thresholds).to_numpy(dtype=float)
    return df[keep].reset_index(drop=True)
