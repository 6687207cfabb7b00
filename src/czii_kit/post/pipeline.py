"""Post-processing switches applied to detection DataFrames, configured by a plain dict.

Order is fixed: merge -> dbscan -> offsets. Fusing steps run first so duplicates of one
particle are collapsed before anything else looks at them; offsets run last, otherwise a
later fusion step would merge the offset candidates straight back into their source.
``cfg`` is the ``post:`` section of the YAML config, e.g.::

    merge:   {enabled: false, radius_frac: 0.1}
    dbscan:  {enabled: false, eps_frac: 0.5, min_samples: 1}
    offsets: {enabled: false, classes: [beta-galactosidase, thyroglobulin], primary_frac: 0.116,
              diagonal_frac: 0.100, min_spacing_frac: 0.5, score_factor: 0.9}

A missing step is disabled; a missing parameter takes the step function's default.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import pandas as pd

from czii_kit.errors import ConfigError
from czii_kit.post.merging import check_detections, dbscan_merge, merge_close
from czii_kit.post.offsets import add_hard_particle_offsets
from czii_kit.post.peaks import check_thresholds

# Steps by name, in the order postprocess applies them.
POSTPROCESSORS: dict[str, Callable[..., pd.DataFrame]] = {
    "merge": merge_close,
    "dbscan": dbscan_merge,
    "offsets": add_hard_particle_offsets,
}


def step_parameters(name: str) -> dict[str, object]:
    """Keyword parameters (with defaults) of step ``name``: the keys its config section may set."""
    signature = inspect.signature(POSTPROCESSORS[name])
    return {key: p.default for key, p in list(signature.parameters.items())[1:]}


def default_post_config() -> dict[str, dict]:
    """Every step disabled with its default parameters (tuples as lists, ready for YAML)."""
    def yaml_ready(value):
        return list(value) if isinstance(value, tuple) else value

    return {name: {"enabled": False, **{key: yaml_ready(value) for key, value in step_parameters(name).items()}}
            for name in POSTPROCESSORS}


def check_post_config(cfg: Mapping) -> None:
    """Raise ConfigError naming the first unknown step, unknown parameter or non-boolean ``enabled``."""
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


def postprocess(df: pd.DataFrame, cfg: Mapping) -> pd.DataFrame:
    """Apply the enabled steps of ``cfg`` to detections ``df`` in the order of ``POSTPROCESSORS``."""
    check_post_config(cfg)
    check_detections(df)
    for name, step in POSTPROCESSORS.items():
        settings = dict(cfg.get(name, {}))
        if settings.pop("enabled", False):
            df = step(df, **settings)
    return df


def apply_thresholds(df: pd.DataFrame, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """Rows whose score is >= the threshold of their class (every class present needs one)."""
    check_detections(df)
    check_thresholds(thresholds, df["particle_type"].unique())
    keep = df["score"].to_numpy() >= df["particle_type"].map(thresholds).to_numpy(dtype=float)
    return df[keep].reset_index(drop=True)
