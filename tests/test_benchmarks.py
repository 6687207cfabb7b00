"""What the inference benchmark measures: the window tiling's work, and the MONAI peer it compares against."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_OVERRIDES
from czii_kit.bench.infer import single_pass_limit
from czii_kit.bench.peer import peer_peaks, peer_probabilities
from czii_kit.infer.engines import TorchEngine
from czii_kit.infer.sliding_window import predict_volume, window_work
from czii_kit.infer.tta import parse_tta
from czii_kit.particles import CLASS_NAMES
from czii_kit.post.peaks import find_peaks
from czii_kit.train import loop


class Pointwise(torch.nn.Module):
    """Each output voxel depends on its own input voxel only: every tiling and blend gives the same volume."""

    output_stride, input_multiple = 1, 1

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv3d(1, len(CLASS_NAMES), 1)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.head.weight)

    def forward(self, x):
        return torch.sigmoid(self.head(x))


def test_window_work_counts_the_voxels_the_network_sees():
    assert window_work((64, 128, 128), (64, 128, 128), 2, 0.25) == 1.0
    # 184 x 630 x 630 at 64 x 128 x 128, 25% overlap: 4 x 7 x 7 windows
    assert window_work((184, 630, 630), (64, 128, 128), 2, 0.25) == pytest.approx(
        4 * 7 * 7 * 64 * 128 * 128 / (184 * 630 * 630))
    assert single_pass_limit((10, 10, 10), 500.0) == 2.0


def test_peer_and_kit_agree_with_the_model_on_the_whole_volume():
    model = Pointwise().eval()
    volume = np.random.default_rng(0).normal(size=(20, 37, 41)).astype(np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(volume)[None, None])[0]
    tta = parse_tta("flips")
    peer = peer_probabilities([model, model], volume, (8, 16, 16), 0.25, 2, tta)
    kit = predict_volume([TorchEngine(model, (8, 16, 16))] * 2, volume, tta=tta, overlap=0.25, batch_size=2)
    torch.testing.assert_close(peer, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(kit, whole, atol=1e-5, rtol=0)


def test_peer_peaks_find_what_the_kit_finds_on_separated_peaks():
    prob = np.zeros((len(CLASS_NAMES), 30, 60, 60), np.float32)
    centres = [(5, 10, 10), (20, 40, 45), (12, 50, 8)]
    for c, (z, y, x) in enumerate(centres):
        prob[c, z, y, x] = 0.9
        prob[c, z, y, x + 1] = 0.5  # a shoulder that is not a peak
    found = peer_peaks(torch.from_numpy(prob), 0.3, stride=1, kernel_frac=0.5)
    kit = find_peaks(prob, CLASS_NAMES, dict.fromkeys(CLASS_NAMES, 0.3))
    assert [len(f) for f in found] == [1, 1, 1, 0, 0, 0]
    assert [tuple(f[0].tolist()) for f in found[:3]] == centres
    assert len(kit) == 3 and math.isclose(kit["score"].min(), 0.9, rel_tol=1e-6)


def test_window_sweep_scores_every_cell_through_the_pipeline(synthetic_root, tiny_experiment, capsys):
    from czii_kit.cli.bench import main as bench_main

    assert bench_main(["windows", "--weights", str(tiny_experiment), "--data", str(synthetic_root), "--windows",
                       "16x32x32", "32x64x64", "--overlaps", "0.25", "0"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("window")]
    assert len(lines) == 4
    for line in lines:  # thresholds tuned on the split itself can only match or beat the model's own
        own, tuned = (float(x) for x in re.findall(r"F4 ([\d.]+) \(own thresholds\)\s+([\d.]+) \(tuned\)", line)[0])
        assert 0 <= own <= tuned + 1e-9 <= 1 + 1e-9
    assert bench_main(["windows", "--weights", str(tiny_experiment), "--data", str(synthetic_root), "--windows",
                       "16x32"]) == 2
    assert "ZxYxX" in capsys.readouterr().err


def test_training_bench_times_the_real_training_step(synthetic_root, tmp_path, monkeypatch):
    """The benchmark runs fold 0's own setup and step (so it cannot drift from training), times only the steps
    after warm-up, and leaves nothing behind in the working directory."""
    from czii_kit.bench import train as bench

    steps = []
    real_step = loop.train_step
    monkeypatch.setattr(bench, "train_step", lambda run, *batch: steps.append(real_step(run, *batch)))
    monkeypatch.chdir(tmp_path)
    r = bench.bench("cpu_quick", synthetic_root, 3, TINY_TRAIN_OVERRIDES)
    assert len(steps) == 5 and all(np.isfinite(steps))  # 3 timed + 2 warm-up, each a real loss
    assert r["batch"] == 2 and r["patch"] == "32x64x64" and r["device"] == "cpu"
    assert r["patches_per_s"] == pytest.approx(2 / (r["data_s_per_batch"] + r["model_s_per_batch"]))
    assert 0 < r["data_share"] < 1 and r["voxels_per_s"] == pytest.approx(r["patches_per_s"] * 32 * 64 * 64)
    assert list(tmp_path.iterdir()) == []


def test_scale_bench_reads_runs_and_seconds_from_a_predict_log():
    from czii_kit.bench.scale import mean_sd, predicted_runs, run_seconds

    output = ("1 checkpoint(s), engine torch\nTS_5_4: 271 particles in 10.5 s on cpu\nnote: TS_6_4: 3 particles in x\n"
              "TS_6_4: 0 particles in 8.25 s on cpu\nwrote s.csv: 271 rows from 2 run(s) in 19.0 s (9.4 s per run)\n")
    assert predicted_runs(output) == ["TS_5_4", "TS_6_4"]
    assert run_seconds(output) == [10.5, 8.25]
    mean, sd = mean_sd([30.0, 32.0, 34.0])
    assert mean == 32.0 and math.isclose(sd, 2.0)
    assert mean_sd([5.0]) == (5.0, 0.0)
