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

Thresholds and hard-particle offsets then run as on the U-Net path (``fused_candidates``).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from czii_kit.errors import ConfigError
from czii_kit.particles import particle
from czii_kit.post.merging import check_detections, check_positive, collapse_groups, label_groups
from czii_kit.post.peaks import DETECTION_COLUMNS, empty_detections, proximity_components
from czii_kit.post.pipeline import postprocess

FUSION_METHODS = ("dbscan", "vote")
DEFAULT_FUSION = {"method": "dbscan", "eps_frac": 0.5, "weights": {"unet": 1.0, "yolo": 1.0}, "min_votes": 1.0}


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


def cluster_labels(df: pd.DataFrame, eps_frac: float) -> np.ndarray:
    """Cluster per row, unique across (experiment, class): chains of detections <= eps_frac x radius apart."""
    check_positive(eps_frac, "fusion.eps_frac")
    return label_groups(df, lambda xyz, name: proximity_components(xyz, eps_frac * particle(name).radius))


def best_per_source(df: pd.DataFrame, labels: np.ndarray, names: list[str]) -> np.ndarray:
    """(clusters, sources) best score of each source in each cluster; NaN where a source is absent."""
    best = np.full((int(labels.max()) + 1 if len(labels) else 0, len(names)), -np.inf)
    source_index = df["source"].map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
    np.maximum.at(best, (labels, source_index), df["score"].to_numpy(dtype=np.float64))
    return np.where(np.isfinite(best), best, np.nan)


def fuse(sources: Mapping[str, pd.DataFrame], method: str = "dbscan", eps_frac: float = 0.5,
         weights: Mapping[str, float] | None = None, min_votes: float = 1.0) -> pd.DataFrame:
    """One detections frame from several (experiment, particle_type, x, y, z, score) frames; see the module doc."""
    weights = dict(weights) if weights is not None else {name: 1.0 for name in sources}
    check_fusion(method, weights, sources)
    names = list(sources)
    df = union(sources)
    if df.empty:
        return df
    labels = cluster_labels(df, eps_frac)
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


def fusion_settings(cfg: Mapping | None) -> dict:
    """A config's ``fusion`` section over the defaults, unknown keys refused."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULT_FUSION))
    if unknown:
        raise ConfigError(f"fusion has unknown key(s) {', '.join(unknown)}; valid: {', '.join(DEFAULT_FUSION)}")
    return {**DEFAULT_FUSION, **cfg}


def fused_candidates(sources: Mapping[str, pd.DataFrame], fusion_cfg: Mapping | None,
                     post_cfg: Mapping) -> pd.DataFrame:
    """Fuse, then the U-Net path's post-processing (merge / dbscan / hard-particle offsets) from ``post_cfg``."""
    return postprocess(fuse(sources, **fusion_settings(fusion_cfg)), post_cfg)
