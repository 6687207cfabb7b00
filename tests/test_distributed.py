"""One model on several processes (torchrun, gloo on the CPU): a DDP step is the one-process step on the ranks'
batches put together, rank 0 alone writes and speaks, and a failing rank ends the job in bounded time."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.checkpoints import load_checkpoint
from czii_kit.train.distributed import DistInfo, agree, broadcast_buffers, rank_seed
from czii_kit.train.ema import ModelEMA
from czii_kit.train.loop import train_step

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "ddp"))
from common import batch, model_and_loss  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_one_ddp_step_equals_one_process_step_on_both_halves(tmp_path):
    done = torchrun(str(HERE / "ddp" / "step.py"), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    model, loss_fn = model_and_loss()
    run = SimpleNamespace(model=model, loss_fn=loss_fn, device=torch.device("cpu"), use_amp=False,
                          cfg={"train": {"grad_clip": 1.0}}, dist=DistInfo(), ddp=None,
                          optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          scaler=torch.amp.GradScaler("cuda", enabled=False))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda s: 1.0)
    run.ema = ModelEMA(model, 0.5)
    train_step(run, *batch())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in model.state_dict().items():
        for rank in ranks:
            torch.testing.assert_close(rank["weights"][key], value, atol=1e-5, rtol=0)
    for key in ranks[0]["ema"]:
        assert torch.equal(ranks[0]["ema"][key], ranks[1]["ema"][key])  # the EMA is identical on every rank
        torch.testing.assert_close(ranks[0]["ema"][key], run.ema.state_dict()[key], atol=1e-5, rtol=0)


def test_torchrun_trains_a_fold_with_rank_0_alone_writing(synthetic_root, tmp_path):
    out = tmp_path / "exp"
    sets = [a for o in [*TINY_TRAIN_OVERRIDES, "train.samples_per_epoch=8"] for a in ("--set", o)]
    done = torchrun("-m", "czii_kit.cli.main", "train", "--fold", "0", "--data", str(synthetic_root), "--config",
                    "cpu_quick", "--out", str(out), "--no-progress", *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1/2: loss") == 1 and done.stdout.count("epoch 2/2: loss") == 1  # rank 0 speaks
    assert done.stdout.count("checkpoint  ") == 1
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fold0.pt", "fold0_curve.png", "fold0_last.pt",
                                                     "fold0_log.csv"]  # no temporary file of another rank left
    assert list(pd.read_csv(out / "fold0_log.csv")["epoch"]) == [1, 2]
    train_cfg = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (train_cfg["world_size"], train_cfg["dist_backend"]) == (2, "gloo")
    ckpt = load_checkpoint(out / "fold0.pt")  # the same format as one process writes
    assert ckpt["config"]["train"]["world_size"] == 2 and set(ckpt["thresholds"]) == set(ckpt["classes"])
    resumed = torchrun("-m", "czii_kit.cli.main", "train", "--fold", "0", "--data", str(synthetic_root), "--config",
                       "cpu_quick", "--out", str(out), "--no-progress", "--resume",
                       *[a for o in [*TINY_TRAIN_OVERRIDES, "train.samples_per_epoch=8", "train.epochs=3"]
                         for a in ("--set", o)])
    assert resumed.returncode != 0 and "exitcode  : 2" in resumed.stderr  # torchrun ends 1; the ranks ended 2
    assert "rank 0 of 2: " in resumed.stderr and "another config" in resumed.stderr
    assert "train.epochs: 2 -> 3" in resumed.stderr  # the refusal names what changed
    again = torchrun("-m", "czii_kit.cli.main", "train", "--fold", "0", "--data", str(synthetic_root), "--config",
                     "cpu_quick", "--out", str(out), "--no-progress", "--resume", *sets)
    assert again.returncode == 0 and "fold 0 finished all 2 epochs already" in again.stdout + again.stderr


def test_a_failing_rank_ends_the_job_in_bounded_time_and_is_named(synthetic_root, tmp_path):
    started = time.monotonic()
    done = torchrun(str(HERE / "ddp" / "fail_rank.py"), "train", "--fold", "0", "--data", str(synthetic_root),
                    "--config", "cpu_quick", "--out", str(tmp_path / "exp"), "--no-progress",
                    "--set", "train.dist_timeout_s=30", timeout=240)
    assert done.returncode != 0
    assert time.monotonic() - started < 180
    assert "error: rank 1 of 2: failed with RuntimeError: a deliberate failure" in done.stderr
    assert not (tmp_path / "exp" / "fold0.pt").exists()


def test_single_process_helpers_do_nothing():
    info = DistInfo()
    assert not info.enabled and info.is_main and rank_seed(7, info) == 7
    assert agree(True, info) is True and agree(False, info) is False
    broadcast_buffers(torch.nn.BatchNorm1d(2), info)  # no process group: a no-op, not an error
    assert rank_seed(7, DistInfo(1, 2)) != rank_seed(7, DistInfo(0, 2))


@pytest.mark.parametrize("name", ["step.py", "fail_rank.py", "common.py"])
def test_the_torchrun_scripts_are_no_test_modules(name):
    assert not name.startswith("test_") and (HERE / "ddp" / name).is_file()
