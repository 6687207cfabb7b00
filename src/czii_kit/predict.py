"""The prediction job behind ``tools/predict.py`` and the Kaggle notebook: checkpoints -> submission.csv
(+ copick picks, + RELION STAR files).

``predict_submission`` takes keyword arguments (the notebook calls it directly; the command-line
tool only parses arguments), makes the prediction plan (``czii_kit.infer.plan``) and checks every
output before the first tomogram is read, predicts the split with ``czii_kit.infer.split`` and
writes the submission atomically.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from czii_kit.checkpoints import describe_lineage, unfinished_training
from czii_kit.data.open_data import open_data
from czii_kit.data.source import DataSource
from czii_kit.data.star import check_star_folder, write_star_files
from czii_kit.errors import ConfigError, PredictionError
from czii_kit.infer.export import EngineFiles
from czii_kit.infer.plan import PredictionPlan
from czii_kit.infer.split import LocalSplit, SplitResult
from czii_kit.submission import check_submission_out, write_submission


@dataclass
class PredictionReport:
    out: Path
    result: SplitResult
    runs: list[str]
    thresholds: dict[str, float]
    seconds: float
    score: float | None = None
    table: pd.DataFrame | None = None

    @property
    def missing(self) -> dict[str, str]:
        """Runs without predictions in the submission: run -> why."""
        return dict(self.result.failures)


def missing_runs_table(failures: Mapping[str, str], n_runs: int, out: Path) -> str:
    """A block nobody scrolls past: which runs have no predictions, and why."""
    bar = "!" * 100
    lines = [bar, f"!!! {len(failures)} of {n_runs} run(s) have NO predictions in {out}: the submission is partial",
             *(f"!!!   {run}: {why}" for run, why in failures.items()), bar]
    return "\n".join(lines)


def copick_target(data: DataSource, copick_out: str | None, runs: Sequence[str],
                  overwrite: bool) -> tuple[str, str] | None:
    """(user, session) for --copick-out USER/SESSION, checked against the project before any work."""
    if copick_out is None:
        return None
    from czii_kit.data.copick import CopickProject, check_identity

    if not isinstance(data, CopickProject):
        raise ConfigError(f"--copick-out writes into a copick project, but --data {data} is a directory; pass the "
                          "project's copick config JSON as --data (tools/make_copick_project.py makes one)")
    user, _, session = copick_out.partition("/")
    check_identity(user, session)
    data.check_free(runs, user, session, overwrite)
    return user, session


def predict_submission(*, weights: Sequence[str | Path], data: str | Path | DataSource, split: str = "test",
                       out: str | Path = "submission.csv", device: str | None = None, engine: str | None = None,
                       tta: str | None = None, time_budget_h: float | None = None, runs: Sequence[str] | None = None,
                       folds: Sequence[int] | None = None, member_weights: Sequence[float] | None = None,
                       thresholds: str | Mapping[str, float] | None = None, thresholds_from: str | Path | None = None,
                       overrides: Sequence[str] = (), engine_cache: str | Path = "build/engines",
                       prebuilt_engines: Sequence[str | Path] = (), copick_out: str | None = None,
                       star_out: str | Path | None = None, overwrite: bool = False, default_fusion: bool = False,
                       score: bool = False, progress: bool = True, executor=None,
                       report: Callable[[str], None] = print) -> PredictionReport:
    """Predict every run of ``split`` of ``data`` with the checkpoints of ``weights``; write ``out`` (and, when asked,
    copick picks of USER/SESSION into the project, and one RELION STAR file per run into ``star_out``).

    Thresholds: the checkpoints' own (mean over members) < a thresholds file from tools/evaluate.py
    (``thresholds_from``, which also brings per-class source weights) < explicit ``thresholds``. Several sources
    (U-Net and YOLO) are fused only with tuned source weights, or with the config's when ``default_fusion``.
    ``executor`` runs the runs: this machine's devices (``LocalSplit``, the default) or Ray actors on a cluster
    (``czii_kit.scale.predict.RayPrediction``, resumable); every check above runs first either way.
    """
    out = Path(out)
    data = open_data(data)
    check_submission_out(out, data, overwrite)
    files = EngineFiles(Path(engine_cache), tuple(Path(p) for p in prebuilt_engines))
    plan = PredictionPlan.from_weights(
        weights, folds, overrides=overrides, tta=tta, engine=engine, device=device, member_weights=member_weights,
        thresholds=thresholds, thresholds_from=thresholds_from, default_fusion=default_fusion,
        files=files).on_runs(data, split, runs)
    plan.check_fusion()
    run_names, particles = plan.runs.names, plan.particles
    target = copick_target(data, copick_out, run_names, overwrite)
    if star_out is not None:
        check_star_folder(star_out, run_names, overwrite)
    executor = executor or LocalSplit()
    devices = executor.devices(plan.cfg["infer"]["device"])
    solution = data.solution(split, run_names, plan.cfg["data"]) if score else None
    warning = plan.warning()
    if warning:
        report(warning)
    for ckpt in plan.checkpoints:
        if ckpt.get("init_from"):
            report(f"{ckpt['path']}: {describe_lineage(ckpt['init_from'])}")
        stopped = unfinished_training(ckpt)
        if stopped:
            report(f"WARNING: {stopped}")
    for run, why in plan.runs.skipped.items():
        report(f"WARNING: {run} will be skipped, nothing is predicted for it: {why}")
    report(f"{len(plan.checkpoints)} checkpoint(s), engine {plan.cfg['infer']['engine']}, TTA "
           f"{plan.cfg['infer']['tta']}, {len(run_names)} run(s) of {data} on {', '.join(devices)}; thresholds: "
           f"{plan.threshold_source()}")
    t0 = time.monotonic()
    result = executor(plan, devices, time_budget_h=time_budget_h, progress=progress, report=report)
    for line in result.decisions:
        report(f"note: {line}")
    if result.failures and not result.seconds:
        run, why = next(iter(result.failures.items()))
        raise PredictionError(f"every run failed, so no submission was written; first error: {run}: {why}; see the "
                              "log above for each run")
    write_submission(result.detections, out, particles)
    elapsed = time.monotonic() - t0
    mean = sum(result.seconds.values()) / max(1, len(result.seconds))
    report(f"wrote {out}: {len(result.detections)} rows from {len(result.seconds)} run(s) in {elapsed:.1f} s "
           f"({mean:.1f} s per run)")
    if result.detections.empty:
        report(f"WARNING: {out} has no rows: no candidate passed the thresholds in any run (it would score 0); check "
               "the thresholds and the models (czii predict --split train --score)")
    finished = [run for run in run_names if run in result.seconds]
    if target is not None:
        files = data.write_picks(result.detections, *target, overwrite=True)  # checked free (or --overwrite) above
        report(f"wrote {files} copick pick file(s) of {target[0]}/{target[1]} into {data}")
    if star_out is not None:
        paths = write_star_files(result.detections, star_out, {r: plan.runs.geometry[r] for r in finished},
                                 particles)
        report(f"wrote {len(paths)} RELION STAR file(s) into {star_out}")
    outcome = PredictionReport(out, result, run_names, plan.thresholds, elapsed)
    if solution is not None:
        from czii_kit.metric import format_table, score_table, table_score

        outcome.table = score_table(solution, result.detections, particles)
        outcome.score = table_score(outcome.table)
        report(format_table(outcome.table, outcome.score))
    for run, err in result.failures.items():
        report(f"FAILED {run}: {err}")
    if result.failures:
        report(missing_runs_table(result.failures, len(run_names), out))
    return outcome
