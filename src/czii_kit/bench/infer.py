"""Inference speed: forward throughput, the single-pass limit, the full per-tomogram path (the one prediction runs)
with its stages, peak finding against a plain maximum filter, memory; optionally the MONAI peer.

"limit" is the tomogram's voxels divided by the measured forward voxels per second at the chosen window: what
one pass would cost if the network saw every voxel exactly once; the path's ratio to it (per pass) is what
windowing, blending, TTA bookkeeping and peak finding add. The tomogram is a synthetic run generated on the fly.
"""
from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from czii_kit.checkpoints import load_checkpoint, untrained_checkpoint
from czii_kit.config import load_config
from czii_kit.data.io import Tomogram
from czii_kit.data.normalize import normalize_from_config
from czii_kit.data.synth import SynthConfig, generate_run
from czii_kit.infer.engines import resolve_device
from czii_kit.infer.export import EngineFiles
from czii_kit.infer.kinds import VolumeKind
from czii_kit.infer.plan import PredictionPlan
from czii_kit.infer.predictor import Predictor, finalize
from czii_kit.infer.sliding_window import predict_volume, window_work
from czii_kit.infer.tta import parse_tta
from czii_kit.models import build_model
from czii_kit.particles import VOXEL_SPACING
from czii_kit.post.peaks import find_peaks, reference_peaks
from czii_kit.utils.backend import to_numpy
from czii_kit.utils.checkpoint_files import find_checkpoints


@dataclass
class InferBench:
    """What to measure: a checkpoint (``weights``) or an untrained model of ``config``, and how to run it."""

    weights: str | None = None
    config: str = "cpu_quick"
    members: int = 1
    tta: str | None = None
    window: Sequence[int] | None = None
    overlap: float | None = None
    batch_size: int | None = None
    shape: Sequence[int] = (184, 630, 630)
    device: str = "auto"
    engine: str = "torch"
    engine_cache: str = "build/engines"
    peer: bool = False
    peer_window: Sequence[int] | None = None
    peer_overlap: float | None = None
    reference: bool = True

    def overrides(self) -> list[str]:
        out = [f"infer.window={list(self.window)}"] if self.window else []
        out += [f"infer.overlap={self.overlap}"] if self.overlap is not None else []
        return out + ([f"infer.batch_size={self.batch_size}"] if self.batch_size else [])


def timed(fn: Callable, *args, **kwargs):
    """(result, wall seconds), waiting for the GPU so that its work is counted."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def single_pass_limit(shape: Sequence[int], voxels_per_second: float) -> float:
    """Seconds one pass over the tomogram would take if the network saw every voxel exactly once."""
    return math.prod(shape) / voxels_per_second


def predictor_of(bench: InferBench, device: torch.device) -> tuple[Predictor, str]:
    """The predictor to measure (``members`` copies of one model: a fold ensemble's work) and what it is."""
    if bench.weights:
        ckpt = load_checkpoint(find_checkpoints(bench.weights)[0])
        plan = PredictionPlan.from_checkpoints([ckpt] * bench.members, overrides=bench.overrides(), tta=bench.tta,
                                               engine=bench.engine, files=EngineFiles(bench.engine_cache))
        return plan.load(device, bench.engine), ckpt["path"]
    cfg = load_config(bench.config, bench.overrides() + ([f"infer.tta={bench.tta}"] if bench.tta else []))
    model = build_model(cfg["model"]["name"], num_classes=len(cfg["classes"]) + 1, **cfg["model"]["args"])
    ckpt = untrained_checkpoint(cfg, model)
    predictor = PredictionPlan.for_training(ckpt).with_model(model, device)
    predictor.members[VolumeKind.name] *= bench.members
    return predictor, ckpt["path"]


def run(bench: InferBench, report: Callable[[str], None] = print) -> dict:
    """Measure and print; returns the numbers (seconds, ratios, peaks) for tests and scripts."""
    device = resolve_device(bench.device)
    predictor, source = predictor_of(bench, device)
    cfg = predictor.cfg
    members = predictor.members[VolumeKind.name]
    engine = members[0].runner
    tta = parse_tta(cfg["infer"]["tta"])
    passes = len(members) * len(tta)
    shape = tuple(bench.shape)
    work = window_work(shape, engine.window, engine.stride, cfg["infer"]["overlap"])
    report(f"{source}: engine {bench.engine} on {device}, {len(members)} member(s) x TTA {cfg['infer']['tta']} "
           f"({passes} passes), window {engine.window}, overlap {cfg['infer']['overlap']}, batch "
           f"{cfg['infer']['batch_size']}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    vols, _ = generate_run("TS_bench", 0, SynthConfig(shape=shape))
    tomogram = Tomogram("TS_bench", "test", "denoised", 0, vols["denoised"], VOXEL_SPACING)

    batch = torch.randn(cfg["infer"]["batch_size"], 1, *engine.window, device=engine.device)
    engine(batch)
    _, t = timed(lambda: [engine(batch) for _ in range(3)])
    rate = 3 * batch.numel() / t
    limit = single_pass_limit(shape, rate)
    report(f"forward: {rate / 1e6:.2f} Mvoxel/s at this window; single-pass limit {limit:.1f} s per "
           f"{'x'.join(map(str, shape))} tomogram; the window tiling pushes {work:.2f}x its voxels per pass")

    predictor.timings.clear()
    floor = 0.05
    sources, t_raw = timed(predictor.raw_candidates, tomogram, floor)
    cands, t_post = timed(finalize, sources, cfg)
    total = t_raw + t_post
    stages = {**predictor.timings, "post-processing": t_post}
    peaks_share = (stages.get("peaks", 0.0) + t_post) / total
    report(f"pipeline: {total:.1f} s = {total / passes:.1f} s per pass = {total / passes / limit:.2f}x the "
           f"single-pass limit ({', '.join(f'{k} {v:.2f} s' for k, v in stages.items())}); peaks + "
           f"post-processing {100 * peaks_share:.1f}% of the total; {len(cands)} candidates >= {floor}")
    numbers = {"seconds": total, "limit": limit, "work": work, "candidates": len(cands)}
    volume = normalize_from_config(tomogram.volume, members[0].ckpt["normalization"])

    if bench.peer:
        from czii_kit.bench.peer import peer_peaks, peer_probabilities

        if bench.engine != "torch":
            raise SystemExit("--peer compares torch models: use --engine torch")
        peer_window = tuple(bench.peer_window or engine.window)
        peer_overlap = cfg["infer"]["overlap"] if bench.peer_overlap is None else bench.peer_overlap
        models = [m.runner.model for m in members]
        prob, t_peer_windows = timed(peer_probabilities, models, volume, peer_window, peer_overlap,
                                     cfg["infer"]["batch_size"], tta)
        _, t_peer_peaks = timed(peer_peaks, prob, floor, engine.stride, cfg["peaks"]["kernel_frac"])
        t_peer = t_peer_windows + t_peer_peaks
        report(f"peer (MONAI sliding_window_inference, gaussian, window {peer_window}, overlap {peer_overlap}, per "
               f"member and pass; max_pool3d peaks): {t_peer:.1f} s -> kit {t_peer / total:.2f}x faster")
        if peer_window == tuple(engine.window) and peer_overlap == cfg["infer"]["overlap"]:
            kit = predict_volume([m.runner for m in members], volume, tta=tta, overlap=cfg["infer"]["overlap"],
                                 batch_size=cfg["infer"]["batch_size"], blend=cfg["infer"]["blend"])
            report(f"  max abs difference of the probability volumes at equal windows: "
                   f"{float((kit.cpu() - prob.cpu()).abs().max()):.2e}")
        numbers["peer_seconds"] = t_peer

    if bench.reference:
        prob = predict_volume(engine, volume, overlap=cfg["infer"]["overlap"], batch_size=cfg["infer"]["batch_size"],
                              blend=cfg["infer"]["blend"])
        array = to_numpy(prob.cpu())
        names = list(cfg["classes"])
        thresholds = dict.fromkeys(names, 0.1)
        ours, t_ours = timed(find_peaks, array, names, thresholds, cfg["peaks"]["kernel_frac"], engine.stride)
        ref, t_ref = timed(reference_peaks, array, names, thresholds, cfg["peaks"]["kernel_frac"], engine.stride)
        same = len(ours) == len(ref) and np.allclose(ours[["x", "y", "z"]].to_numpy(), ref[["x", "y", "z"]].to_numpy())
        report(f"peak finding (threshold 0.1): ours {t_ours:.2f} s vs scipy maximum_filter {t_ref:.2f} s -> "
               f"{t_ref / max(t_ours, 1e-9):.1f}x faster; same peaks: {same} ({len(ours)})")
        numbers["same_peaks"] = same
    report(f"peak memory: RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
           + (f", CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if torch.cuda.is_available() else ""))
    return numbers
