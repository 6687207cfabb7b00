"""Progress: a bar on a terminal, a few plain lines in a log file or a notebook (never a line per step)."""
from __future__ import annotations

import io

from czii_kit.utils.progress import PLAIN_PERCENT, PLAIN_SECONDS, PlainProgress, progress_bar


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_come_only_when_both_the_percent_and_the_seconds_have_passed():
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(total=1000, desc="runs", unit="run", stream=out, clock=clock)
    for _ in range(1000):  # 1000 steps of 0.125 s: 125 s in all
        clock.now += 0.125
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    # every 30 s (by then far more than 5 % has passed), then the closing line
    assert lines == ["runs: 240/1000 run (24%) after 30 s", "runs: 480/1000 run (48%) after 60 s",
                     "runs: 720/1000 run (72%) after 90 s", "runs: 960/1000 run (96%) after 120 s",
                     "runs: 1000/1000 run (100%) done in 125 s"]
    assert "\r" not in out.getvalue()


def test_slow_steps_print_at_most_one_line_per_few_percent():
    clock, out = Clock(), io.StringIO()
    with PlainProgress(total=1000, desc="slices", stream=out, clock=clock) as bar:
        for _ in range(100):  # 100 steps of 60 s: each is 0.1 %, the seconds alone would print every step
            clock.now += 60
            bar.update()
    counts = [int(line.split()[1].split("/")[0]) for line in out.getvalue().splitlines()]
    assert counts == [50, 100, 100]  # one line per 5 % (50 steps), then the closing line
    assert PLAIN_PERCENT == 5.0 and PLAIN_SECONDS == 30.0


def test_iteration_postfix_bytes_and_no_closing_line_when_not_kept():
    clock, out = Clock(), io.StringIO()
    for _ in PlainProgress(range(3), desc="epoch 1", stream=out, clock=clock, leave=False):
        clock.now += 1
    assert out.getvalue() == ""  # a transient bar (one epoch) leaves nothing: the caller prints its own line
    bar = PlainProgress(total=5e6, desc="sha256", unit="B", unit_scale=True, stream=out, clock=clock)
    bar.set_postfix(file="wheel.whl")
    bar.update(2.5e6)
    bar.close()
    assert out.getvalue().strip() == "sha256: 2.5 MB/5 MB (50%) done in 0 s, file=wheel.whl"


def test_a_terminal_gets_a_bar_and_everything_else_plain_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert not isinstance(progress_bar(range(3), stream=Terminal()), PlainProgress)
    assert isinstance(progress_bar(range(3), stream=io.StringIO()), PlainProgress)
    quiet = io.StringIO()
    assert list(progress_bar(range(3), stream=quiet, enabled=False)) == [0, 1, 2] and quiet.getvalue() == ""


def test_a_training_log_written_to_a_file_has_no_carriage_returns(synthetic_root, tmp_path):
    """Training with progress on, its output going to a file (as `czii train ... > log`): plain lines only."""
    import subprocess
    import sys

    from conftest import TINY_TRAIN_OVERRIDES

    log = tmp_path / "train.log"
    sets = [arg for o in TINY_TRAIN_OVERRIDES + ["train.epochs=1"] for arg in ("--set", o)]
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "czii_kit.cli.main", "train", "--fold", "0", "--data",
                               str(synthetic_root), "--config", "cpu_quick", "--out", str(tmp_path / "w"), *sets],
                              stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "fold 0 epoch 1/" in text and ": loss" in text and len(text.splitlines()) < 40
