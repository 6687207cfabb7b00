"""Ray across folds, study trials and tomograms, on a local Ray of 2 CPUs: the same files as the sequential path,
finished work skipped on a rerun, a failed trial retried once then reported, prediction resumable from its parts
and merged into the same submission, row for row."""
from __future__ import annotations

import json
import os
import sys

import pandas as pd
import pytest
import torch
import yaml

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.checkpoints import load_checkpoint
from czii_kit.cli.predict import main as predict_main
from czii_kit.cli.train_fold import main as train_main
from czii_kit.config import load_config, save_config, with_particle_set
from czii_kit.errors import ConfigError
from czii_kit.infer.parts import JOB_FILE, PartStore
from czii_kit.scale.predict import parts_folder
from czii_kit.scale.session import describe_failure
from czii_kit.scale.tasks import RayTrials
from czii_kit.particles import CZII
from czii_kit.study import load_study, run_study
from czii_kit.train.jobs import fold_finished, train_folds

ray = pytest.importorskip("ray", reason="the ray extra (pip install -e '.[ray]') is part of .[dev]")

LOW = "apo-ferritin=0.005,beta-amylase=0.005,beta-galactosidase=0.005,ribosome=0.005,thyroglobulin=0.005," \
      "virus-like-particle=0.005"  # the tiny model's weak peaks: thousands of rows to compare


@pytest.fixture(scope="module")
def local_ray():
    """One new local Ray of 2 CPUs for the module (the tools reuse a session that is already open), shut down after;
    ``address="local"``: a cluster file another job left in /tmp/ray is never joined."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def tiny_cfg(data):
    cfg = load_config("cpu_quick", TINY_TRAIN_OVERRIDES)
    cfg["data"]["root"] = str(data)
    return cfg


def same_weights(a, b) -> bool:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_folds_through_ray_write_what_the_sequential_job_writes_and_a_rerun_skips_them(local_ray, synthetic_root,
                                                                                       tmp_path):
    cfg = tiny_cfg(synthetic_root)
    threads = torch.get_num_threads()  # a trial reserves as many CPUs as this process uses: the same arithmetic
    sequential, _ = train_folds(cfg, [0, 1], synthetic_root, tmp_path / "seq", progress=False, report=lambda s: None)
    lines: list[str] = []
    runner = RayTrials("local", cpus=threads, gpus=None, device="cpu", progress=False, report=lines.append)
    done, failures = train_folds(cfg, [0, 1], synthetic_root, tmp_path / "ray", runner=runner, report=lines.append)
    assert failures == {} and sorted(done) == [0, 1]
    for fold in (0, 1):
        assert same_weights(tmp_path / "seq" / f"fold{fold}.pt", tmp_path / "ray" / f"fold{fold}.pt")
        assert done[fold]["score"] == sequential[fold]["score"]
        assert fold_finished(cfg, tmp_path / "ray", fold)
        seq_log, ray_log = (pd.read_csv(tmp_path / d / f"fold{fold}_log.csv") for d in ("seq", "ray"))
        pd.testing.assert_frame_equal(seq_log.drop(columns="seconds"), ray_log.drop(columns="seconds"))
    assert "2 trial(s) submitted to Ray, each with" in "\n".join(lines)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir()}
    again: list[str] = []
    done, failures = train_folds(cfg, [0, 1], synthetic_root, tmp_path / "ray", runner=runner, report=again.append)
    assert done == {} and failures == {}
    assert again[0].startswith("skipping fold(s) 0, 1: already finished")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir()} == stamps  # nothing rewritten


def test_a_stopped_fold_resumes_and_an_unfinished_one_is_not_skipped(synthetic_root, tmp_path):
    cfg = tiny_cfg(synthetic_root)
    half = {**cfg, "train": {**cfg["train"], "epochs": 1}}
    train_folds(half, [0], synthetic_root, tmp_path, progress=False, report=lambda s: None)
    state = torch.load(tmp_path / "fold0_last.pt", weights_only=False)
    state["finished"] = False  # as if the job had been stopped after epoch 1 of 2
    torch.save(state, tmp_path / "fold0_last.pt")
    save_config(with_particle_set(cfg, CZII), tmp_path / "config.yaml")
    assert not fold_finished(cfg, tmp_path, 0)
    done, _ = train_folds(cfg, [0], synthetic_root, tmp_path, progress=False, report=lambda s: None)
    assert done[0]["epochs"] == 2 and list(pd.read_csv(tmp_path / "fold0_log.csv")["epoch"]) == [1, 2]


def test_a_fold_stopped_between_its_first_two_writes_is_trained_again(synthetic_root, tmp_path, capsys):
    """fold0.pt written, fold0_last.pt not yet: nothing to resume from, and the rerun must not be refused."""
    cfg = {**tiny_cfg(synthetic_root), "train": {**tiny_cfg(synthetic_root)["train"], "epochs": 1}}
    train_folds(cfg, [0], synthetic_root, tmp_path, progress=False, report=lambda s: None)
    (tmp_path / "fold0_last.pt").unlink()
    done, failures = train_folds(cfg, [0], synthetic_root, tmp_path, progress=False, report=lambda s: None)
    assert failures == {} and done[0]["epochs"] == 1 and (tmp_path / "fold0_last.pt").is_file()
    assert "is left from an attempt that stopped in its first epoch" in capsys.readouterr().out


def test_a_failed_trial_is_retried_once_then_reported_while_the_others_finish(local_ray, tmp_path):
    def trial(spec):
        kind, folder = spec
        attempts = folder / f"{kind}.attempts"
        attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
        if kind == "always" or (kind == "flaky" and len(attempts.read_text()) == 1):
            raise ValueError(f"{kind} trial failed on purpose")
        return kind

    lines, finished = [], {}
    runner = RayTrials("local", cpus=1, gpus=0, device="cpu", progress=False, report=lines.append)
    failures = runner(trial, {k: (k, tmp_path) for k in ("fine", "flaky", "always")}, finished.__setitem__)
    assert finished == {"fine": "fine", "flaky": "flaky"}
    assert failures == {"always": "ValueError: always trial failed on purpose"}
    assert [len((tmp_path / f"{k}.attempts").read_text()) for k in ("fine", "flaky", "always")] == [1, 2, 2]
    assert "FAILED always after 2 attempt(s): ValueError: always trial failed on purpose" in lines


def test_a_users_mistake_in_a_trial_is_said_once_and_not_retried(local_ray, tmp_path):
    def trial(folder):
        attempts = folder / "attempts"
        attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
        raise ConfigError("fold 9 is out of range; use --folds 0 1")

    lines = []
    runner = RayTrials("local", cpus=1, gpus=0, device="cpu", progress=False, report=lines.append)
    failures = runner(trial, {"fold 9": tmp_path}, lambda name, result: pytest.fail("it did not fail"))
    assert failures == {"fold 9": "ConfigError: fold 9 is out of range; use --folds 0 1"}
    assert (tmp_path / "attempts").read_text() == "x" and "FAILED fold 9: ConfigError: fold 9 is out of range; " \
        "use --folds 0 1" in lines


def test_a_study_through_ray_writes_the_sequential_results(local_ray, synthetic_root, tmp_path):
    tiny = [*TINY_TRAIN_OVERRIDES, "train.epochs=1"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"config": "cpu_quick", "fold": 0, "seeds": [0, 1, 2],
                                    "arms": {"a": tiny, "b": [*tiny, "train.lr=0.003"]}}))
    study = load_study(path)
    study["seeds"] = [0, 1]  # 2 arms x 2 seeds (load_study asks three of a real study)
    sequential = run_study(study, synthetic_root, synthetic_root, tmp_path / "seq", progress=False)
    runner = RayTrials("local", cpus=torch.get_num_threads(), gpus=0, device="cpu", progress=False,
                       report=lambda s: None)
    through_ray = run_study(study, synthetic_root, synthetic_root, tmp_path / "ray", progress=False, runner=runner)
    assert through_ray.failures == {}
    timing = ["train_minutes"]
    ours, theirs = (pd.read_csv(tmp_path / d / "results.csv").drop(columns=timing) for d in ("seq", "ray"))
    assert list(ours[["arm", "seed"]].itertuples(index=False)) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    pd.testing.assert_frame_equal(ours, theirs)
    pd.testing.assert_frame_equal(sequential.results.drop(columns=timing),
                                  through_ray.results.drop(columns=timing))


def predict_args(data, weights, out, *extra):
    return ["--data", str(data), "--weights", str(weights), "--split", "train", "--device", "cpu", "--tta", "none",
            "--thresholds", LOW, "--out", str(out), "--no-progress", *extra]


def test_prediction_through_ray_is_resumable_and_merges_into_the_same_submission(local_ray, synthetic_root,
                                                                                 tiny_experiment, tmp_path, capsys):
    single, merged = tmp_path / "single.csv", tmp_path / "ray" / "submission.csv"
    assert predict_main(predict_args(synthetic_root, tiny_experiment, single)) == 0
    assert predict_main(predict_args(synthetic_root, tiny_experiment, merged, "--ray", "local")) == 0
    assert len(pd.read_csv(single)) > 100 and merged.read_bytes() == single.read_bytes()  # identical rows, ids and all
    parts = parts_folder(merged)
    assert parts == tmp_path / "ray" / "submission.csv.parts"
    runs = sorted(p.stem for p in parts.glob("*.csv"))
    assert runs == sorted(p.name for p in (synthetic_root / "train" / "static" / "ExperimentRuns").iterdir())
    assert len(runs) == 4 and (parts / JOB_FILE).is_file()
    # a job killed after two runs: their records gone (a run is done once its record exists)
    for run in runs[2:]:
        (parts / f"{run}.json").unlink()
    capsys.readouterr()
    assert predict_main(predict_args(synthetic_root, tiny_experiment, merged, "--ray", "local")) == 0
    out = capsys.readouterr().out
    assert "2 of 4 run(s) already predicted" in out and "2 to predict through Ray" in out
    predicted = {line.split(":")[0] for line in out.splitlines() if " particles in " in line}
    assert predicted == set(runs[2:])  # the missing runs, and only those
    assert merged.read_bytes() == single.read_bytes()
    # other thresholds are another job: refused until --fresh
    other = predict_args(synthetic_root, tiny_experiment, merged, "--ray", "local")
    other[other.index("--thresholds") + 1] = LOW.replace("0.005", "0.05")
    assert predict_main(other) == 2
    assert "--fresh" in capsys.readouterr().err and merged.read_bytes() == single.read_bytes()
    assert predict_main([*other, "--fresh"]) == 0
    assert "0 of 4 run(s) already predicted" in capsys.readouterr().out
    assert merged.read_bytes() != single.read_bytes()  # fewer rows at the higher thresholds
    # other member weights are another job too
    assert predict_main([*other, "--member-weights", "2"]) == 2 and "--fresh" in capsys.readouterr().err
    # a run whose tomogram was written again since is predicted again, and only that one
    meta = synthetic_root / "train" / "static" / "ExperimentRuns" / runs[0] / "VoxelSpacing10.000" / "denoised.zarr"
    zarray = meta / "0" / ".zarray"
    stat = zarray.stat()
    os.utime(zarray, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert predict_main(other) == 0
    finally:
        os.utime(zarray, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    out = capsys.readouterr().out
    assert f"1 run(s) were written again since they were predicted ({runs[0]}): predicting them again" in out
    assert {line.split(":")[0] for line in out.splitlines() if " particles in " in line} == {runs[0]}


def test_rays_floor_runs_the_unchanged_one_process_command_inside_an_actor(local_ray, synthetic_root,
                                                                          tiny_experiment, tmp_path, capsys):
    """The overhead bench's third arm: the same submission as the plain command, its lines brought back, and none of
    the kit's Ray path (no parts)."""
    from czii_kit.bench import ray_floor
    from czii_kit.bench.scale import predicted_runs

    single, floor = tmp_path / "single.csv", tmp_path / "floor.csv"
    assert predict_main(predict_args(synthetic_root, tiny_experiment, single)) == 0
    capsys.readouterr()
    assert ray_floor.main(["predict", *predict_args(synthetic_root, tiny_experiment, floor)]) == 0
    out = capsys.readouterr().out
    assert floor.read_bytes() == single.read_bytes() and len(pd.read_csv(floor)) > 100
    runs = sorted(p.name for p in (synthetic_root / "train" / "static" / "ExperimentRuns").iterdir())
    assert sorted(predicted_runs(out)) == runs  # the command's own lines, as the bench reads them, not Ray's echo
    assert not parts_folder(floor).exists()
    assert ray_floor.main(["no-such-command"]) == 2  # the command's exit code, not Ray's


def test_a_copick_project_is_predicted_through_ray_by_the_workers_themselves(local_ray, synthetic_root,
                                                                            tiny_experiment, tmp_path):
    from czii_kit.data.copick import make_copick_project

    copick = pytest.importorskip("copick")
    project = make_copick_project(synthetic_root, tmp_path / "project")
    single, merged = tmp_path / "single.csv", tmp_path / "merged.csv"
    runs = ["--runs", "TS_5_4,TS_6_4"]
    assert predict_main(predict_args(project, tiny_experiment, single, *runs)) == 0
    assert predict_main(predict_args(project, tiny_experiment, merged, *runs, "--ray", "local", "--copick-out",
                                     "czii/ray")) == 0
    assert len(pd.read_csv(single)) > 100 and merged.read_bytes() == single.read_bytes()
    submission = pd.read_csv(merged)
    root = copick.from_file(str(project))  # read back with copick itself
    for run in root.runs:
        mine = run.get_picks(user_id="czii", session_id="ray")
        assert sum(len(p.numpy()[0]) for p in mine) == int((submission["experiment"] == run.name).sum())


def test_a_killed_ray_prediction_resumes_without_losing_or_repeating_a_run(tiny_experiment, tmp_path):
    from czii_kit.bench.scale import resume

    lines: list[str] = []
    result = resume(tiny_experiment, tmp_path, runs=24, report=lines.append, extra=["--thresholds", LOW])
    assert 0 < result["done_when_killed"] < 24, lines  # killed halfway, not before the first run nor after the last
    assert result["predicted_on_rerun"] == 24 - result["done_when_killed"]
    assert result["predicted_twice"] == 0 and result["lost"] == 0
    assert result["identical"] and len(pd.read_csv(tmp_path / "resumed.csv")) > 100


def test_the_joined_arm_predicts_through_a_ray_started_before_it_and_stops_that_ray(synthetic_root, tiny_experiment,
                                                                                    tmp_path):
    """The overhead bench's running-cluster arm: each job joins the instance held open for it (it does not start its
    own), goes through the kit's Ray path (parts), writes the one-process submission, and the instance is gone after."""
    import socket

    from czii_kit.bench.scale import joined

    lines: list[str] = []
    result = joined(tiny_experiment, synthetic_root, tmp_path, repeats=1, report=lines.append,
                    extra=["--thresholds", LOW])
    assert result["identical"] and len(pd.read_csv(tmp_path / "joined.csv")) > 100, lines
    assert result["single_s"] > 0 and result["joined_s"] > 0
    host, port = result["address"].rsplit(":", 1)
    assert f"Ray at {result['address']}:" in (tmp_path / "joined.log").read_text()
    assert len(list(parts_folder(tmp_path / "joined.csv").glob("*.csv"))) == 2  # one part per test run
    with pytest.raises(OSError):  # nobody listens at the instance's address any more
        socket.create_connection((host, int(port)), timeout=5).close()


def test_parts_of_another_folder_or_a_bad_record_are_refused(tmp_path):
    folder = tmp_path / "sub.csv.parts"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a parts folder"):
        PartStore(folder).open({"k": 1}, fresh=True)
    assert (folder / "notes.txt").read_text() == "mine"  # nothing of the user's deleted
    store = PartStore(tmp_path / "ok.parts")
    assert store.open({"k": 1}) == []
    frame = pd.DataFrame({"experiment": ["TS_0"], "particle_type": ["ribosome"], "x": [0.1 + 0.2], "y": [1 / 3],
                          "z": [2.0], "score": [0.7]})
    store.write("TS_0", frame, {"seconds": 1.0})
    back = store.read(["TS_0"])
    assert back["x"].iloc[0] == 0.1 + 0.2 and back["y"].iloc[0] == 1 / 3  # every bit of the floats
    assert store.open({"k": 1}) == ["TS_0"]
    (store.folder / "TS_0.json").write_text(json.dumps({"run": "TS_0", "rows": 5, "seconds": 1.0}))
    with pytest.raises(Exception, match="holds 1 rows, its record says 5"):
        store.read(["TS_0"])
    store.clear()
    assert not store.folder.exists()


def test_ray_flags_are_checked_before_any_work(synthetic_root, tiny_experiment, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.csv"
    assert predict_main(predict_args(synthetic_root, tiny_experiment, out, "--workers", "2")) == 2
    assert "--workers works only with --ray" in capsys.readouterr().err
    assert predict_main(predict_args(synthetic_root, tiny_experiment, out, "--ray", "local", "--time-budget",
                                     "1")) == 2
    assert "--time-budget shares one clock" in capsys.readouterr().err
    assert train_main(["--fold", "0", "--data", str(synthetic_root), "--ray", "local", "--out",
                       str(tmp_path / "w")]) == 2
    assert "give --folds" in capsys.readouterr().err
    assert train_main(["--folds", "0,9", "--data", str(synthetic_root), "--config", "cpu_quick", "--out",
                       str(tmp_path / "w")]) == 2
    assert "fold 9 is out of range" in capsys.readouterr().err and not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match="torchrun"):
        RayTrials("local", gpus=2)
    mine = tmp_path / "mine.txt"
    mine.write_text("mine")
    import czii_kit.scale.session

    with monkeypatch.context() as m:  # --out, --weights and --runs are checked before Ray starts
        m.setattr(czii_kit.scale.session, "ray_session", lambda *a, **k: pytest.fail("Ray was started"))
        assert predict_main(predict_args(synthetic_root, tiny_experiment, mine, "--ray", "local")) == 2
        assert "exists and is not a submission CSV" in capsys.readouterr().err and mine.read_text() == "mine"
        assert predict_main(predict_args(synthetic_root, tmp_path / "nowhere", out, "--ray", "local")) == 2
        assert f"weights {tmp_path / 'nowhere'} do not exist" in capsys.readouterr().err
        assert predict_main(predict_args(synthetic_root, tiny_experiment, out, "--ray", "local", "--folds", "7")) == 2
        assert "none of folds [7]" in capsys.readouterr().err
        assert predict_main(predict_args(synthetic_root, tiny_experiment, out, "--ray", "local", "--runs",
                                         "TS_nope")) == 2
        assert "--runs: TS_nope not in the" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ConfigError, match=r"--ray 127.0.0.1:1: nothing answers there"):
        czii_kit.scale.session.check_reachable("127.0.0.1:1", timeout_s=2)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert predict_main(predict_args(synthetic_root, tiny_experiment, out, "--ray", "local")) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err and not out.exists()


def test_more_workers_than_the_cluster_holds_is_refused_instead_of_waiting_forever(local_ray, synthetic_root,
                                                                                   tiny_experiment, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert predict_main(predict_args(synthetic_root, tiny_experiment, out, "--ray", "local", "--workers", "2")) == 2
    assert "--workers 2: the cluster holds 1 worker(s) of 2 CPU(s)" in capsys.readouterr().err and not out.exists()


def test_ray_is_imported_with_every_worker_line_shown_and_no_autoscaler_chatter(monkeypatch):
    from czii_kit.scale.session import QUIET_RAY, require_ray

    for name in QUIET_RAY:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")  # the user's own choice stays
    require_ray()
    assert os.environ["RAY_DEDUP_LOGS"] == "1" and os.environ["RAY_SCHEDULER_EVENTS"] == "0"


def test_a_failure_inside_ray_is_named_by_its_cause():
    class Wrapped(Exception):
        cause = KeyError("TS_9")

    assert describe_failure(Wrapped("ray's long wrapper text")) == "KeyError: 'TS_9'"
    assert describe_failure(ValueError("line one\nline two")) == "ValueError: line one line two"


def test_a_failed_join_by_address_names_token_authentication_when_it_can_be_the_cause():
    from czii_kit.scale.session import join_hint

    assert "RAY_AUTH_MODE=token" in join_hint("10.0.0.1:6379", {})  # Ray sends no token to an explicit address
    assert "RAY_AUTH_MODE" not in join_hint("10.0.0.1:6379", {"RAY_AUTH_MODE": "token"})  # set: not the cause
    assert "RAY_AUTH_MODE" not in join_hint("auto", {})  # Ray finds the local token itself
    assert "ray start --head" in join_hint("auto", {})


def test_a_restarted_worker_loads_the_plan_from_the_call_it_is_given(local_ray, synthetic_root, tiny_experiment,
                                                                    tmp_path):
    """Ray restarts a dead actor with its constructor arguments only; its next call carries the plan's reference,
    so a fresh worker whose first call is ``predict`` loads and predicts (what the restart path relies on)."""
    from czii_kit.data.open_data import open_data
    from czii_kit.infer.plan import PredictionPlan
    from czii_kit.infer.split import Predictors, predict_one
    from czii_kit.scale.predict import RunWorker

    plan = PredictionPlan.from_weights([tiny_experiment], tta="none", device="cpu", thresholds=LOW).on_runs(
        open_data(synthetic_root), "test")
    run = plan.runs.to_predict[0]
    restarted = RunWorker(str(tmp_path / "parts"), threads=1)  # as Ray rebuilds it: no plan
    record = restarted.predict(run, [local_ray.put(plan)])
    expected, _ = predict_one(Predictors(plan), run, "cpu", "torch")
    assert record["run"] == run and record["rows"] == len(expected) > 0
    assert restarted.store.read([run]).equals(expected.reset_index(drop=True))


def test_workers_started_before_the_plan_are_used_and_the_surplus_stopped(local_ray, synthetic_root, tiny_experiment,
                                                                          tmp_path):
    """``start_early`` (what ``czii predict --ray`` does before this process imports torch): the job takes the
    actors it needs, stops the rest, and a job with nothing left to predict stops them all."""
    from czii_kit.data.open_data import open_data
    from czii_kit.infer.plan import PredictionPlan
    from czii_kit.infer.split import Predictors, predict_one
    from czii_kit.scale.predict import RayPrediction

    plan = PredictionPlan.from_weights([tiny_experiment], tta="none", device="cpu", thresholds=LOW).on_runs(
        open_data(synthetic_root), "test")
    run = plan.runs.to_predict[0]
    plan = PredictionPlan.from_weights([tiny_experiment], tta="none", device="cpu", thresholds=LOW).on_runs(
        open_data(synthetic_root), "test", [run])
    executor = RayPrediction("local", str(tmp_path / "parts"), cpus=1.0, workers=2)
    executor.start_early(local_ray, "cpu")
    resources, started = executor.early
    assert (resources.cpus, resources.gpus, len(started)) == (1.0, 0.0, 2)  # before any plan: --workers of them
    result = executor(plan, ["ray"], progress=False, report=lambda line: None)
    expected, _ = predict_one(Predictors(plan), run, "cpu", "torch")
    assert result.detections.equals(expected.reset_index(drop=True)) and not result.failures
    assert executor.early is None
    assert local_ray.get(started[0].ready.remote([local_ray.put(plan)]))["device"] == "cpu"  # the one it used
    with pytest.raises(ray.exceptions.RayActorError):  # one run needs one worker: the other was stopped
        local_ray.get(started[1].ready.remote([local_ray.put(plan)]), timeout=60)
    executor.start_early(local_ray, "cpu")  # the same job again: every run already has its part
    _, again = executor.early
    assert executor(plan, ["ray"], progress=False, report=lambda line: None).detections.equals(result.detections)
    for actor in again:
        with pytest.raises(ray.exceptions.RayActorError):
            local_ray.get(actor.ready.remote([local_ray.put(plan)]), timeout=60)


def test_workers_wait_for_the_plan_when_it_decides_what_they_ask_for(monkeypatch):
    """Control flow only (a stand-in records what would be asked of Ray); the real actors are tested above."""
    from czii_kit.scale import predict as scale_predict
    from czii_kit.scale.session import Resources

    class StandInRay:
        def __init__(self, gpus):
            self.gpus, self.made, self.killed = gpus, [], []

        def cluster_resources(self):
            return {"CPU": 8.0, "GPU": self.gpus}

        def nodes(self):
            return [{"Alive": True, "Resources": self.cluster_resources()}]

        def remote(self, cls):
            outer = self

            class Options:
                def options(self, **options):
                    return self

                def remote(self, *args):
                    outer.made.append(args)
                    return f"actor{len(outer.made)}"

            return Options()

        def kill(self, actor, no_restart):
            self.killed.append(actor)

    executor = scale_predict.RayPrediction("auto", "parts")
    on_gpus = StandInRay(gpus=2)
    executor.start_early(on_gpus, None)  # the checkpoint's config picks cpu or cuda: nothing started yet
    assert executor.early is None and on_gpus.made == []
    executor.start_early(on_gpus, "cuda")
    assert executor.early[0] == Resources(2.0, 1.0) and len(on_gpus.made) == 2  # one per GPU
    taken = executor._workers_for(on_gpus, Resources(2.0, 1.0), 1)
    assert taken == ["actor1"] and on_gpus.killed == ["actor2"]
    executor.start_early(on_gpus, "cuda")
    taken = executor._workers_for(on_gpus, Resources(4.0, 1.0), 1)  # asks for other resources: new ones
    assert taken == ["actor5"] and on_gpus.killed == ["actor2", "actor3", "actor4"]
    with pytest.raises(ConfigError, match="reserves GPUs nobody uses"):  # predict's own refusals, before any actor
        scale_predict.RayPrediction("auto", "parts", gpus=1.0).start_early(on_gpus, "cpu")
    assert len(on_gpus.made) == 5


def test_a_local_ray_starts_the_v2_autoscaler_monitor_only_while_it_starts(monkeypatch):
    """Control flow only (a stand-in for ray records the calls): the real start is the killed-job test above."""
    from czii_kit.scale import session

    seen: dict = {}
    monkeypatch.delenv("RAY_enable_autoscaler_v2", raising=False)

    class StandIn:
        initialized = False

        def is_initialized(self):
            return self.initialized

        def init(self, address, **options):
            seen.update(address=address, v2=session.os.environ.get("RAY_enable_autoscaler_v2"))
            self.initialized = True

        def cluster_resources(self):
            return {"CPU": 2.0}

        def nodes(self):
            return [{"Alive": True}]

        def shutdown(self):
            seen["shutdown"] = True

    monkeypatch.setattr(session, "require_ray", StandIn)
    with session.ray_session("local", report=lambda line: None):
        assert "RAY_enable_autoscaler_v2" not in session.os.environ  # set for the daemons ray.init starts, then gone
    assert seen["address"] == "local" and seen["v2"] == "1" and seen["shutdown"]


def test_the_environment_helper_keeps_what_the_user_set_and_removes_what_it_added(monkeypatch):
    from czii_kit.scale.session import environment, os

    monkeypatch.setenv("CZII_TEST_USER_SET", "user")
    monkeypatch.delenv("CZII_TEST_ADDED", raising=False)
    with environment({"CZII_TEST_USER_SET": "ours", "CZII_TEST_ADDED": "ours"}):
        assert os.environ["CZII_TEST_USER_SET"] == "user" and os.environ["CZII_TEST_ADDED"] == "ours"
    assert os.environ["CZII_TEST_USER_SET"] == "user" and "CZII_TEST_ADDED" not in os.environ
