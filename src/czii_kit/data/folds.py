"""Leave-one-tomogram-out folds: fold K holds out sorted train run K (as the top teams did)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from czii_kit.errors import ConfigError, DataError


def chosen_runs(runs: Sequence[str], wanted: Sequence[str] | None, where: str = "",
                key: str = "data.runs") -> list[str]:
    """The train runs the config's ``key`` names (all of ``runs`` when it is null), sorted; an unknown name is an
    error."""
    if wanted is None:
        return sorted(runs)
    if isinstance(wanted, str) or not wanted:
        raise ConfigError(f"{key} must be a non-empty list of run names, e.g. [TS_5_4], or null; got {wanted!r}")
    unknown = sorted(set(wanted) - set(runs))
    if unknown:
        raise DataError(f"{key} names {', '.join(unknown)}, not train runs of {where or 'the data'} (runs there: "
                        f"{', '.join(sorted(runs))}); fix {key}")
    return sorted(set(wanted))


def fold_runs(data, data_cfg: Mapping, fold: int) -> tuple[list[str], list[str]]:
    """(train runs, validation runs) of ``fold`` over the data's train runs that ``data.runs`` keeps: the one split
    training, evaluation, the YOLO slices and the baseline all use."""
    runs = chosen_runs(data.list_runs("train"), data_cfg.get("runs"), str(data))
    return split_runs(runs, fold, data_cfg.get("fold_file"))


def fold_ids(data, data_cfg: Mapping) -> list[int]:
    """Every cross-validation fold of the data (``--folds all``): one per kept train run, or the fold file's."""
    runs = chosen_runs(data.list_runs("train"), data_cfg.get("runs"), str(data))
    fold_file = data_cfg.get("fold_file")
    if fold_file is None:
        return list(range(len(runs)))
    return sorted(set(_read_fold_file(runs, Path(fold_file)).values()))


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


def _read_fold_file(runs: list[str], path: Path) -> dict[str, int]:
    """run -> fold from a fold file (columns run, fold), checked against the data's runs."""
    if not path.is_file():
        raise ConfigError(f"fold file {path} does not exist")
    table = pd.read_csv(path)
    if not {"run", "fold"} <= set(table.columns):
        raise ConfigError(f"fold file {path} needs columns 'run' and 'fold' (has {', '.join(table.columns)})")
    unknown = sorted(set(table["run"]) - set(runs))
    if unknown:
        raise ConfigError(f"fold file {path} (data.fold_file) names runs that are not in the data: "
                          f"{', '.join(unknown)}; it belongs to another dataset (czii evaluate scores fold models "
                          "on the data they were trained on; czii train takes --set data.fold_file=null for "
                          "leave-one-run-out folds of this data's sorted runs)")
    return dict(zip(table["run"], table["fold"].astype(int)))


def _split_from_file(runs: list[str], fold: int, path: Path) -> tuple[list[str], list[str]]:
    fold_of = _read_fold_file(runs, path)
    if fold == -1:
        return runs, []
    folds = sorted(set(fold_of.values()))
    if fold not in folds:
        raise ConfigError(f"fold {fold} is not in {path} (folds there: {folds})")
    val = [r for r in runs if fold_of.get(r) == fold]
    return [r for r in runs if r not in val], val
