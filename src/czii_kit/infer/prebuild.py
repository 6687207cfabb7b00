"""Build every TensorRT engine a set of checkpoints needs, before the clock: on a Kaggle T4 in a separate
notebook (kaggle_notebooks/czii_build_engines.ipynb), saved as a dataset the inference notebook attaches.

Engines are named by what they are of (experiment, checkpoint, window or image size, batch, precision,
the weights' digest) and where they run (GPU model, TensorRT version), so the inference notebook uses a
prebuilt engine only when every part of its key matches, and builds the missing ones itself.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from czii_kit.infer.engines import require_tensorrt, resolve_device
from czii_kit.infer.export import EngineFiles, parity
from czii_kit.infer.kinds import KINDS
from czii_kit.infer.plan import PredictionPlan
from czii_kit.utils.atomic import write_text_atomic
from czii_kit.utils.backend import use_device

INDEX = "engines.json"


def build_engines(weights: Sequence[str | Path], out_dir: str | Path, device: str = "cuda:0",
                  overrides: Sequence[str] = (), cache_dir: str | Path = "build/engines",
                  check: bool = True, report=print) -> list[dict]:
    """Build (or find already built in ``out_dir``) the engine of every checkpoint; returns their records,
    also written to ``out_dir/engines.json``. With ``check``, each engine's output is compared with torch fp32."""
    trt = require_tensorrt()
    device = resolve_device(device)
    out_dir = Path(out_dir)
    files = EngineFiles(Path(cache_dir), engine_dir=out_dir)
    plan = PredictionPlan.from_weights(weights, overrides=overrides, engine="tensorrt", files=files)
    cfg = plan.cfg
    records = []
    with use_device(device):
        for name, group in plan.groups.items():
            for ckpt, _ in group:
                t0 = time.monotonic()
                (member,) = plan.single(name, ckpt).load(device, "tensorrt").members[name]
                session = member.runner.session  # GraphEngine (3D) and GraphRunner (YOLO) both keep theirs
                record = {"checkpoint": str(ckpt["path"]), "kind": name, "engine": session.path.name,
                          "input_shape": list(session.input_shape), "seconds": round(time.monotonic() - t0, 1),
                          "gpu": torch.cuda.get_device_name(device), "tensorrt": trt.__version__}
                if check:
                    record["max_abs_diff_vs_torch_fp32"] = parity(KINDS[name].graph([ckpt], cfg), session, device)
                report(f"{session.path.name}: {record['seconds']} s" + (
                    f", max abs diff vs torch fp32 {record['max_abs_diff_vs_torch_fp32']:.2e}" if check else ""))
                records.append(record)
    write_text_atomic(out_dir / INDEX, json.dumps({"engines": records}, indent=1) + "\n")
    return records
