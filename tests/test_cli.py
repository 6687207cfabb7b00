"""One `czii` command: subcommands in workflow order, the tools/*.py shims run the same code, and shared flags
mean the same thing everywhere (--device cuda:N, --folds 0 2 or 0,2)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from czii_kit.cli import args as shared
from czii_kit.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_in_workflow_order(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    positions = [out.index(f"  {name} ") for name in COMMANDS]
    assert positions == sorted(positions)
    assert list(COMMANDS)[:6] == ["make-synthetic", "make-copick-project", "train", "evaluate", "predict", "score"]


def test_an_unknown_command_names_the_closest_one(capsys):
    assert main(["predcit"]) == 2
    assert "did you mean 'predict'" in capsys.readouterr().err


def test_every_command_module_has_a_main_and_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert f"usage: czii {name}" in capsys.readouterr().out


def test_every_tool_is_a_shim_of_a_command():
    """tools/*.py hold no logic: each runs one czii command (bench_* a czii bench subcommand)."""
    for tool in sorted((REPO / "tools").glob("*.py")):
        text = tool.read_text()
        code = [line for line in text.splitlines() if line and not line.startswith(("#", '"""', "import", "from"))]
        assert len(code) <= 3, f"{tool.name} carries logic: {code}"
        assert 'tool("' in text, tool.name


def test_the_installed_command_and_a_tool_give_the_same_help():
    czii = subprocess.run([sys.executable, "-m", "czii_kit.cli.main", "score", "--help"], capture_output=True,
                          text=True)
    tool = subprocess.run([sys.executable, str(REPO / "tools" / "score.py"), "--help"], capture_output=True, text=True)
    assert czii.returncode == tool.returncode == 0
    assert " ".join(czii.stdout.replace("czii score", "score.py").split()) == " ".join(tool.stdout.split())


@pytest.mark.parametrize("text, ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True),
                                      ("CUDA:0", True), ("gpu", False), ("cuda:x", False), ("cuda1", False)])
def test_device_flag(text, ok):
    if ok:
        assert shared.device(text) == text.lower()
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="cuda:N"):
            shared.device(text)


def test_folds_flag_takes_spaces_or_commas():
    from czii_kit.errors import ConfigError

    assert shared.folds(["0", "2"]) == shared.folds(["0,2"]) == shared.folds(["0,", "2"]) == [0, 2]
    assert shared.folds(None) is None
    with pytest.raises(ConfigError, match="--folds 0 2 or --folds 0,2"):
        shared.folds(["zero"])


def test_train_folds_takes_all_spaces_or_commas():
    from czii_kit.cli.train_fold import fold_list, parse_args

    spaces, commas = (fold_list(parse_args(["--folds", *f]).folds) for f in (["0", "2"], ["0,2"]))
    assert spaces == commas == [0, 2]
    assert fold_list(parse_args(["--folds", "all"]).folds) is None


def test_train_writes_a_fine_tuned_model_beside_the_one_from_scratch(monkeypatch, synthetic_root):
    """The README's first steps train fold 0, then fine-tune fold 0: two experiments, two default folders."""
    import czii_kit.train
    from czii_kit.cli.train_fold import main as train_main

    outs = []
    monkeypatch.setattr(czii_kit.train, "trainer_for", lambda cfg: lambda cfg, fold, root, out, **kw: outs.append(out)
                        or {"main": False})
    base = ["--fold", "0", "--data", str(synthetic_root), "--config", "cpu_quick"]
    assert train_main(base) == train_main([*base, "--init-from", "weights/pretrained/cpu_quick"]) == 0
    assert [str(o) for o in outs] == [str(Path("weights/cpu_quick")), str(Path("weights/cpu_quick_finetuned"))]


def test_predict_takes_cuda_n_and_says_clearly_when_there_is_no_such_gpu(tiny_experiment, synthetic_root, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "s.csv"
    assert main(["predict", "--data", str(synthetic_root), "--weights", str(tiny_experiment), "--out", str(out),
                 "--device", "cuda:1", "--no-progress"]) == 2
    assert "'cuda:1' requested but torch sees no CUDA GPU" in capsys.readouterr().err and not out.exists()


def test_available_devices_keeps_one_named_gpu(monkeypatch):
    from czii_kit.infer.split import available_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert available_devices("cuda:1") == ["cuda:1"]
    assert available_devices("cuda") == available_devices("auto") == ["cuda:0", "cuda:1"]
    assert available_devices("cpu") == ["cpu"]


@pytest.mark.parametrize("raised, code, said", [
    (KeyboardInterrupt(), 130, "interrupted; checkpoints, submissions and reports are written whole or not at all"),
    (PermissionError(13, "Permission denied", "/srv/out/fold0.pt"), 2, "error: Permission denied: /srv/out/fold0.pt"),
    (OSError(28, "No space left on device", "/srv/out/x.csv"), 2, "error: No space left on device: /srv/out/x.csv"),
])
def test_a_refused_file_or_ctrl_c_is_one_line_not_a_traceback(raised, code, said, capsys):
    from czii_kit.cli.common import exit_on_user_error

    def fails(argv=None):
        raise raised

    assert exit_on_user_error(fails)([]) == code
    err = capsys.readouterr().err
    assert said in err and len(err.splitlines()) == 1


def test_output_folders_are_checked_before_any_work(tmp_path):
    from czii_kit.errors import DataError
    from czii_kit.utils.atomic import check_output_folder

    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    with pytest.raises(DataError, match="--out .*notes.txt is a file, not a folder; choose another --out"):
        check_output_folder(mine)
    with pytest.raises(DataError, match="lies under .*notes.txt, which is a file"):
        check_output_folder(mine / "report")
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # probed, not created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # the probe left nothing


@pytest.mark.parametrize("command", [["train", "--fold", "0", "--config", "cpu_quick"], ["evaluate", "--weights", "W"],
                                     ["make-copick-project"]])
def test_an_out_that_is_a_file_fails_before_the_data_is_read(command, synthetic_root, tmp_path, capsys, monkeypatch):
    import czii_kit.data.io

    monkeypatch.setattr(czii_kit.data.io, "read_run", lambda *a, **k: pytest.fail("a tomogram was read"))
    mine = tmp_path / "mine.txt"
    mine.write_text("mine")
    weights = str(REPO / "weights" / "pretrained" / "cpu_quick")
    argv = [w if w != "W" else weights for w in command] + ["--data", str(synthetic_root), "--out", str(mine)]
    assert main(argv) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and mine.read_text() == "mine"


@pytest.mark.parametrize("command", [["train", "--fold", "0", "--config", "cpu_quick"], ["evaluate", "--weights", "W"]])
def test_an_out_inside_the_data_fails_before_the_data_is_read(command, synthetic_root, capsys, monkeypatch):
    import czii_kit.data.io

    monkeypatch.setattr(czii_kit.data.io, "read_run", lambda *a, **k: pytest.fail("a tomogram was read"))
    weights = str(REPO / "weights" / "pretrained" / "cpu_quick")
    argv = [w if w != "W" else weights for w in command] + ["--data", str(synthetic_root), "--out",
                                                            str(synthetic_root / "mine")]
    assert main(argv) == 2
    assert "is inside the data directory" in capsys.readouterr().err and not (synthetic_root / "mine").exists()
