#!/usr/bin/env python
"""Inference speed: forward throughput, the single-pass limit, the full per-tomogram pipeline (the one prediction
runs) with its stages, peak finding against a plain maximum filter, memory; optionally a MONAI peer.

    python tools/bench_infer.py --weights weights/cpu_quick                       # 1 member, the config's TTA
    python tools/bench_infer.py --weights weights/cpu_quick --members 4 --tta flips --shape 128 320 320
    python tools/bench_infer.py --weights weights/cpu_quick --peer                # vs MONAI, same window/overlap
    python tools/bench_infer.py --weights weights/cpu_quick --peer --peer-window 64 128 128 --peer-overlap 0.25
    python tools/bench_infer.py --config cpu_quick                                # an untrained model of a config

The tomogram is a synthetic run (184x630x630 by default), generated on the fly. "limit" is the tomogram's
voxels divided by the measured forward voxels per second at the chosen window: what one pass would cost if
the network saw every voxel exactly once; the pipeline's ratio to it (per pass) is what windowing,
blending, TTA bookkeeping and peak finding add.
"""
import argparse
import resource
import time

import numpy as np
import torch

from czii_kit.benchmarks import peer_peaks, peer_probabilities, single_pass_limit, window_work
from czii_kit.checkpoints import find_checkpoints, load_checkpoint
from czii_kit.config import load_config
from czii_kit.data.io import Tomogram
from czii_kit.data.synth import SynthConfig, generate_run
from czii_kit.infer.engines import TorchEngine, resolve_device
from czii_kit.infer.kinds import Member, infer_window
from czii_kit.infer.pipeline import Predictor, finalize, inference_config, load_predictor
from czii_kit.infer.sliding_window import predict_volume
from czii_kit.infer.tta import parse_tta
from czii_kit.models import ProbabilityModel, build_model
from czii_kit.particles import CLASS_NAMES, VOXEL_SPACING
from czii_kit.post.peaks import find_peaks, reference_peaks
from czii_kit.utils.backend import to_numpy


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="experiment directory or checkpoint (its first checkpoint is used)")
    src.add_argument("--config", default="cpu_quick", help="untrained model of this config (default cpu_quick)")
    p.add_argument("--members", type=int, default=1, help="ensemble members (copies of the model: a fold ensemble's work)")
    p.add_argument("--tta", help="default: the config's infer.tta")
    p.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the config's infer.window")
    p.add_argument("--overlap", type=float, help="default: the config's infer.overlap")
    p.add_argument("--batch-size", type=int, help="default: the config's infer.batch_size")
    p.add_argument("--shape", type=int, nargs=3, default=[184, 630, 630])
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx", "onnx_fp16", "tensorrt"])
    p.add_argument("--engine-cache", default="build/engines")
    p.add_argument("--peer", action="store_true", help="also run the MONAI peer (pip install monai)")
    p.add_argument("--peer-window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the kit's window")
    p.add_argument("--peer-overlap", type=float, help="default: the kit's overlap")
    p.add_argument("--no-reference", action="store_true", help="skip the slow scipy maximum_filter comparison")
    return p.parse_args()


def overrides_of(args) -> list[str]:
    out = []
    if args.window:
        out.append(f"infer.window={list(args.window)}")
    if args.overlap is not None:
        out.append(f"infer.overlap={args.overlap}")
    if args.batch_size:
        out.append(f"infer.batch_size={args.batch_size}")
    return out


def predictor_of(args, device) -> tuple[Predictor, str]:
    if args.weights:
        ckpt = load_checkpoint(find_checkpoints(args.weights)[0])
        ckpts = [ckpt] * args.members
        cfg = inference_config(ckpts, overrides_of(args), tta=args.tta, engine=args.engine)
        return load_predictor(ckpts, cfg, device, args.engine, args.engine_cache), ckpt["path"]
    cfg = load_config(args.config, overrides_of(args) + ([f"infer.tta={args.tta}"] if args.tta else []))
    model = build_model(cfg["model"]["name"], **cfg["model"]["args"])
    meta = {"path": f"untrained/{args.config}", "normalization": cfg["normalize"], "stride": model.output_stride,
            "voxel_spacing": VOXEL_SPACING}
    engine = TorchEngine(ProbabilityModel(model, "softmax"), infer_window(cfg), device=device)
    return Predictor(cfg, {"unet": [Member(engine, 1.0, "untrained", meta)] * args.members}), meta["path"]


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    predictor, source = predictor_of(args, device)
    cfg = predictor.cfg
    members = predictor.members["unet"]
    engine = members[0].runner
    tta = parse_tta(cfg["infer"]["tta"])
    passes = len(members) * len(tta)
    shape = tuple(args.shape)
    work = window_work(shape, engine.window, engine.stride, cfg["infer"]["overlap"])
    print(f"{source}: engine {args.engine} on {device}, {len(members)} member(s) x TTA {cfg['infer']['tta']} "
          f"({passes} passes), window {engine.window}, overlap {cfg['infer']['overlap']}, batch "
          f"{cfg['infer']['batch_size']}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    vols, _ = generate_run("TS_bench", 0, SynthConfig(shape=shape))
    tomogram = Tomogram("TS_bench", "test", "denoised", 0, vols["denoised"], VOXEL_SPACING)

    batch = torch.randn(cfg["infer"]["batch_size"], 1, *engine.window, device=engine.device)
    engine(batch)
    _, t = timed(lambda: [engine(batch) for _ in range(3)])
    rate = 3 * batch.numel() / t
    limit = single_pass_limit(shape, rate)
    print(f"forward: {rate / 1e6:.2f} Mvoxel/s at this window; single-pass limit {limit:.1f} s per "
          f"{'x'.join(map(str, shape))} tomogram; the window tiling pushes {work:.2f}x its voxels per pass")

    predictor.timings.clear()
    floor = 0.05
    sources, t_raw = timed(predictor.raw_candidates, tomogram, floor)
    cands, t_post = timed(finalize, sources, cfg)
    total = t_raw + t_post
    stages = {**predictor.timings, "post-processing": t_post}
    peaks_share = (stages.get("peaks", 0.0) + t_post) / total
    print(f"pipeline: {total:.1f} s = {total / passes:.1f} s per pass = {total / passes / limit:.2f}x the single-pass "
          f"limit ({', '.join(f'{k} {v:.2f} s' for k, v in stages.items())}); peaks + post-processing "
          f"{100 * peaks_share:.1f}% of the total; {len(cands)} candidates >= {floor}")

    if args.peer:
        if args.engine != "torch":
            raise SystemExit("--peer compares torch models: use --engine torch")
        peer_window = tuple(args.peer_window or engine.window)
        peer_overlap = cfg["infer"]["overlap"] if args.peer_overlap is None else args.peer_overlap
        models = [m.runner.model for m in members]
        volume = predictor_volume(tomogram, members[0].ckpt)
        prob, t_peer_windows = timed(peer_probabilities, models, volume, peer_window, peer_overlap,
                                     cfg["infer"]["batch_size"], tta)
        _, t_peer_peaks = timed(peer_peaks, prob, floor, engine.stride, cfg["peaks"]["kernel_frac"])
        t_peer = t_peer_windows + t_peer_peaks
        print(f"peer (MONAI sliding_window_inference, gaussian, window {peer_window}, "
              f"overlap {peer_overlap}, per member and pass; "
              f"max_pool3d peaks): {t_peer:.1f} s -> kit {t_peer / total:.2f}x faster")
        if peer_window == tuple(engine.window) and peer_overlap == cfg["infer"]["overlap"]:
            kit = predict_volume([m.runner for m in members], volume, tta=tta, overlap=cfg["infer"]["overlap"],
                                 batch_size=cfg["infer"]["batch_size"], blend=cfg["infer"]["blend"])
            print(f"  max abs difference of the probability volumes at equal windows: "
                  f"{float((kit.cpu() - prob.cpu()).abs().max()):.2e}")

    if not args.no_reference:
        prob = predict_volume(engine, predictor_volume(tomogram, members[0].ckpt), overlap=cfg["infer"]["overlap"],
                              batch_size=cfg["infer"]["batch_size"], blend=cfg["infer"]["blend"])
        array = to_numpy(prob.cpu())
        thresholds = dict.fromkeys(CLASS_NAMES, 0.1)
        ours, t_ours = timed(find_peaks, array, list(CLASS_NAMES), thresholds, cfg["peaks"]["kernel_frac"],
                             engine.stride)
        ref, t_ref = timed(reference_peaks, array, list(CLASS_NAMES), thresholds, cfg["peaks"]["kernel_frac"],
                           engine.stride)
        same = len(ours) == len(ref) and np.allclose(ours[["x", "y", "z"]].to_numpy(), ref[["x", "y", "z"]].to_numpy())
        print(f"peak finding (threshold 0.1): ours {t_ours:.2f} s vs scipy maximum_filter {t_ref:.2f} s -> "
              f"{t_ref / max(t_ours, 1e-9):.1f}x faster; same peaks: {same} ({len(ours)})")
    print(f"peak memory: RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
          + (f", CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if torch.cuda.is_available() else ""))


def predictor_volume(tomogram: Tomogram, meta: dict) -> np.ndarray:
    from czii_kit.data.normalize import normalize_from_config

    return normalize_from_config(tomogram.volume, meta["normalization"])


if __name__ == "__main__":
    main()
