"""Leave-one-tomogram-out folds: fold K holds out sorted train run K (as the top teams did)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from czii_kit.errors import ConfigError


def split_runs(runs: list[str], fold: int, fold_file: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(train runs, validation runs) for a fold; fold -1 trains on everything with no validation."""
    runs = sorted(runs)
    if fold_file is not None:
        return _split_from_file(runs, fold, Path(fold_file))
    if fold == -1:
        return runs, []
    if not 0 <= fold < len(runs):
        raise ConfigError(
            f"fold {fold} is out of range: there are {len(runs)} train runs, so use --fold 0..{len(runs) - 1} "
            "(or -1 to train on all runs without validation)"
        )
    return [r for i, r in enumerate(runs) if i != fold], [runs[fold]]


def _split_from_file(runs: list[str], fold: int, path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise ConfigError(f"fold file {path} does not exist")
    table = pd.read_csv(path)
    if not {"run", "fold"} <= set(table.columns):
        raise ConfigError(f"fold file {path} needs columns 'run' and 'fold' (has {', '.join(table.columns)})")
    unknown = sorted(set(table["run"]) - set(runs))
    if unknown:
        raise ConfigError(f"fold file {path} names runs that are not in the data: {', '.join(unknown)}")
    fold_of = dict(zip(table["run"], table["fold"].astype(int)))
    if fold == -1:
        return runs, []
    folds = sorted(set(fold_of.values()))
    if fold not in folds:
        raise ConfigError(f"fold {fold} is not in {path} (folds there: {folds})")
    val = [r for r in runs if fold_of.get(r) == fold]
    return [r for r in runs if r not in val], val
