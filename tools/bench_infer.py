#!/usr/bin/env python
"""Inference speed: forward throughput, full-pipeline seconds per tomogram (with and without TTA),
peak finding (ours vs a plain scipy.ndimage.maximum_filter reference), post-processing share, peak memory.

    python tools/bench_infer.py --weights weights/cpu_quick          # a trained checkpoint
    python tools/bench_infer.py --config cpu_quick                   # an untrained model of a config
    python tools/bench_infer.py --weights weights/unet_r34 --tta flips --engine onnx

The tomogram is a full-size (184x630x630 by default) synthetic run, generated on the fly.
"""
import argparse
import resource
import time

import numpy as np
import torch

from czii_kit.config import load_config
from czii_kit.data.normalize import normalize_from_config
from czii_kit.data.synth import SynthConfig, generate_run
from czii_kit.infer.engines import TorchEngine, resolve_device
from czii_kit.infer.members import load_checkpoints, make_member
from czii_kit.infer.predictor import Member, candidates, infer_window, predict_probabilities
from czii_kit.infer.tta import parse_tta
from czii_kit.models import build_model
from czii_kit.models.activation import ProbabilityModel
from czii_kit.particles import CLASS_NAMES
from czii_kit.post.peaks import find_peaks, reference_peaks


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="experiment directory or checkpoint (first checkpoint is used)")
    src.add_argument("--config", default="cpu_quick", help="untrained model of this config (default cpu_quick)")
    p.add_argument("--shape", type=int, nargs=3, default=[184, 630, 630])
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx", "tensorrt"])
    p.add_argument("--tta", default="flips", help="the TTA run for the 'with TTA' timing")
    p.add_argument("--engine-cache", default="build/engines")
    args = p.parse_args()

    device = resolve_device(args.device)
    if args.weights:
        ckpt = load_checkpoints([args.weights])[0]
        cfg, stride = ckpt["config"], ckpt["stride"]
        member = make_member(ckpt, args.engine, device, infer_window(cfg), cfg["infer"]["batch_size"],
                             args.engine_cache)
        source = ckpt["path"]
    else:
        cfg = load_config(args.config)
        model = build_model(cfg["model"]["name"], **cfg["model"]["args"])
        stride = model.output_stride
        member = Member(TorchEngine(ProbabilityModel(model, "softmax"), infer_window(cfg), device=device))
        source = f"untrained {args.config}"
    engine = member.engine
    print(f"{source}: engine {args.engine} on {device}, window {engine.window}, batch {cfg['infer']['batch_size']}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")

    vols, _ = generate_run("TS_bench", 0, SynthConfig(shape=tuple(args.shape)))
    volume = normalize_from_config(vols["denoised"], cfg["normalize"])

    batch = torch.randn(cfg["infer"]["batch_size"], 1, *engine.window, device=engine.device)
    engine(batch)
    _, t = timed(lambda: [engine(batch) for _ in range(3)])
    fwd = 3 * batch.numel() / t
    print(f"forward: {fwd / 1e6:.2f} Mvoxel/s ({t / 3:.2f} s per batch of {batch.shape[0]})")

    results = {}
    for label, tta in (("no TTA", parse_tta("none")), (f"TTA {args.tta}", parse_tta(args.tta))):
        prob, t_inf = timed(predict_probabilities, [member], volume, cfg, tta)
        cands, t_post = timed(candidates, prob, "TS_bench", stride, cfg, 0.05)
        total = t_inf + t_post
        results[label] = (prob, total)
        print(f"full pipeline, {label} ({len(tta)} pass{'es' if len(tta) > 1 else ''}): {total:.1f} s per "
              f"{'x'.join(map(str, args.shape))} tomogram (inference {t_inf:.1f} s, peaks + post-processing "
              f"{t_post:.2f} s = {100 * t_post / total:.1f}%)")

    prob = results["no TTA"][0]
    thresholds = {c: 0.1 for c in CLASS_NAMES}
    ours, t_ours = timed(find_peaks, prob, list(CLASS_NAMES), thresholds, kernel_frac=cfg["peaks"]["kernel_frac"],
                         stride=stride)
    ref, t_ref = timed(reference_peaks, prob, list(CLASS_NAMES), thresholds, kernel_frac=cfg["peaks"]["kernel_frac"],
                       stride=stride)
    same = len(ours) == len(ref) and np.allclose(ours[["x", "y", "z"]].to_numpy(), ref[["x", "y", "z"]].to_numpy())
    print(f"peak finding (threshold 0.1): ours {t_ours:.2f} s vs scipy maximum_filter reference {t_ref:.2f} s "
          f"-> {t_ref / max(t_ours, 1e-9):.1f}x faster; same peaks: {same} ({len(ours)})")
    print(f"peak memory: RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
          + (f", CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
