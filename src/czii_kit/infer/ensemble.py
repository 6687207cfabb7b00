"""What makes averaging members meaningful, and a fold ensemble folded into one module.

Averaging only makes sense when every member predicts the same classes in the same order,
on the same output grid, from identically normalized input: ``check_compatible`` enforces
that from checkpoint metadata before any inference runs. The averaging itself happens inside
the sliding-window loop (``czii_kit.infer.sliding_window.predict_volume``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from czii_kit.errors import CheckpointError, ConfigError

COMPATIBILITY_FIELDS = ("classes", "normalization", "stride")  # keys of a czii-kit checkpoint


class WeightedMean(torch.nn.Module):
    """Several probability models as one: the weighted mean of their outputs (weights normalized to sum 1).

    What ``tools/export.py --fold-ensemble`` exports, so a graph engine runs a fold ensemble in one call.
    """

    def __init__(self, members: Sequence[torch.nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ConfigError(f"got {len(weights)} weights for {len(members)} ensemble members")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ConfigError(f"ensemble weights must be positive numbers, got {list(weights)}")
        strides = {int(m.output_stride) for m in members}
        if len(strides) != 1:
            raise ConfigError(f"ensemble members have different output strides {sorted(strides)}")
        self.members = torch.nn.ModuleList(members)
        total = float(sum(weights))
        self.shares = [float(w) / total for w in weights]
        self.output_stride = strides.pop()
        self.input_multiple = max(int(m.input_multiple) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x) * self.shares[0]
        for member, share in zip(self.members[1:], self.shares[1:]):
            out = out + member(x) * share
        return out


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
