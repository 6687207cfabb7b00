"""Weighted averaging of per-model probability volumes, and the checks that make it meaningful.

Averaging only makes sense when every member predicts the same classes in the same order,
on the same output grid, from identically normalized input: ``check_compatible`` enforces
that from checkpoint metadata before any inference runs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from czii_kit.errors import CheckpointError, ConfigError

COMPATIBILITY_FIELDS = ("classes", "normalization", "stride")  # keys of a czii-kit checkpoint


class EnsembleAccumulator:
    """Running weighted mean of probability arrays: one float32 buffer, whatever the member count.

    Updates go class by class, so the only temporary is one (Z, Y, X) slice, not a whole
    (C, Z, Y, X) volume (1.75 GB for a full tomogram at stride 1).
    """

    def __init__(self) -> None:
        self._mean: np.ndarray | None = None
        self._total_weight = 0.0
        self._first_name = ""
        self.count = 0

    def add(self, prob: np.ndarray, weight: float = 1.0, name: str | None = None) -> None:
        """Add one member's (C, Z, Y, X) probabilities with a positive weight."""
        name = name or f"member {self.count}"
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"ensemble weight of {name} must be a positive number, got {weight}")
        prob = np.asarray(prob, dtype=np.float32)
        if self._mean is None:
            self._mean = prob.copy()
            self._first_name = name
        elif prob.shape != self._mean.shape:
            raise ConfigError(
                f"cannot average {name} of shape {prob.shape} with {self._first_name} of shape "
                f"{self._mean.shape}; members must share classes and output stride"
            )
        else:
            share = np.float32(weight / (self._total_weight + weight))
            for mean, member in zip(np.atleast_2d(self._mean), np.atleast_2d(prob)):  # views
                mean += (member - mean) * share
        self._total_weight += weight
        self.count += 1

    def result(self) -> np.ndarray:
        """The weighted mean (weights normalized to sum 1); the buffer itself, not a copy."""
        if self._mean is None:
            raise ConfigError("ensemble is empty: add at least one member's probabilities")
        return self._mean


def average_probabilities(
    arrays: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """Weighted mean of same-shape arrays; weights default to equal and are normalized."""
    weights = [1.0] * len(arrays) if weights is None else list(weights)
    if len(weights) != len(arrays):
        raise ConfigError(f"got {len(weights)} ensemble weights for {len(arrays)} members")
    accumulator = EnsembleAccumulator()
    for array, weight in zip(arrays, weights):
        accumulator.add(array, weight)
    return accumulator.result()


def check_compatible(metas: Sequence[dict], names: Sequence[str] | None = None) -> None:
    """Every member must match the first in classes, normalization and output stride.

    ``names`` label the members in errors; default: each meta's "path" (set by
    load_checkpoint), else 'member i'.
    """
    if names is None:
        names = [str(meta.get("path", f"member {i}")) for i, meta in enumerate(metas)]
    if len(names) != len(metas):
        raise ConfigError(f"got {len(names)} names for {len(metas)} ensemble members")
    for name, meta in zip(names, metas):
        missing = [field for field in COMPATIBILITY_FIELDS if field not in meta]
        if missing:
            raise CheckpointError(f"checkpoint {name} lacks {', '.join(missing)}; re-train or re-export it")
    for name, meta in zip(names[1:], metas[1:]):
        for field in COMPATIBILITY_FIELDS:
            if _canonical(meta[field]) != _canonical(metas[0][field]):
                raise ConfigError(
                    f"checkpoints {names[0]} and {name} cannot be ensembled: {field} differs "
                    f"({metas[0][field]!r} vs {meta[field]!r}); ensemble only models "
                    f"trained with the same {field}"
                )


def _canonical(value):
    """Tuples and lists compare equal (metadata may come from JSON or from Python)."""
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value
