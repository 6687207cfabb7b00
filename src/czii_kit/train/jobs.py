"""Several folds as one job (``czii train --folds all``): here one after the other, or each fold a Ray trial.

A fold that finished is skipped on a rerun, a fold that was stopped halfway resumes from its ``fold{K}_last.pt``,
and the rest start fresh; so rerunning the same command after a crash, a lost node or a pre-empted allocation
trains only what is missing. Every check that can fail (the data, the fold numbers, an experiment folder of
another config) runs here, before the first fold starts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from czii_kit import checkpoints
from czii_kit.config import with_particle_set
from czii_kit.data.folds import fold_ids, fold_runs
from czii_kit.data.open_data import open_data
from czii_kit.errors import ConfigError
from czii_kit.infer.kinds import YoloKind, kind_of
from czii_kit.train.experiment import FoldPaths, guard_output
from czii_kit.utils.jobs import TrialRunner, in_process


@dataclass(frozen=True)
class FoldJob:
    """One fold to train: everything a worker on another machine needs (plain values, absolute paths)."""

    cfg: dict
    fold: int
    data: str
    out: str
    thresholds_from: str | None = None
    progress: bool = True


def fold_finished(cfg: dict, out: str | Path, fold: int) -> bool:
    """Whether fold ``fold`` of the experiment in ``out`` trained to its end (or to its time limit)."""
    paths = FoldPaths(Path(out), fold)
    if kind_of(cfg) is YoloKind:  # the YOLO trainer writes fold{K}.pt once, at its end
        return paths.best.is_file()
    return paths.last.is_file() and bool(checkpoints.load_state(paths.last).get("finished"))


def train_one(job: FoldJob) -> dict:
    """Train (or resume) one fold; returns a small summary that can travel back from a Ray worker."""
    from czii_kit.train import trainer_for

    paths = FoldPaths(Path(job.out), job.fold)
    if kind_of(job.cfg) is not YoloKind and paths.nothing_to_resume:
        # the first epoch wrote its best checkpoint and stopped before its resume state: nothing to resume from
        print(f"fold {job.fold}: {paths.best} is left from an attempt that stopped in its first epoch (no "
              f"{paths.last.name}); training the fold again")
        paths.best.unlink()
    result = trainer_for(job.cfg)(job.cfg, job.fold, job.data, job.out, resume=paths.last.exists(),
                                  progress=job.progress, thresholds_from=job.thresholds_from)
    log = result["log"]
    return {"fold": job.fold, "score": float(result["best"]["score"]), "best_epoch": result["best"].get("epoch"),
            "epochs": len(log), "minutes": float(log["seconds"].sum() / 60) if len(log) else 0.0,
            "checkpoint": str(paths.best)}


def plan_folds(cfg: dict, folds: Sequence[int] | None, data, out: str | Path) -> tuple[list[int], list[int]]:
    """(folds to train, folds already finished) of ``folds`` (None: every fold of the data), checked before any
    training: each fold exists, and ``out`` holds no experiment of another config."""
    source = open_data(data)
    cfg = with_particle_set(cfg, source.particles)
    wanted = fold_ids(source, cfg["data"]) if folds is None else list(dict.fromkeys(folds))
    if -1 in wanted:
        raise ConfigError("--folds lists the cross-validation folds; train the full-data model (fold -1) on its own "
                          "with --fold -1, after the folds (it takes their tuned thresholds with --thresholds-from)")
    for fold in wanted:
        fold_runs(source, cfg["data"], fold)  # an unknown fold fails here, naming the valid ones
        guard_output(FoldPaths(Path(out), fold), cfg, resume=True)
    finished = [fold for fold in wanted if fold_finished(cfg, out, fold)]
    return [fold for fold in wanted if fold not in finished], finished


def train_folds(cfg: dict, folds: Sequence[int] | None, data, out: str | Path, *, runner: TrialRunner = in_process,
                thresholds_from: str | None = None, progress: bool = True,
                report: Callable[[str], None] = print) -> tuple[dict[int, dict], dict[int, str]]:
    """Train every fold of ``folds`` that has not finished in ``out``; returns ({fold: summary}, {fold: why it
    failed}). ``runner`` runs the folds (here one after the other, or as Ray trials)."""
    out = Path(out).resolve()
    todo, finished = plan_folds(cfg, folds, data, out)
    if finished:
        report(f"skipping fold(s) {', '.join(map(str, finished))}: already finished in {out}")
    data_location = str(Path(str(open_data(data))).resolve())
    jobs = {f"fold {fold}": FoldJob(cfg, fold, data_location, str(out), thresholds_from, progress) for fold in todo}
    done: dict[int, dict] = {}
    failures = runner(train_one, jobs, lambda name, summary: done.__setitem__(jobs[name].fold, summary))
    return dict(sorted(done.items())), {jobs[name].fold: why for name, why in failures.items()}
