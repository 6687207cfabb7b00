"""Resumable prediction: every finished run's detections in a part file under ``<out>.parts/``.

A job of thousands of tomograms must survive being stopped. Each run's detections are written, atomically, to
``<run>.csv`` and then ``<run>.json`` (rows, seconds, device: the record that the run is done; a run without it is
predicted again). ``job.json`` says which job the parts belong to (checkpoint bytes, member and source weights,
thresholds, the inference and post-processing settings, the data and split): a rerun with the same arguments
predicts only the runs that are missing, a rerun with other ones is refused until ``--fresh`` clears the parts.
The parts are merged in the plan's run order, so the submission is the one a single uninterrupted job writes, row
for row. Each record also keeps its run's stamp (``DataSource.run_stamp``): a run whose tomogram was written again
since is predicted again.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from czii_kit.errors import ConfigError, PredictionError
from czii_kit.infer.export import weights_digest
from czii_kit.post.peaks import empty_detections
from czii_kit.tables import DETECTION_COLUMNS
from czii_kit.utils.atomic import atomic_path, write_text_atomic

JOB_FILE = "job.json"


def job_key(plan) -> dict:
    """What decides a prediction's rows (not where or how fast it runs): parts of another key are not reused."""
    cfg, runs = plan.cfg, plan.runs
    infer = {k: v for k, v in cfg["infer"].items() if k not in ("device", "batch_size")}
    return {"weights_sha256": weights_digest([c["path"] for c in plan.checkpoints]), "thresholds": plan.thresholds,
            "member_weights": {kind: [w for _, w in group] for kind, group in plan.groups.items()},
            "source_weights": plan.source_weights, "infer": infer, "post": cfg["post"], "fusion": cfg["fusion"],
            "data": str(runs.data), "split": runs.split}


def run_stamp(plan, run: str) -> str | None:
    return plan.runs.data.run_stamp(run, plan.runs.split, plan.cfg["data"])


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class PartStore:
    """The part files of one prediction job."""

    folder: Path

    def open(self, key: Mapping, fresh: bool = False) -> list[str]:
        """Make the folder ready for the job ``key``; returns the runs already done. Refuses parts of another job
        (or a folder that is not a parts folder) unless ``fresh``, which deletes the parts (and nothing else)."""
        job = self.folder / JOB_FILE
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder} is a file, where prediction keeps its parts; move it, or choose another "
                              "--out")
        if self.folder.is_dir() and any(self.folder.iterdir()) and not job.is_file():
            raise ConfigError(f"{self.folder} exists and is not a parts folder of czii predict (no {JOB_FILE}); move "
                              "it, or choose another --out (nothing was deleted)")
        if fresh:
            self.clear()
        if job.is_file() and _canonical(json.loads(job.read_text())) != _canonical(key):
            raise ConfigError(f"{self.folder} holds the parts of a prediction with other checkpoints, thresholds, "
                              "settings or data; rerun with --fresh to start this one over (its parts are deleted), or "
                              "choose another --out")
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(job, _canonical(key))
        return sorted(self.done())

    def clear(self) -> None:
        """Delete the part files and job.json of this folder, then the folder if that left it empty."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.suffix in (".csv", ".json") and path.is_file():
                path.unlink()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()

    def done(self) -> set[str]:
        return {p.stem for p in self.folder.glob("*.json") if p.name != JOB_FILE}

    def write(self, run: str, detections: pd.DataFrame, record: Mapping) -> None:
        """The run's detections, then its record (last: a run is done once its record exists)."""
        with atomic_path(self.folder / f"{run}.csv") as tmp:
            detections[DETECTION_COLUMNS].to_csv(tmp, index=False)
        write_text_atomic(self.folder / f"{run}.json", json.dumps({"run": run, "rows": len(detections), **record}))

    def record(self, run: str) -> dict:
        return json.loads((self.folder / f"{run}.json").read_text())

    def read(self, runs: Sequence[str]) -> pd.DataFrame:
        """The detections of ``runs``, in that order (exactly the numbers that were written)."""
        frames = []
        for run in runs:
            path = self.folder / f"{run}.csv"
            frame = pd.read_csv(path, dtype={"experiment": str, "particle_type": str}, float_precision="round_trip")
            if len(frame) != self.record(run)["rows"]:
                raise PredictionError(f"{path} holds {len(frame)} rows, its record says {self.record(run)['rows']}; "
                                      "delete both files of that run (or rerun with --fresh) to predict it again")
            frames.append(frame)
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else empty_detections()
