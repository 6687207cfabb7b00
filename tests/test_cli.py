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
