"""Predict thousands of tomograms on a Ray cluster: the plan's runs sharded over actors, resumable.

One actor per GPU (or per CPU worker) loads the plan's members once (engines built or found, CuPy probed: the
same ``set_up`` as one machine), then takes one run at a time from this process, reads the tomogram itself
(the Kaggle directory or copick project must be on storage every node sees), predicts it with the one per-run
path (``czii_kit.infer.split.predict_one``) and writes its detections to a part file (``czii_kit.infer.parts``).
Only a short record travels back. A rerun with the same arguments predicts only the runs without a part; the
parts are merged in the plan's run order into the detections the single-process path returns, row for row.

A run that fails is reported and the others go on (a graph engine's failure is retried on torch inside the
actor, as on one machine); an actor that dies (a lost node) is restarted once and its run tried again.

This module imports nothing heavy (torch, the inference package) at the top: ``czii predict --ray`` starts the
actors (``RayPrediction.start_early``) before this process imports torch and builds the plan, so that the
actors' own start (importing torch, ~2 s on a small machine) runs alongside (docs/scale.md).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from czii_kit.errors import ConfigError, PredictionError, first_few
from czii_kit.scale.session import (Resources, check_fits, describe_failure, ray_session, refuse_time_budget,
                                    require_ray, resources_for)
from czii_kit.utils.progress import progress_bar

if TYPE_CHECKING:
    from czii_kit.infer.plan import PredictionPlan
    from czii_kit.infer.split import SplitResult

DEFAULT_CPUS_PER_WORKER = 2.0
WORKER_FLAGS = "--cpus-per-worker / --gpus-per-worker"


def parts_folder(out: str | Path) -> Path:
    """``submission.csv`` -> ``submission.csv.parts``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


class RunWorker:
    """A Ray actor: the plan's members loaded once (on its first call) on this worker's device; predicts one run per
    call. The plan comes with every call as ``[ObjectRef]`` (a few bytes), not as a constructor argument: Ray warns on
    every job that a restarted actor would lose such an argument, while a restarted actor here loads again from the
    reference its next call carries (the driver keeps the plan alive for the whole job)."""

    def __init__(self, folder: str, threads: int) -> None:
        import torch

        from czii_kit.infer import split  # the inference package, imported while nothing waits on this actor yet
        from czii_kit.infer.parts import PartStore

        torch.set_num_threads(threads)
        self.split = split
        self.store = PartStore(Path(folder))
        self.predictors = None

    def _load(self, plan_box: list) -> None:
        """The plan's members on this worker's device, once."""
        if self.predictors is not None:
            return
        import ray

        plan: PredictionPlan = ray.get(plan_box[0])
        self.device = self.split.available_devices(plan.cfg["infer"]["device"])[0]  # Ray shows the actor its GPU(s)
        started = time.monotonic()
        self.predictors = self.split.Predictors(plan)
        self.engine, self.notes = self.split.set_up(self.predictors, [self.device], plan.cfg["infer"]["engine"], print)
        self.setup_seconds = time.monotonic() - started

    def ready(self, plan_box: list) -> dict:
        import socket

        self._load(plan_box)
        return {"device": self.device, "engine": self.engine, "notes": self.notes, "host": socket.gethostname(),
                "setup_seconds": self.setup_seconds}

    def predict(self, run: str, plan_box: list) -> dict:
        from czii_kit.infer.parts import run_stamp

        self._load(plan_box)
        notes: list[str] = []
        stamp = run_stamp(self.predictors.plan, run)  # before the read: a store written meanwhile is seen as changed
        found, seconds = self.split.predict_one(self.predictors, run, self.device, self.engine, note=notes.append)
        record = {"seconds": seconds, "device": self.device, "engine": self.engine, "notes": notes, "stamp": stamp}
        self.store.write(run, found, record)
        return {"run": run, "rows": len(found), **record}


@dataclass
class RayPrediction:
    """Predict's executor on Ray (see ``czii_kit.predict.predict_submission``): ``folder`` holds the parts,
    ``fresh`` deletes earlier parts first; ``gpus`` None means one GPU per worker when the cluster has GPUs and the
    device allows, else CPU workers; ``workers`` None means as many as the cluster's resources hold."""

    address: str
    folder: str
    fresh: bool = False
    cpus: float = DEFAULT_CPUS_PER_WORKER
    gpus: float | None = None
    workers: int | None = None
    early: tuple[Resources, list] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        require_ray()  # said when the command starts, not after the checkpoints are loaded

    def devices(self, device: str) -> list[str]:
        """What the runs will run on, said before any work; refuses a device the workers will not have."""
        if device == "cpu" and self.gpus:
            raise ConfigError("--device cpu with --gpus-per-worker > 0 reserves GPUs nobody uses; drop one of them")
        if device.startswith("cuda") and self.gpus == 0:
            raise ConfigError(f"--device {device} with --ray needs GPU workers: --gpus-per-worker 1 (or --device auto)")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        return [f"Ray workers at {self.address}"]

    def start_early(self, ray, device: str | None) -> None:
        """Start the actors now, before the plan exists, where what they ask for does not hang on it (``device``
        None: the checkpoint's config decides, which on a cluster with GPUs decides whether they take one): each
        imports torch while this process imports it and builds the plan. ``__call__`` takes them, or stops them."""
        self.devices(device or "auto")  # its refusals before Ray is asked for anything
        if self.gpus is None and device is None and ray.cluster_resources().get("GPU", 0) >= 1:
            return
        resources = resources_for(ray, self.cpus, self.gpus, device or "cpu", self.address)
        check_fits(ray, resources, "prediction", WORKER_FLAGS)
        self.early = resources, self._actors(ray, resources, self._worker_count(ray, resources))

    def _actors(self, ray, resources: Resources, count: int) -> list:
        actor = ray.remote(RunWorker).options(**resources.options(), max_restarts=1, max_task_retries=1)
        return [actor.remote(self.folder, resources.threads) for _ in range(count)]

    def _worker_count(self, ray, resources: Resources, runs: int | None = None) -> int:
        """--workers, or as many as the cluster holds; at most one per run to predict (when known). More than the
        cluster holds is refused: the job waits for every worker to load before the first run, so it would wait
        forever."""
        total = ray.cluster_resources()
        holds = int(total.get("GPU", 0) // resources.gpus if resources.gpus else total.get("CPU", 0) // resources.cpus)
        if self.workers is not None and self.workers > holds:
            raise ConfigError(f"--workers {self.workers}: the cluster holds {holds} worker(s) of {resources.cpus:g} "
                              f"CPU(s) and {resources.gpus:g} GPU(s) ({total.get('CPU', 0):g} CPU(s), "
                              f"{total.get('GPU', 0):g} GPU(s) in all); lower --workers or --cpus-per-worker, or add "
                              "nodes")
        wanted = self.workers if self.workers is not None else holds
        return int(max(1, min(wanted, runs) if runs is not None else wanted))

    def _workers_for(self, ray, resources: Resources, count: int) -> list:
        """``count`` actors asking for ``resources``: those started early when they ask for the same (the rest
        stopped), new ones otherwise."""
        started = self.early[1] if self.early and self.early[0] == resources else []
        if len(started) >= count:
            self.early = resources, started[count:]
            self.release(ray)
            return started[:count]
        self.release(ray)
        return self._actors(ray, resources, count)

    def release(self, ray) -> None:
        """Stop the actors started early and never used (every run already predicted, or the job refused)."""
        actors, self.early = (self.early[1] if self.early else []), None
        for actor in actors:
            ray.kill(actor, no_restart=True)

    def __call__(self, plan: PredictionPlan, devices: Sequence[str], *, time_budget_h: float | None = None,
                 progress: bool = True, report: Callable[[str], None] = print) -> SplitResult:
        from czii_kit.infer.parts import PartStore, job_key, run_stamp
        from czii_kit.infer.split import SplitResult

        refuse_time_budget(time_budget_h)
        store = PartStore(Path(self.folder))
        done = set(store.open(job_key(plan), self.fresh))
        names, skipped = plan.runs.names, plan.runs.skipped
        changed = sorted(run for run in done & set(names) if store.record(run).get("stamp") != run_stamp(plan, run))
        if changed:
            report(f"{len(changed)} run(s) were written again since they were predicted ({first_few(changed)}): "
                   "predicting them again")
            done -= set(changed)
        todo = [run for run in plan.runs.to_predict if run not in done]
        report(f"{len(done & set(names))} of {len(names)} run(s) already predicted in {self.folder}; "
               f"{len(todo)} to predict through Ray")
        seconds = {run: float(store.record(run)["seconds"]) for run in names if run in done}
        failures: dict[str, str] = {}
        decisions: list[str] = []
        engine, setup_seconds = plan.cfg["infer"]["engine"], 0.0
        if todo or self.early:
            with ray_session(self.address, report) as ray:
                try:
                    if todo:
                        engine, setup_seconds = self._run(ray, plan, todo, seconds, failures, decisions, progress,
                                                          report)
                finally:
                    self.release(ray)
        for run, why in skipped.items():
            failures.setdefault(run, why)
        failures = {run: failures[run] for run in names if run in failures}
        finished = [run for run in names if run in seconds]
        return SplitResult(store.read(finished), seconds, failures, decisions, engine, setup_seconds)

    def _run(self, ray, plan: PredictionPlan, todo: list[str], seconds: dict, failures: dict, decisions: list[str],
             progress: bool, report: Callable[[str], None]) -> tuple[str, float]:
        """The runs of ``todo`` on the workers; (engine, setup seconds)."""
        resources = resources_for(ray, self.cpus, self.gpus, plan.cfg["infer"]["device"], self.address)
        check_fits(ray, resources, "prediction", WORKER_FLAGS)
        workers = self._workers_for(ray, resources, self._worker_count(ray, resources, len(todo)))
        plan_box = [ray.put(plan)]
        engine, setup_seconds, workers = self._start(ray, workers, plan_box, decisions, report)
        self._predict(ray, workers, plan_box, todo, seconds, failures, decisions, progress, report)
        return engine, setup_seconds

    @staticmethod
    def _start(ray, workers: list, plan_box: list, decisions: list[str], report: Callable[[str], None]):
        """Wait for every actor to load its members; said once per distinct note. Actors that fail to start are
        dropped; none left is an error before any run."""
        alive, errors, ready = [], [], []
        for worker, ref in [(w, w.ready.remote(plan_box)) for w in workers]:
            try:
                ready.append(ray.get(ref))
                alive.append(worker)
            except Exception as error:  # noqa: BLE001 -- one bad node must not stop the job
                errors.append(describe_failure(error))
        if not alive:
            raise PredictionError(f"no Ray worker could load the checkpoints: {errors[0]}")
        for note in dict.fromkeys(n for r in ready for n in r["notes"]):
            decisions.append(note)
        for error in dict.fromkeys(errors):
            report(f"WARNING: a Ray worker did not start ({error}); going on with {len(alive)}")
        hosts, engines = sorted({r["host"] for r in ready}), sorted({r["engine"] for r in ready})
        devices, setup = sorted({r["device"] for r in ready}), max(r["setup_seconds"] for r in ready)
        report(f"set up {len(alive)} Ray worker(s) on {len(hosts)} node(s) ({', '.join(devices)}) with engine "
               f"{', '.join(engines)} in {setup:.1f} s")
        return engines[0] if len(engines) == 1 else ",".join(engines), setup, alive

    @staticmethod
    def _predict(ray, workers: list, plan_box: list, todo: list[str], seconds: dict, failures: dict,
                 decisions: list[str], progress: bool, report: Callable[[str], None]) -> None:
        """One run at a time per actor, the next as soon as it is free; records land in ``seconds`` / ``failures``."""
        queue = list(reversed(todo))
        running: dict = {}

        def give(worker) -> None:
            if queue:
                run = queue.pop()
                running[worker.predict.remote(run, plan_box)] = (run, worker)

        for worker in workers:
            give(worker)
        with progress_bar(total=len(todo), desc="runs", unit="run", enabled=progress) as bar:
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                run, worker = running.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayActorError as error:  # the actor is gone (after its one restart)
                    failures[run] = describe_failure(error)
                    report(f"FAILED {run}: its Ray worker died ({failures[run]})")
                    workers.remove(worker)
                    if not workers:
                        for left in reversed(queue):
                            failures[left] = "no Ray worker left to predict it"
                        queue.clear()
                    bar.update()
                    continue
                except Exception as error:  # noqa: BLE001 -- the run failed, the worker lives on
                    failures[run] = describe_failure(error)
                    report(f"FAILED {run}: {failures[run]}")
                else:
                    seconds[run] = record["seconds"]
                    for note in record["notes"]:
                        report(f"WARNING: {note}")
                        decisions.append(note)
                    report(f"{run}: {record['rows']} particles in {record['seconds']:.1f} s on {record['device']}")
                bar.update()
                give(worker)
