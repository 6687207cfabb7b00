"""Training throughput: patches/s, voxels/s, data time against model time per batch, peak memory.

The data pipeline is timed the way training uses it (fold 0's DataLoader with the config's workers); the model
step is the training step itself (forward, loss, backward, clipping, AdamW, schedule, EMA), with the model
placed as training places it: ``setup`` and ``train_step`` of ``czii_kit.train.loop``, so it cannot drift.
"""
from __future__ import annotations

import resource
import tempfile
import time

import numpy as np
import torch

from czii_kit.config import load_config
from czii_kit.infer.kinds import device_sync
from czii_kit.train.loop import setup, train_step


def bench(name: str, data, steps: int, overrides: list[str]) -> dict:
    """Times ``steps`` batches (after two warm-up ones) of fold 0's real training setup of config ``name``."""
    cfg = load_config(name, overrides)
    tc = cfg["train"]
    tc["samples_per_epoch"] = (steps + 2) * tc["batch_size"]
    with tempfile.TemporaryDirectory(prefix="czii-bench-train-") as out:
        run = setup(cfg, 0, data, out)
        run.loader.dataset.set_epoch(0)
        run.model.train()
        sync = device_sync(run.device) or (lambda: None)
        data_t, step_t = [], []
        it = iter(run.loader)
        for i in range(steps + 2):
            t0 = time.perf_counter()
            image, target = next(it)
            t1 = time.perf_counter()
            train_step(run, image, target)
            sync()
            t2 = time.perf_counter()
            if i >= 2:  # warm-up excluded
                data_t.append(t1 - t0)
                step_t.append(t2 - t1)
    batch_vox = tc["batch_size"] * int(np.prod(tc["patch_size"]))
    step = float(np.mean(step_t)) + float(np.mean(data_t))
    return {"config": name, "device": str(run.device), "patch": "x".join(map(str, tc["patch_size"])),
            "batch": tc["batch_size"], "workers": tc["num_workers"],
            "data_s_per_batch": float(np.mean(data_t)), "model_s_per_batch": float(np.mean(step_t)),
            "data_share": float(np.mean(data_t)) / step, "patches_per_s": tc["batch_size"] / step,
            "voxels_per_s": batch_vox / step,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30 if run.device.type == "cuda" else 0.0}


def line(r: dict) -> str:
    """One printed line of ``bench``'s numbers."""
    return (f"{r['config']:>12} on {r['device']}: patch {r['patch']} x{r['batch']} (workers {r['workers']}): "
            f"data {r['data_s_per_batch'] * 1e3:.1f} ms/batch, model {r['model_s_per_batch'] * 1e3:.0f} ms/batch "
            f"-> data share {100 * r['data_share']:.1f}%; {r['patches_per_s']:.2f} patches/s, "
            f"{r['voxels_per_s'] / 1e6:.2f} Mvoxel/s; peak RSS {r['peak_rss_gb']:.2f} GB"
            + (f", peak CUDA {r['peak_cuda_gb']:.2f} GB" if r["peak_cuda_gb"] else ""))
