"""czii gpu-check [--weights weights/EXP] [--config cpu_quick] [--runs 2] [--shape 184 630 630]

Every CUDA path the Kaggle notebook can take, checked on this machine, in one table: torch fp16 against fp32,
the fp16 TensorRT engine against torch fp32, CuPy peaks against NumPy peaks, predict on every engine (seconds
per tomogram, peak GPU memory) and the time budget's projection. Without a GPU it runs the CPU-side checks and
says what it did not check. Exit status 1 when a check fails. Same as ``python tools/gpu_check.py``; the
logic is ``czii_kit.selfcheck``.
"""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Check every GPU path (TensorRT, CuPy, fp16, predict per engine) and print one table")
    p.add_argument("--weights", help="a checkpoint or experiment (default: an untrained --config model)")
    p.add_argument("--config", default="cpu_quick", help="model of the untrained checkpoint (default cpu_quick)")
    p.add_argument("--runs", type=int, default=2, help="full-size synthetic runs to predict (default 2)")
    p.add_argument("--shape", type=int, nargs=3, default=[184, 630, 630], metavar=("Z", "Y", "X"))
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit import selfcheck

    args = parse_args(argv)
    print(selfcheck.header())
    checks = selfcheck.run(args.weights, args.runs, args.shape, args.config)
    print(selfcheck.table(checks))
    return 1 if any(not c.ok for c in checks) else 0
