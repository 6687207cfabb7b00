"""czii bench infer | train | windows | synth [options]    (= python tools/bench_<name>.py [options])

    czii bench infer --weights weights/cpu_quick                       # 1 member, the config's TTA
    czii bench infer --weights weights/cpu_quick --members 4 --tta flips --shape 128 320 320
    czii bench infer --weights weights/cpu_quick --peer --peer-window 64 128 128 --peer-overlap 0.25
    czii bench train --config cpu_quick --steps 12
    czii bench windows --weights weights/cpu_quick --data data/eval_default --windows 64x128x128 96x160x160
    czii bench synth --shapes 184 630 630 --repeat 3
    czii bench scale --weights weights/pretrained/cpu_quick --data data/eval_default --work reports/bench_scale

Each prints numbers; the logic is ``czii_kit.bench``.
"""
from __future__ import annotations

import argparse
import sys

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error, resolve_data
from czii_kit.errors import ConfigError


def _infer(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="experiment directory or checkpoint (its first checkpoint is used)")
    src.add_argument("--config", default="cpu_quick", help="untrained model of this config (default cpu_quick)")
    p.add_argument("--members", type=int, default=1, help="ensemble members (copies of the model: a fold "
                                                           "ensemble's work)")
    p.add_argument("--tta", help="default: the config's infer.tta")
    p.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the config's infer.window")
    p.add_argument("--overlap", type=float, help="default: the config's infer.overlap")
    p.add_argument("--batch-size", type=int, help="default: the config's infer.batch_size")
    p.add_argument("--shape", type=int, nargs=3, default=[184, 630, 630], metavar=("Z", "Y", "X"))
    shared.add_device(p, default="auto")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx", "onnx_fp16", "tensorrt"])
    p.add_argument("--engine-cache", default="build/engines")
    p.add_argument("--peer", action="store_true", help="also run the MONAI peer (pip install monai)")
    p.add_argument("--peer-window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the kit's window")
    p.add_argument("--peer-overlap", type=float, help="default: the kit's overlap")
    p.add_argument("--no-reference", action="store_true", help="skip the slow scipy maximum_filter comparison")


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", nargs="+", default=["cpu_quick", "unet_r34"])
    p.add_argument("--steps", type=int, default=10)
    shared.add_data(p)
    shared.add_overrides(p)


def _windows(p: argparse.ArgumentParser) -> None:
    shared.add_weights(p)
    shared.add_data(p)
    p.add_argument("--split", default="test", help="a split with a solution (default %(default)s)")
    p.add_argument("--windows", nargs="+", default=["64x128x128", "96x160x160", "96x224x224"])
    p.add_argument("--overlaps", nargs="+", type=float, default=[0.25, 0.125, 0.0])
    shared.add_device(p, default="cpu")


def _synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", type=int, nargs="+", default=[96, 256, 256, 184, 630, 630],
                   help="one or more Z Y X triples (default: the built-in size and the real size)")
    p.add_argument("--repeat", type=int, default=1, help="runs per size; the fastest counts")
    p.add_argument("--preset", default="default")
    p.add_argument("--no-builtin", action="store_true", help="skip timing the built-in dataset")


def _scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="weights/pretrained/cpu_quick",
                   help="model predicted with (default %(default)s)")
    p.add_argument("--data", default="data/eval_default", help="full-size runs (its test split) for the overhead "
                   "(default %(default)s, made by czii pretrain)")
    p.add_argument("--work", default="reports/bench_scale", help="work folder: data, submissions, logs")
    p.add_argument("--runs", type=int, default=200, help="small runs of the copick project killed and resumed")
    p.add_argument("--repeats", type=int, default=3, help="timings of each overhead arm, alternating (default 3)")
    parts = ["overhead", "joined", "resume", "study"]
    p.add_argument("--only", nargs="+", choices=parts, default=parts, help="which measurements (default: all)")


BENCHES = {"infer": (_infer, "inference speed: forward, the per-tomogram path, peaks, memory (optionally MONAI)"),
           "train": (_train, "training throughput: patches/s, data share of a step, memory"),
           "windows": (_windows, "F4 and seconds per tomogram over sliding-window sizes x overlaps"),
           "synth": (_synth, "simulator speed: seconds per run and per built-in dataset"),
           "scale": (_scale, "Ray: prediction overhead (Ray started, or joined), a killed job resumed, a study "
                      "equal to the sequential one")}


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Benchmarks: each prints numbers (see docs/results.md for what they measured)")
    sub = p.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(BENCHES) + "}")
    for name, (add, what) in BENCHES.items():
        add(sub.add_parser(name, help=what, description=what))
    return p.parse_args(argv)


def parse_window(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--windows {text!r}: write a window as ZxYxX, e.g. 64x128x128")
    return tuple(int(p) for p in parts)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.bench == "infer":
        from czii_kit.bench.infer import InferBench, run

        run(InferBench(args.weights, args.config, args.members, args.tta, args.window, args.overlap, args.batch_size,
                       args.shape, args.device, args.engine, args.engine_cache, args.peer, args.peer_window,
                       args.peer_overlap, not args.no_reference))
    elif args.bench == "train":
        import torch

        from czii_kit.bench.train import bench, line

        data = resolve_data(args.data)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for name in args.config:
            steps = args.steps if name == "cpu_quick" or torch.cuda.is_available() else min(args.steps, 3)
            print(line(bench(name, data, steps, args.overrides)), flush=True)
    elif args.bench == "windows":
        from czii_kit.bench.windows import sweep

        windows = [parse_window(w) for w in args.windows]
        sweep(args.weights, resolve_data(args.data), args.split, windows, args.overlaps, args.device)
    elif args.bench == "scale":
        from pathlib import Path

        from czii_kit.bench import scale
        from czii_kit.scale.session import require_ray

        require_ray()
        weights, data, work = Path(args.weights), Path(args.data), Path(args.work)
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
        if {"overhead", "joined"} & set(args.only) and not (data / "test").is_dir():
            raise ConfigError(f"--data {data}: no test split; make it with czii pretrain (data/eval_default) or "
                              "czii make-synthetic --train 0 --test 3 --shape 184 630 630")
        work.mkdir(parents=True, exist_ok=True)
        if "overhead" in args.only:
            scale.overhead(weights, data, work, args.repeats)
        if "joined" in args.only:
            scale.joined(weights, data, work, args.repeats)
        if "resume" in args.only:
            scale.resume(weights, work, args.runs)
        if "study" in args.only:
            scale.study(work)
    else:
        from czii_kit.bench.synth import bench_builtin, bench_run, peak_rss_gb

        if len(args.shapes) % 3:
            raise ConfigError("--shapes takes Z Y X triples")
        for i in range(0, len(args.shapes), 3):
            bench_run(args.shapes[i:i + 3], args.repeat, args.preset)
        if not args.no_builtin:
            bench_builtin()
        print(f"peak RSS {peak_rss_gb():.2f} GB")
    return 0


def tool(name: str):
    """``main`` of ``tools/bench_<name>.py``: ``czii bench <name>`` with the tool's own arguments."""
    def tool_main(argv=None) -> int:
        return main([name, *(sys.argv[1:] if argv is None else argv)])
    return tool_main
