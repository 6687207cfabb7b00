"""The prediction job behind ``tools/predict.py`` and the Kaggle notebook: checkpoints -> submission.csv
(+ copick picks, + RELION STAR files).

``predict_submission`` takes keyword arguments (the notebook calls it directly; the command-line
tool only parses arguments), checks every input and every output before the first tomogram is
read, predicts the split with ``czii_kit.infer.split.predict_split`` and writes the submission
atomically.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit.config import particle_set
from czii_kit.data.source import DataSource, open_data
from czii_kit.data.star import check_star_folder, write_star_files
from czii_kit.errors import ConfigError, DataError, PredictionError
from czii_kit.infer.export import EngineFiles
from czii_kit.infer.kinds import check_spacing, group_by_kind, load_checkpoints
from czii_kit.infer.pipeline import inference_config
from czii_kit.infer.split import SplitResult, available_devices, predict_split
from czii_kit.particles import ParticleSet
from czii_kit.submission import write_submission
from czii_kit.tuning import Tuning, check_sources, guessed_thresholds, load_tuning


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


def parse_thresholds(text: str | Mapping[str, float] | None, base: Mapping[str, float],
                     particles: ParticleSet) -> dict[str, float]:
    """Per-class overrides ('ribosome=0.4,thyroglobulin=0.2' or a mapping) over ``base``."""
    out = dict(base)
    items = text.items() if isinstance(text, Mapping) else (
        item.partition("=")[::2] for item in filter(None, (text or "").split(",")))
    for name, value in items:
        if name not in particles:
            raise ConfigError(f"--thresholds: unknown particle type {name!r}; expected {', '.join(particles.names)}")
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--thresholds: {name}={value!r} needs a number, e.g. {name}=0.3") from None
    return out


def mean_thresholds(ckpts: Sequence[dict], particles: ParticleSet) -> dict[str, float]:
    """Per-class thresholds averaged over the members' own tuned values (each tuned on one held-out run)."""
    return {c: float(np.mean([k["thresholds"][c] for k in ckpts])) for c in particles.names}


def check_output(path: Path) -> None:
    """Fail before hours of inference, not after: ``path`` must be a file name in a writable directory."""
    import tempfile

    if path.is_dir():
        raise DataError(f"--out {path} is a directory; give a file name such as {path / 'submission.csv'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".czii-probe-"):
            pass
    except OSError as e:
        raise DataError(f"--out {path}: cannot write there ({e.strerror or e}); choose another --out") from e


def select_runs(data: DataSource, split: str, runs: Sequence[str] | None) -> list[str]:
    all_runs = data.list_runs(split)
    if not runs:
        return all_runs
    unknown = sorted(set(runs) - set(all_runs))
    if unknown:
        raise DataError(f"--runs: {', '.join(unknown)} not in the {split} split of {data}")
    return list(runs)


def threshold_warning(ckpts: Sequence[dict]) -> str | None:
    """A loud line when a checkpoint only has the config's default thresholds (a full-data model trained without
    ``--thresholds-from``): they are a guess, worth about 0.07 F4 less than thresholds tuned by cross-validation."""
    guessed = guessed_thresholds(ckpts)
    if not guessed:
        return None
    return (f"WARNING: {', '.join(guessed)} carry the config's default thresholds, not tuned ones (trained on every "
            "run without --thresholds-from). Tune them on the fold models with tools/evaluate.py and pass "
            "--thresholds-from REPORT here (or to tools/train_fold.py --fold -1)")


def stored_tuning(ckpts: Sequence[dict]) -> dict | None:
    """Per-class source weights full-data checkpoints carry from their thresholds file (all the same), else None."""
    weights = [c["validation"].get("source_weights") for c in ckpts]
    return weights[0] if weights and weights[0] and all(w == weights[0] for w in weights) else None


def check_classes(particles: ParticleSet, data: DataSource) -> None:
    """The checkpoints predict the data's classes (a copick project's pickable particles, or the CZII six)."""
    if set(particles.names) != set(data.particles.names):
        raise ConfigError(f"the checkpoints predict {', '.join(particles.names)} but {data} has "
                          f"{', '.join(data.particles.names)}; use checkpoints trained on this project's classes")


def check_runs(data: DataSource, split: str, runs: Sequence[str], ckpts: Sequence[dict],
               data_cfg: Mapping) -> dict[str, tuple[tuple[int, ...], float]]:
    """Before any inference: every run's tomogram opens (metadata only) and has the members' voxel size;
    returns run -> (shape, voxel size)."""
    geometry = {}
    for run in runs:
        geometry[run] = data.run_geometry(run, split, data_cfg)
        for ckpt in ckpts:
            check_spacing(ckpt, geometry[run][1], f"run {run} ({data_cfg['recon']}, level {data_cfg['level']})")
    return geometry


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
    if not overwrite:
        data.check_free(runs, user, session)
    return user, session


def predict_submission(*, weights: Sequence[str | Path], data: str | Path | DataSource, split: str = "test",
                       out: str | Path = "submission.csv", device: str | None = None, engine: str | None = None,
                       tta: str | None = None, time_budget_h: float | None = None, runs: Sequence[str] | None = None,
                       folds: Sequence[int] | None = None, member_weights: Sequence[float] | None = None,
                       thresholds: str | Mapping[str, float] | None = None, thresholds_from: str | Path | None = None,
                       overrides: Sequence[str] = (), engine_cache: str | Path = "build/engines",
                       prebuilt_engines: Sequence[str | Path] = (), copick_out: str | None = None,
                       star_out: str | Path | None = None, overwrite: bool = False,
                       score: bool = False, progress: bool = True,
                       report: Callable[[str], None] = print) -> PredictionReport:
    """Predict every run of ``split`` of ``data`` with the checkpoints of ``weights``; write ``out`` (and, when asked,
    copick picks of USER/SESSION into the project, and one RELION STAR file per run into ``star_out``).

    Thresholds: the checkpoints' own (mean over members) < a thresholds file from tools/evaluate.py
    (``thresholds_from``, which also brings per-class source weights) < explicit ``thresholds``.
    """
    out = Path(out)
    check_output(out)
    data = open_data(data)
    ckpts = load_checkpoints(weights, folds)
    cfg = inference_config(ckpts, overrides, tta, engine, device)
    particles = particle_set(cfg)
    check_classes(particles, data)
    tuning: Tuning | None = load_tuning(thresholds_from, particles.names) if thresholds_from else None
    if tuning is not None:
        check_sources(tuning, group_by_kind(ckpts))
    base = tuning.thresholds if tuning else mean_thresholds(ckpts, particles)
    final_thresholds = parse_thresholds(thresholds, base, particles)
    source_weights = tuning.source_weights if tuning else stored_tuning(ckpts)
    warning = None if (tuning or thresholds) else threshold_warning(ckpts)
    group_by_kind(ckpts, member_weights)  # checks the member weights before any work
    run_names = select_runs(data, split, runs)
    geometry = check_runs(data, split, run_names, ckpts, cfg["data"])
    target = copick_target(data, copick_out, run_names, overwrite)
    if star_out is not None:
        check_star_folder(star_out, run_names, overwrite)
    devices = available_devices(cfg["infer"]["device"])
    solution = data.solution(split, run_names, cfg["data"]) if score else None
    if warning:
        report(warning)
    report(f"{len(ckpts)} checkpoint(s), engine {cfg['infer']['engine']}, TTA {cfg['infer']['tta']}, "
           f"{len(run_names)} run(s) of {data} on {', '.join(devices)}"
           + (f", thresholds from {tuning.path}" if tuning else ""))
    t0 = time.monotonic()
    result = predict_split(data, split, run_names, ckpts, cfg, final_thresholds, devices,
                           member_weights=member_weights, source_weights=source_weights,
                           time_budget_h=time_budget_h, progress=progress, report=report,
                           files=EngineFiles(Path(engine_cache), tuple(Path(p) for p in prebuilt_engines)))
    for line in result.decisions:
        report(f"note: {line}")
    if result.failures and not result.seconds:
        raise PredictionError(f"every run failed, so no submission was written; first error: "
                              f"{next(iter(result.failures.items()))}; see the log above for each run")
    write_submission(result.detections, out, particles)
    elapsed = time.monotonic() - t0
    mean = sum(result.seconds.values()) / max(1, len(result.seconds))
    report(f"wrote {out}: {len(result.detections)} rows from {len(result.seconds)} run(s) in {elapsed:.1f} s "
           f"({mean:.1f} s per run)")
    finished = [run for run in run_names if run in result.seconds]
    if target is not None:
        files = data.write_picks(result.detections, *target, overwrite=True)  # checked free (or --overwrite) above
        report(f"wrote {files} copick pick file(s) of {target[0]}/{target[1]} into {data}")
    if star_out is not None:
        paths = write_star_files(result.detections, star_out, {r: geometry[r] for r in finished}, particles)
        report(f"wrote {len(paths)} RELION STAR file(s) into {star_out}")
    outcome = PredictionReport(out, result, run_names, final_thresholds, elapsed)
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
