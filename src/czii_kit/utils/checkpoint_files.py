"""Which checkpoint files a --weights argument names, without importing torch: a job checks its --weights with
this before it starts anything slow (Ray, the model), and loads them later through ``czii_kit.checkpoints``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from czii_kit.errors import CheckpointError


def find_checkpoints(weights: str | Path, folds: Sequence[int] | None = None) -> list[Path]:
    """fold*.pt files of an experiment directory (or a single checkpoint file)."""
    weights = Path(weights)
    if weights.is_file():
        return [weights]
    if not weights.is_dir():
        raise CheckpointError(f"weights {weights} do not exist; pass a checkpoint file or an experiment directory")
    found = sorted(p for p in weights.glob("fold*.pt") if not p.stem.endswith("_last"))
    if folds is not None:
        have = [int(p.stem[4:]) for p in found]
        found = [p for p in found if int(p.stem[4:]) in folds]
        if not found:
            raise CheckpointError(f"none of folds {list(folds)} in {weights} (it has folds {have}); fix --folds")
    if not found:
        raise CheckpointError(f"no fold*.pt checkpoints in {weights}; train with "
                              f"`czii train --out {weights}`")
    return found
