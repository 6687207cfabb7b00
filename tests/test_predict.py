"""tools/predict.py end to end on the tiny experiment: submission, scoring, engines, failures, bad input."""
import shutil

import numpy as np
import pandas as pd
import pytest

from czii_kit.cli.export import main as export_main
from czii_kit.cli.predict import main as predict_main
from czii_kit.data import layout
from czii_kit.metric import score
from czii_kit.particles import VOXEL_SPACING
from czii_kit.submission import read_submission

LOW = "apo-ferritin=0.005,beta-amylase=0.005,beta-galactosidase=0.005,ribosome=0.005,thyroglobulin=0.005," \
      "virus-like-particle=0.005"


def run_predict(root, weights, out, *extra):
    return predict_main(["--data", str(root), "--split", "test", "--weights", str(weights), "--out", str(out),
                         "--device", "cpu", "--thresholds", LOW, "--no-progress", *extra])


def test_predict_writes_a_valid_scored_submission(synthetic_root, tiny_experiment, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    assert run_predict(synthetic_root, tiny_experiment, out, "--tta", "none", "--score") == 0
    sub = read_submission(out)
    assert len(sub) > 0 and set(sub["experiment"]) <= set(layout.list_runs(synthetic_root, "test"))
    assert list(sub["id"]) == list(range(len(sub)))
    printed = capsys.readouterr().out
    solution = pd.read_csv(synthetic_root / "solution.csv")
    assert f"= {score(solution, sub):.6f}" in printed  # the printed table's score is the metric's
    for run in layout.list_runs(synthetic_root, "test"):
        assert f"{run}:" in printed  # per-run timing line


def test_tta_and_runs_and_thresholds(synthetic_root, tiny_experiment, tmp_path):
    run = layout.list_runs(synthetic_root, "test")[0]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run_predict(synthetic_root, tiny_experiment, a, "--tta", "none", "--runs", run) == 0
    assert run_predict(synthetic_root, tiny_experiment, b, "--tta", "flips", "--runs", run) == 0
    sa, sb = read_submission(a), read_submission(b)
    assert set(sa["experiment"]) == {run} == set(sb["experiment"])
    assert not sa[["x", "y", "z"]].equals(sb[["x", "y", "z"]])  # TTA changes the probabilities
    high = tmp_path / "high.csv"
    assert predict_main(["--data", str(synthetic_root), "--weights", str(tiny_experiment), "--out", str(high),
                         "--device", "cpu", "--runs", run, "--tta", "none", "--no-progress",
                         "--thresholds", LOW.replace("0.005", "1.0")]) == 0
    assert len(read_submission(high)) == 0  # nothing reaches 1.0: a valid, header-only file


def test_onnx_engine_matches_torch(synthetic_root, tiny_experiment, tmp_path, capsys):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    assert export_main(["--weights", str(exp), "--format", "onnx", "--batch-size", "1"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    run = layout.list_runs(synthetic_root, "test")[0]
    t, o = tmp_path / "t.csv", tmp_path / "o.csv"
    assert run_predict(synthetic_root, exp, t, "--tta", "none", "--runs", run) == 0
    assert run_predict(synthetic_root, exp, o, "--tta", "none", "--runs", run, "--engine", "onnx",
                       "--engine-cache", str(tmp_path / "cache"), "--set", "infer.batch_size=1") == 0
    key = ["experiment", "particle_type", "x", "y", "z"]
    st, so = (read_submission(p).sort_values(key)[key].reset_index(drop=True) for p in (t, o))
    assert len(st) == len(so) > 0
    same = (st[["x", "y", "z"]].to_numpy() - so[["x", "y", "z"]].to_numpy()).max(axis=1) < 1e-6
    # an untrained model is nearly flat, so 1e-7 differences may move a rare plateau peak; all else is identical
    assert same.mean() > 0.98


def test_export_without_onnxruntime_fails_before_writing_anything(tiny_experiment, tmp_path, capsys, monkeypatch):
    import importlib

    import czii_kit.infer.engines

    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    real = importlib.import_module

    def no_onnxruntime(name, *args):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *args)

    assert export_main(["--weights", str(exp), "--format", "onnx", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
    monkeypatch.setattr(czii_kit.infer.engines.importlib, "import_module", no_onnxruntime)
    assert export_main(["--weights", str(exp), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install onnxruntime" in err and "to check the export's parity" in err and "--engine" not in err
    assert not list(exp.glob("*.onnx"))


def test_an_export_that_fails_its_parity_check_is_removed(tiny_experiment, tmp_path, capsys, monkeypatch):
    import czii_kit.infer.export

    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    monkeypatch.setattr(czii_kit.infer.export, "parity", lambda *a, **k: 1.0)
    assert export_main(["--weights", str(exp), "--format", "onnx", "--batch-size", "1"]) == 2
    captured = capsys.readouterr()
    assert "max abs diff 1.000e+00" in captured.out and "removed" in captured.out and "not faithful" in captured.err
    assert not list(exp.glob("*.onnx"))  # pack --onnx and predict cannot pick up an unfaithful graph
    monkeypatch.undo()
    assert export_main(["--weights", str(exp), "--format", "onnx", "--batch-size", "1"]) == 0
    (graph,) = exp.glob("*.onnx")
    graph.write_bytes(graph.read_bytes()[:1000])  # cut short after the export
    capsys.readouterr()
    assert export_main(["--weights", str(exp), "--format", "onnx", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert f"onnxruntime could not load {graph}" in err and "--force" in err and len(err.splitlines()) == 1
    assert graph.stat().st_size == 1000  # a file it did not write now is left for the user to replace


def test_onnx_fp16_engine_exports_the_fp16_graph_into_the_cache_and_scores(synthetic_root, tiny_experiment,
                                                                           tmp_path):
    """--engine onnx_fp16 runs the graph a TensorRT engine is built from, exported into the cache, never next to
    the checkpoint; it writes a valid submission close to fp32 (an untrained model's flat maps make ties fragile)."""
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    before = sorted(p.name for p in exp.iterdir())
    run = layout.list_runs(synthetic_root, "test")[0]
    t, h = tmp_path / "t.csv", tmp_path / "h.csv"
    assert run_predict(synthetic_root, exp, t, "--tta", "none", "--runs", run) == 0
    assert run_predict(synthetic_root, exp, h, "--tta", "none", "--runs", run, "--engine", "onnx_fp16",
                       "--engine-cache", str(tmp_path / "cache")) == 0
    assert sorted(p.name for p in exp.iterdir()) == before
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.name.endswith("_fp16.onnx")
    st, sh = read_submission(t), read_submission(h)
    assert len(st) > 100 and abs(len(sh) - len(st)) <= 0.05 * len(st)  # LOW thresholds: thousands of weak peaks
    matched = [
        np.linalg.norm(sh.loc[sh["particle_type"] == row.particle_type, ["x", "y", "z"]].to_numpy(float)
                       - np.array([row.x, row.y, row.z]), axis=1).min(initial=np.inf) < VOXEL_SPACING
        for row in st.itertuples()
    ]
    assert np.mean(matched) > 0.95  # measured 0.995: fp16 moves only ties on the flat maps of an untrained model


def test_ensemble_of_two_identical_members_equals_one(synthetic_root, tiny_experiment, tmp_path):
    run = layout.list_runs(synthetic_root, "test")[0]
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    ckpt = tiny_experiment / "fold0.pt"
    assert run_predict(synthetic_root, ckpt, one, "--tta", "none", "--runs", run) == 0
    assert predict_main(["--data", str(synthetic_root), "--weights", str(ckpt), str(ckpt), "--out", str(two),
                         "--device", "cpu", "--thresholds", LOW, "--tta", "none", "--runs", run, "--no-progress",
                         "--member-weights", "1,3"]) == 0
    pd.testing.assert_frame_equal(read_submission(one), read_submission(two))


def test_a_missing_tomogram_is_refused_before_any_inference(synthetic_root, tiny_experiment, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    broken, _ = layout.list_runs(root, "test")
    shutil.rmtree(layout.tomogram_path(root, "test", broken))
    out = tmp_path / "s.csv"
    assert run_predict(root, tiny_experiment, out, "--tta", "none") == 2
    err = capsys.readouterr().err
    assert broken in err and "no 'denoised' reconstruction" in err
    assert not out.exists()


def test_a_run_failing_mid_way_is_reported_and_others_finish(synthetic_root, tiny_experiment, tmp_path, capsys,
                                                              caplog):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    broken, ok = layout.list_runs(root, "test")
    chunk = next(p for p in sorted((layout.tomogram_path(root, "test", broken) / "0").rglob("*"))
                 if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(b"not a blosc chunk")  # the metadata is fine, the voxels are not
    out = tmp_path / "s.csv"
    assert run_predict(root, tiny_experiment, out, "--tta", "none") == 1
    assert set(read_submission(out)["experiment"]) <= {ok}
    printed = capsys.readouterr().out
    assert f"FAILED {broken}" in printed and "corrupt" in printed
    assert not [r for r in caplog.records if r.exc_info]  # a corrupt store is named in one line, no traceback


@pytest.mark.parametrize("args, message", [
    (["--weights", "/nonexistent/w"], "do not exist"),
    (["--runs", "TS_nope"], "TS_nope"),
    (["--thresholds", "ferritin=0.2"], "unknown particle type"),
    (["--set", "infer.tta=sideways"], "sideways"),
    (["--out", "/proc/forbidden/s.csv"], "cannot write there"),
    (["--member-weights", "1,2,3"], "3 member weights for 1 checkpoints"),
    (["--set", "infer.overlap=1.5"], "infer.overlap must be a number in [0.0, 0.95], got 1.5"),
    (["--set", "infer.overlap=abc"], "infer.overlap must be a number, got 'abc'"),
    (["--thresholds", "ribosome=7"], "ribosome=7 is not a probability in [0, 1]"),
])
def test_bad_input(args, message, synthetic_root, tiny_experiment, tmp_path, capsys):
    argv = ["--data", str(synthetic_root), "--weights", str(tiny_experiment), "--out", str(tmp_path / "s.csv"),
            "--device", "cpu", "--no-progress"]
    for i in range(0, len(args), 2):
        j = argv.index(args[i]) if args[i] in argv else None
        if j is None:
            argv += args[i:i + 2]
        else:
            argv[j + 1] = args[i + 1]
    assert predict_main(argv) == 2
    assert message in capsys.readouterr().err


def test_out_replaces_an_earlier_submission_but_no_other_file_and_never_writes_into_the_data(
        synthetic_root, tiny_experiment, tmp_path, capsys, monkeypatch):
    import czii_kit.data.io

    monkeypatch.setattr(czii_kit.data.io, "read_run", lambda *a, **k: pytest.fail("a tomogram was read"))
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\nnotes,here\n")
    assert run_predict(synthetic_root, tiny_experiment, notes) == 2
    assert "exists and is not a submission CSV" in capsys.readouterr().err
    assert notes.read_text() == "my,own\nnotes,here\n"
    inside = synthetic_root / "sample_submission.csv"
    before = inside.read_bytes()
    assert run_predict(synthetic_root, tiny_experiment, inside) == 2
    assert "is inside the data directory" in capsys.readouterr().err and inside.read_bytes() == before
    monkeypatch.undo()
    earlier = tmp_path / "submission.csv"
    earlier.write_text("id,experiment,particle_type,x,y,z\n")
    run = layout.list_runs(synthetic_root, "test")[0]
    assert run_predict(synthetic_root, tiny_experiment, earlier, "--tta", "none", "--runs", run) == 0
    assert len(read_submission(earlier)) > 0
    assert run_predict(synthetic_root, tiny_experiment, notes, "--tta", "none", "--runs", run, "--overwrite") == 0
    assert len(read_submission(notes)) > 0


def test_the_header_says_whose_thresholds_predict_uses(synthetic_root, tiny_experiment, tmp_path, capsys):
    run = layout.list_runs(synthetic_root, "test")[0]
    argv = ["--data", str(synthetic_root), "--weights", str(tiny_experiment), "--device", "cpu", "--runs", run,
            "--tta", "none", "--no-progress", "--out"]
    assert predict_main([*argv, str(tmp_path / "a.csv")]) == 0
    assert "thresholds: the checkpoint's own (tuned on its validation run)" in capsys.readouterr().out
    assert predict_main([*argv, str(tmp_path / "b.csv"), "--thresholds", "ribosome=0.5"]) == 0
    assert "thresholds: the checkpoint's own (tuned on its validation run), with the per-class values given" in \
        capsys.readouterr().out


def test_incompatible_checkpoints(tiny_experiment, tmp_path, capsys, synthetic_root):
    import torch

    bad = tmp_path / "bad"
    bad.mkdir()
    ckpt = torch.load(tiny_experiment / "fold0.pt", weights_only=True)
    ckpt["normalization"] = {**ckpt["normalization"], "clip": 3.0}
    torch.save(ckpt, bad / "fold1.pt")
    argv = ["--data", str(synthetic_root), "--weights", str(tiny_experiment), str(bad), "--out",
            str(tmp_path / "s.csv"), "--device", "cpu"]
    assert predict_main(argv) == 2
    assert "normalization" in capsys.readouterr().err


def test_mixed_unet_and_yolo_checkpoints_without_tuned_weights_are_refused(synthetic_root, tiny_experiment,
                                                                           tiny_yolo_experiment, tmp_path, capsys):
    out = tmp_path / "mixed.csv"
    assert run_predict(synthetic_root, tiny_experiment, out, "--tta", "none",
                       "--weights", str(tiny_experiment), str(tiny_yolo_experiment)) == 2
    err = capsys.readouterr().err
    assert "2 sources (unet, yolo) but no per-class source weights" in err
    assert "czii evaluate" in err and "--thresholds-from REPORT" in err and "--default-fusion" in err
    assert not out.exists()


def test_mixed_unet_and_yolo_checkpoints_are_fused_on_purpose(synthetic_root, tiny_experiment, tiny_yolo_experiment,
                                                              tmp_path, monkeypatch):
    from czii_kit.post import fusion

    calls = []
    real_fuse = fusion.fuse
    monkeypatch.setattr(fusion, "fuse", lambda sources, **kw: calls.append(sorted(sources)) or real_fuse(sources, **kw))
    run = layout.list_runs(synthetic_root, "test")[0]
    out = tmp_path / "mixed.csv"
    assert run_predict(synthetic_root, tiny_experiment, out, "--tta", "none", "--runs", run,
                       "--weights", str(tiny_experiment), str(tiny_yolo_experiment), "--default-fusion") == 0
    assert calls == [["unet", "yolo"]]
    sub = read_submission(out)
    assert set(sub["experiment"]) <= {run}


def test_mixed_checkpoints_fuse_with_the_weights_evaluate_tuned(synthetic_root, tiny_experiment, tiny_yolo_experiment,
                                                                tmp_path, capsys):
    from czii_kit.evaluate import run_evaluation
    from czii_kit.tuning import load_tuning

    report = run_evaluation(synthetic_root, [tiny_experiment, tiny_yolo_experiment], tmp_path / "report",
                            device="cpu", tta="none", progress=False)
    assert load_tuning(report["thresholds"]).source_weights  # evaluate tuned per-class source weights
    out = tmp_path / "mixed.csv"
    run = layout.list_runs(synthetic_root, "test")[0]
    assert predict_main(["--data", str(synthetic_root), "--weights", str(tiny_experiment), str(tiny_yolo_experiment),
                         "--out", str(out), "--device", "cpu", "--tta", "none", "--no-progress", "--runs", run,
                         "--thresholds-from", str(tmp_path / "report")]) == 0
    assert "thresholds: from" in capsys.readouterr().out and out.exists()


def test_export_tool_handles_yolo_checkpoints(tiny_yolo_experiment, tmp_path, capsys):
    exp = tmp_path / "yolo"
    shutil.copytree(tiny_yolo_experiment, exp)
    assert export_main(["--weights", str(exp), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "fold0_yolo_64_b8.onnx: torch fp32 vs onnx fp32: max abs diff" in out and "OK" in out
    assert (exp / "fold0_yolo_64_b8.onnx").exists()  # the tiny config's yolo.imgsz and yolo.infer_batch
    assert export_main(["--weights", str(exp), "--format", "onnx", "--precision", "fp16"]) == 0
    assert "fold0_yolo_64_b8_fp16.onnx: torch fp32 vs onnx fp16" in capsys.readouterr().out
    assert (exp / "fold0_yolo_64_b8_fp16.onnx").exists()
    written = sorted(p.name for p in exp.iterdir())
    assert export_main(["--weights", str(exp), "--format", "tensorrt"]) == 2  # no GPU here: refused before work
    assert "tensorrt package" in capsys.readouterr().err
    assert sorted(p.name for p in exp.iterdir()) == written


def test_a_fold_ensemble_folded_into_one_graph_predicts_like_its_torch_members(synthetic_root, tiny_experiment,
                                                                                tmp_path, capsys):
    import torch

    from czii_kit.checkpoints import load_checkpoint, save_checkpoint

    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    other = load_checkpoint(exp / "fold0.pt")
    generator = torch.Generator().manual_seed(0)
    other["state_dict"] = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                           for k, v in other["state_dict"].items()}
    save_checkpoint({k: v for k, v in other.items() if k != "path"}, exp / "fold1.pt")
    assert export_main(["--weights", str(exp), "--format", "onnx", "--fold-ensemble", "--member-weights", "1,3"]) == 0
    printed = capsys.readouterr().out
    assert "torch fp32 vs onnx fp32: max abs diff" in printed and "OK" in printed
    (graph,) = exp.glob("ensemble-*.onnx")  # next to the checkpoints, where predict and the pack look
    assert graph.stat().st_size > 0
    run = layout.list_runs(synthetic_root, "test")[0]
    members, folded = tmp_path / "members.csv", tmp_path / "folded.csv"
    common = ["--tta", "none", "--runs", run, "--member-weights", "1,3", "--engine-cache", str(tmp_path / "cache")]
    assert run_predict(synthetic_root, exp, members, *common) == 0
    assert run_predict(synthetic_root, exp, folded, *common, "--engine", "onnx",
                       "--set", "infer.fold_ensemble=true") == 0
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*ensemble*"))  # the packed graph
    a, b = read_submission(members), read_submission(folded)
    # rows with tied scores may swap places between engines: compare as sets, class by class
    assert len(a) == len(b) > 0
    for (name, rows_a), (_, rows_b) in zip(a.groupby("particle_type"), b.groupby("particle_type")):
        xyz_a, xyz_b = rows_a[["x", "y", "z"]].to_numpy(), rows_b[["x", "y", "z"]].to_numpy()
        distances = np.linalg.norm(xyz_a[:, None] - xyz_b[None], axis=-1)
        assert len(xyz_a) == len(xyz_b) and distances.min(axis=1).max() < 1.0 and distances.min(axis=0).max() < 1.0, name


def test_an_engine_that_cannot_run_here_falls_back_to_torch_said_once_without_a_traceback(
        synthetic_root, tiny_experiment, tmp_path, capsys, caplog):
    """No GPU and no TensorRT here: a known cause, said in one warning (and the closing note), then torch runs."""
    run = layout.list_runs(synthetic_root, "test")[0]
    out = tmp_path / "s.csv"
    assert run_predict(synthetic_root, tiny_experiment, out, "--tta", "none", "--runs", run, "--engine",
                       "tensorrt", "--engine-cache", str(tmp_path / "cache")) == 0
    printed = capsys.readouterr().out
    assert printed.count("WARNING: engine tensorrt could not be set up (ConfigError: TensorRT engines need") == 1
    assert not [r for r in caplog.records if r.exc_info]  # no traceback for a cause the message already names
    assert len(read_submission(out)) > 0


def test_predict_warns_about_a_killed_training_and_an_empty_submission(synthetic_root, tiny_experiment, tmp_path,
                                                                        capsys):
    from czii_kit.checkpoints import save_state

    exp = tmp_path / "killed"
    exp.mkdir()
    shutil.copy2(tiny_experiment / "fold0.pt", exp / "fold0.pt")
    save_state({"epoch": 0, "finished": False}, exp / "fold0_last.pt")
    run = layout.list_runs(synthetic_root, "test")[0]
    out = tmp_path / "s.csv"
    assert predict_main(["--data", str(synthetic_root), "--weights", str(exp), "--out", str(out), "--device", "cpu",
                         "--runs", run, "--tta", "none", "--no-progress", "--thresholds",
                         LOW.replace("0.005", "1.0")]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: " in printed and "its training stopped after epoch 1 of" in printed
    assert f"WARNING: {out} has no rows" in printed and len(read_submission(out)) == 0
