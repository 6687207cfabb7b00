"""What Ray costs and what it keeps (docs/scale.md): three measurements on this machine.

1. ``overhead``: ``czii predict`` of full-size runs in one process against ``--ray local`` (the same command,
   Ray started by it), wall-clock of the whole command; the submissions must be identical. A third arm, Ray's
   floor (``czii_kit.bench.ray_floor``), runs the one-process command inside one Ray actor: Ray's own cost with no
   design of ours, so that what the kit's Ray path adds to it (or saves) shows apart.
   ``joined``: the same one-process command against ``--ray HOST:PORT`` on a Ray instance started before the
   timings (``czii_kit.bench.ray_instance``): what each job on a running cluster pays, Ray's start-up left out.
2. ``resume``: a copick project of many small runs predicted through Ray, the job killed (SIGKILL to its process
   group, as a lost machine or a scheduler would) once about half the runs have their part, then rerun with the
   same arguments: no run lost, none predicted twice, the submission identical to an uninterrupted one.
3. ``study``: a 2-arm x 3-seed study (a study needs three seeds) through Ray and sequentially: identical
   results.csv (timings aside).

Workers reserve 2 CPUs, the threads of the single process: another thread count changes the floating-point
sums of a convolution, and so the last bits of scores, which a byte-for-byte comparison would see.

Every command is a child process, as a user runs it; its lines go to a log file in the work folder.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from czii_kit.bench import ray_floor, ray_instance
from czii_kit.infer.parts import JOB_FILE
from czii_kit.scale.predict import parts_folder
from czii_kit.scale.session import AUTH_MODE, environment

RAY_FLOOR = [sys.executable, "-m", ray_floor.__name__]  # the one-process command inside one Ray actor
RAY_INSTANCE = [sys.executable, "-m", ray_instance.__name__]  # a Ray held open for other commands to join
PREDICTED = re.compile(r"^(\S+): \d+ particles in ([0-9.]+) s")
SMALL_SHAPE = (48, 96, 96)
SMALL_WINDOW = f"infer.window=[{', '.join(map(str, SMALL_SHAPE))}]"  # one window per small run


def child_env() -> dict[str, str]:
    """This environment without RAY_ADDRESS (which an open Ray session sets): each command starts its own Ray."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def czii(args: Sequence[str], log: Path, command: Sequence[str] = ray_floor.CZII_COMMAND) -> tuple[float, str]:
    """Run ``czii ARGS`` to the end (``command``: how ``czii`` is started); (seconds, its output). A failure raises
    with the log's path."""
    started = time.monotonic()
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=child_env())
    seconds = time.monotonic() - started
    with open(log, "a") as sink:
        sink.write(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"czii {' '.join(map(str, args[:2]))} failed (exit {done.returncode}); see {log}")
    return seconds, done.stdout


def predicted_runs(output: str) -> list[str]:
    """The runs a predict job says it predicted (its 'RUN: N particles in S s' lines)."""
    return [m.group(1) for m in map(PREDICTED.match, output.splitlines()) if m]


def records(out: Path) -> set[str]:
    """Runs with a finished part (their record written)."""
    folder = parts_folder(out)
    return {p.stem for p in folder.glob("*.json") if p.name != JOB_FILE} if folder.is_dir() else set()


def run_seconds(output: str) -> list[float]:
    """The per-run seconds a predict job reports (its 'RUN: N particles in S s' lines), in order."""
    return [float(m.group(2)) for m in map(PREDICTED.match, output.splitlines()) if m]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def predict_common(weights: Path, data: Path, extra: Sequence[str] = ()) -> list:
    """The predict arguments every timed arm shares: the test split of ``data``, on CPU, no TTA."""
    return ["predict", "--weights", weights, "--data", data, "--split", "test", "--device", "cpu", "--tta", "none",
            "--no-progress", *extra]


def alternate(arms: dict[str, tuple[Sequence[str], list]], common: list, work: Path, log: Path,
              repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]], bool]:
    """One untimed one-process run (imports and files warm for every arm), then each arm (``name: (command,
    flags)``) once per round, ``repeats`` rounds, so that a slow minute of the machine hits every arm; per arm the
    whole commands' seconds and the per-run seconds they report, and whether every arm's submission equalled the
    first arm's in every round."""
    czii([*common, "--out", work / "warm.csv"], log)
    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    runs: dict[str, list[float]] = {arm: [] for arm in arms}
    same = True
    first, *others = arms
    for _ in range(repeats):
        for arm, (command, flags) in arms.items():
            seconds, output = czii([*common, *flags, "--out", work / f"{arm}.csv"], log, command)
            wall[arm].append(seconds)
            runs[arm] += run_seconds(output)
        reference = (work / f"{first}.csv").read_bytes()
        same = same and all((work / f"{arm}.csv").read_bytes() == reference for arm in others)
    return wall, runs, same


def overhead(weights: Path, data: Path, work: Path, repeats: int = 3,
             report: Callable[[str], None] = print) -> dict:
    """Single process against ``--ray local`` and against Ray's floor on the test runs of ``data`` (full size), whole
    commands timed, ``repeats`` times each, the arms alternating."""
    common = predict_common(weights, data)
    log = work / "overhead.log"
    arms = {"single": (ray_floor.CZII_COMMAND, []), "ray": (ray_floor.CZII_COMMAND, ["--ray", "local", "--fresh"]),
            "floor": (RAY_FLOOR, [])}
    wall, runs, same = alternate(arms, common, work, log, repeats)
    count = len(list((parts_folder(work / "ray.csv")).glob("*.csv")))
    (single, single_sd), (through_ray, ray_sd), (floor, floor_sd) = (mean_sd(wall[arm]) for arm in arms)
    result = {"runs": count, "repeats": repeats, "single_s": single, "single_sd": single_sd, "ray_s": through_ray,
              "ray_sd": ray_sd, "overhead": through_ray / single - 1, "floor_s": floor, "floor_sd": floor_sd,
              "floor_overhead": floor / single - 1, "identical": same,
              **{f"run_{arm}_s": mean_sd(runs[arm])[0] for arm in arms}}
    report(f"overhead: {count} full-size run(s), {repeats} time(s) each: one process {single:.1f} ± {single_sd:.1f} s, "
           f"--ray local {through_ray:.1f} ± {ray_sd:.1f} s ({result['overhead']:+.1%}), Ray's floor (the one-process "
           f"command in one Ray actor) {floor:.1f} ± {floor_sd:.1f} s ({result['floor_overhead']:+.1%}); per run (as "
           f"each job reports it) {result['run_single_s']:.1f} / {result['run_ray_s']:.1f} / "
           f"{result['run_floor_s']:.1f} s; submissions identical: {same}")
    return result


@contextlib.contextmanager
def running_instance(log: Path, timeout_s: float = 120) -> Iterator[str]:
    """A local Ray held open by a child process for the block (``ray_instance``); its address. Stopped after the
    block by closing the child's stdin, so no other Ray on this machine is touched (``ray stop`` would stop all)."""
    with open(log, "a") as sink:
        child = subprocess.Popen(RAY_INSTANCE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink, text=True,
                                 env=child_env())
    try:
        address = ""
        for line in child.stdout:  # Ray's own lines, if any reach stdout, come before ours
            if line.startswith(ray_instance.ADDRESS_LINE):
                address = line[len(ray_instance.ADDRESS_LINE):].strip()
                break
        if not address:
            raise RuntimeError(f"the Ray instance did not start (exit {child.wait()}); see {log}")
        yield address
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def joined(weights: Path, data: Path, work: Path, repeats: int = 3, report: Callable[[str], None] = print,
           extra: Sequence[str] = ()) -> dict:
    """Single process against ``--ray HOST:PORT`` on a Ray instance started before the timings (not timed): what
    each job on a running cluster pays. Both arms run beside the idle instance, alternating (``extra``: more
    predict arguments for both)."""
    common = predict_common(weights, data, extra)
    log = work / "joined.log"
    # the instance checks tokens (a local ray.init's default), and Ray sends one to an explicit address only then
    with environment({AUTH_MODE: "token"}), running_instance(log) as address:
        arms = {"single": (ray_floor.CZII_COMMAND, []),
                "joined": (ray_floor.CZII_COMMAND, ["--ray", address, "--fresh"])}
        wall, runs, same = alternate(arms, common, work, log, repeats)
    (single, single_sd), (through_ray, ray_sd) = (mean_sd(wall[arm]) for arm in arms)
    result = {"address": address, "repeats": repeats, "single_s": single, "single_sd": single_sd,
              "joined_s": through_ray, "joined_sd": ray_sd, "overhead": through_ray / single - 1, "identical": same,
              **{f"run_{arm}_s": mean_sd(runs[arm])[0] for arm in arms}}
    report(f"joined: {repeats} time(s) each, beside a Ray instance started before the timings: one process "
           f"{single:.1f} ± {single_sd:.1f} s, --ray {address} {through_ray:.1f} ± {ray_sd:.1f} s "
           f"({result['overhead']:+.1%}); per run {result['run_single_s']:.1f} / {result['run_joined_s']:.1f} s; "
           f"submissions identical: {same}")
    return result


def small_project(work: Path, runs: int, report: Callable[[str], None] = print) -> Path:
    """A copick project over ``runs`` small simulated runs (made once)."""
    from czii_kit.data.copick import make_copick_project
    from czii_kit.data.synth import make_dataset

    config = work / "project" / "copick_train.json"
    if not config.is_file():
        started = time.monotonic()
        root = make_dataset(work / "small", n_train=runs, n_test=0, shape=SMALL_SHAPE, seed=5, progress=False)
        config = make_copick_project(root, work / "project")
        report(f"resume: {runs} runs of {'x'.join(map(str, SMALL_SHAPE))} made in {time.monotonic() - started:.0f} s")
    return config


def resume(weights: Path, work: Path, runs: int = 200, report: Callable[[str], None] = print,
           extra: Sequence[str] = ()) -> dict:
    """Kill a Ray prediction of a copick project after about half its runs, rerun it, compare (``extra``: more
    predict arguments, the same for every job)."""
    project = small_project(work, runs, report)
    common = ["predict", "--weights", weights, "--data", project, "--split", "train", "--device", "cpu",
              "--tta", "none", "--no-progress", "--set", SMALL_WINDOW, *extra]
    log = work / "resume.log"
    # the reference: the same job uninterrupted (Ray against one process is the overhead's and the tests' check)
    reference_s, _ = czii([*common, "--ray", "local", "--fresh", "--out", work / "uninterrupted.csv"], log)
    out = work / "resumed.csv"
    args = [*ray_floor.CZII_COMMAND, *map(str, [*common, "--ray", "local", "--fresh", "--out", out])]
    with open(work / "killed.log", "w") as sink:
        job = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                               env=child_env())
        started = time.monotonic()
        while len(records(out)) < runs // 2 and job.poll() is None:
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGKILL)  # the driver, its local Ray and its workers: a machine lost
        job.wait()
    killed_after = time.monotonic() - started
    time.sleep(2)  # the killed workers' last writes, if any, land before we look
    before = records(out)
    again_s, output = czii([*common, "--ray", "local", "--out", out], log)
    second = predicted_runs(output)
    result = {"runs": runs, "done_when_killed": len(before), "predicted_on_rerun": len(second),
              "predicted_twice": len(set(second) & before), "lost": runs - len(records(out)),
              "identical": out.read_bytes() == (work / "uninterrupted.csv").read_bytes(),
              "killed_after_s": killed_after, "rerun_s": again_s, "uninterrupted_s": reference_s}
    report(f"resume: killed after {killed_after:.0f} s with {len(before)} of {runs} runs done; the rerun predicted "
           f"{len(second)} ({again_s:.0f} s), {result['predicted_twice']} twice, {result['lost']} lost; merged "
           f"submission identical to an uninterrupted one: {result['identical']} (uninterrupted: {reference_s:.0f} s)")
    return result


def study(work: Path, report: Callable[[str], None] = print) -> dict:
    """A 2x3 study of tiny models through Ray and in one process: the same results.csv."""
    import yaml

    from czii_kit.data.synth import SynthConfig, make_dataset

    data = work / "study_data"
    if not (data / "train").is_dir():
        make_dataset(data, n_train=4, n_test=2, shape=SMALL_SHAPE, seed=1, cfg=SynthConfig(density=6.0),
                     progress=False)
    tiny = ["model.args.filters=[8, 12, 16]", "train.patch_size=[32, 64, 64]", SMALL_WINDOW, "train.epochs=2",
            "train.samples_per_epoch=8", "train.batch_size=2", "validate.every=1", "train.time_limit_min=null"]
    spec = work / "study.yaml"
    spec.write_text(yaml.safe_dump({"config": "cpu_quick", "fold": 0, "seeds": [0, 1, 2],
                                    "arms": {"a": tiny, "b": [*tiny, "train.lr=0.003"]}}))
    common = ["study", "--study", spec, "--data", data, "--test-data", data, "--baseline", "a", "--no-progress"]
    log = work / "study.log"
    sequential_s, _ = czii([*common, "--out", work / "study_seq"], log)
    ray_s, _ = czii([*common, "--out", work / "study_ray", "--ray", "local", "--cpus-per-trial", "2"], log)
    tables = [pd.read_csv(work / d / "results.csv").drop(columns="train_minutes") for d in ("study_seq", "study_ray")]
    same = tables[0].equals(tables[1])
    report(f"study: 2 arms x 3 seeds: sequential {sequential_s:.0f} s, through Ray (2 CPUs per trial) {ray_s:.0f} s; "
           f"results.csv identical (timings aside): {same}")
    return {"trials": len(tables[0]), "sequential_s": sequential_s, "ray_s": ray_s, "identical": same}
