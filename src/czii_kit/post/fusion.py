"""Fuse detections of several models (U-Net peaks, YOLO points) into one candidate list.

Per experiment and class, detections of all sources within ``eps_frac`` x particle radius (Å)
of each other are chained into one cluster (DBSCAN with min_samples=1, i.e. connected
components of the eps-graph). Every cluster becomes one point at the mean of its members
weighted by source weight x score. Two scoring rules, from the two seed solutions:

* ``dbscan``: score = sum over sources of weight x (best score of that source in the cluster)
  / sum of ALL source weights. A particle seen by one source only keeps a reduced score, and
  the per-class threshold decides whether that is enough. Nothing is dropped.
* ``vote``: the weights of the sources present in the cluster are its votes; clusters with
  fewer than ``min_votes`` are dropped, the others score the weighted mean of the present
  sources' best scores (absent sources do not pull the score down).

``fuse_sources`` applies this per class with per-class source weights (tuned on out-of-fold
candidates by ``czii_kit.evaluate``): a source with weight 0 is left out of a class, and a class
left with a single source takes that source's candidates unchanged, so fusing never touches a
class where it did not help. ``czii_kit.infer.predictor.finalize`` then post-processes and thresholds.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from czii_kit.config import exact_section
from czii_kit.errors import ConfigError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.post.merging import check_detections, check_positive, collapse_groups, label_groups
from czii_kit.post.peaks import empty_detections, proximity_components
from czii_kit.tables import DETECTION_COLUMNS

FUSION_METHODS = ("dbscan", "vote")
FUSION_KEYS = ("method", "eps_frac", "weights", "min_votes")  # the ``fusion`` section of configs/base.yaml
ClassWeights = Mapping[str, Mapping[str, float]]  # class -> source -> weight (0 leaves a source out)


def check_fusion(method: str, weights: Mapping[str, float], sources: Mapping[str, pd.DataFrame]) -> None:
    if method not in FUSION_METHODS:
        raise ConfigError(f"fusion.method {method!r} is unknown; use one of {', '.join(FUSION_METHODS)}")
    missing = sorted(set(sources) - set(weights))
    if missing:
        raise ConfigError(f"fusion.weights has no weight for source(s) {', '.join(missing)}; "
                          f"add them under fusion.weights (have {', '.join(weights) or 'none'})")
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and w >= 0):
            raise ConfigError(f"fusion.weights.{name} must be a number >= 0, got {w!r}")
    for frame in sources.values():
        check_detections(frame)


def union(sources: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """All sources' detections in one frame with a ``source`` column (source names as given)."""
    frames = [f[DETECTION_COLUMNS].assign(source=name) for name, f in sources.items()]
    return pd.concat([empty_detections().assign(source=""), *frames], ignore_index=True)


def cluster_labels(df: pd.DataFrame, eps_frac: float, particles: ParticleSet = CZII) -> np.ndarray:
    """Cluster per row, unique across (experiment, class): chains of detections <= eps_frac x radius apart."""
    check_positive(eps_frac, "fusion.eps_frac")
    return label_groups(df, lambda xyz, name: proximity_components(xyz, eps_frac * particles[name].radius))


def best_per_source(df: pd.DataFrame, labels: np.ndarray, names: list[str]) -> np.ndarray:
    """(clusters, sources) best score of each source in each cluster; NaN where a source is absent."""
    best = np.full((int(labels.max()) + 1 if len(labels) else 0, len(names)), -np.inf)
    source_index = df["source"].map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
    np.maximum.at(best, (labels, source_index), df["score"].to_numpy(dtype=np.float64))
    return np.where(np.isfinite(best), best, np.nan)


def fuse(sources: Mapping[str, pd.DataFrame], *, method: str, eps_frac: float, weights: Mapping[str, float],
         min_votes: float, particles: ParticleSet = CZII) -> pd.DataFrame:
    """One detections frame from several (experiment, particle_type, x, y, z, score) frames; see the module doc."""
    weights = dict(weights)
    check_fusion(method, weights, sources)
    names = list(sources)
    df = union(sources)
    if df.empty:
        return df
    labels = cluster_labels(df, eps_frac, particles)
    source_weight = df["source"].map(weights).to_numpy(dtype=np.float64)
    position_weight = np.maximum(source_weight * df["score"].to_numpy(dtype=np.float64), np.finfo(np.float64).tiny)
    fused = collapse_groups(df, labels, position_weight)  # rows in cluster-label order
    best = best_per_source(df, labels, names)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    present = ~np.isnan(best)
    weighted = np.nansum(best * w, axis=1)
    votes = present @ w
    if method == "dbscan":
        score, keep = weighted / max(w.sum(), np.finfo(np.float64).tiny), np.ones(len(fused), dtype=bool)
    else:
        score, keep = weighted / np.maximum(votes, np.finfo(np.float64).tiny), votes >= min_votes
    fused["score"] = score
    fused["source"] = ["+".join(n for n, p in zip(names, row) if p) for row in present]
    return fused[keep].reset_index(drop=True)


def fusion_settings(cfg: Mapping) -> dict:
    """A config's ``fusion`` section, checked: exactly the keys of configs/base.yaml (its defaults live there)."""
    return exact_section(cfg, FUSION_KEYS, "fusion")


def check_class_weights(class_weights: ClassWeights, particles: ParticleSet) -> None:
    unknown = sorted(set(class_weights) - set(particles.names))
    if unknown:
        raise ConfigError(f"per-class source weights name unknown particle type(s) {unknown}; "
                          f"valid: {', '.join(particles.names)}")
    for name, weights in class_weights.items():
        for source, w in weights.items():
            if not (isinstance(w, (int, float)) and w >= 0):
                raise ConfigError(f"source weight {name}/{source} must be a number >= 0, got {w!r}")


def fuse_sources(sources: Mapping[str, pd.DataFrame], fusion_cfg: Mapping,
                 class_weights: ClassWeights | None = None, particles: ParticleSet = CZII) -> pd.DataFrame:
    """One candidate list from every source (see the module doc): the config's fusion for all classes,
    or per class with ``class_weights`` (a class not listed uses ``fusion.weights``)."""
    settings = fusion_settings(fusion_cfg)
    if class_weights is None:
        if len(sources) == 1:
            return next(iter(sources.values()))
        return fuse(sources, **settings, particles=particles)
    check_class_weights(class_weights, particles)
    frames = [empty_detections().assign(source="")]
    for name in particles.names:
        weights = {s: float(w) for s, w in class_weights.get(name, settings["weights"]).items()
                   if w > 0 and s in sources}
        per_class = {s: sources[s][sources[s]["particle_type"] == name] for s in weights}
        if len(per_class) == 1:
            ((source, frame),) = per_class.items()
            frames.append(frame[DETECTION_COLUMNS].assign(source=source))
        elif per_class:
            frames.append(fuse(per_class, **{**settings, "weights": weights}, particles=particles))
    return pd.concat(frames, ignore_index=True)
