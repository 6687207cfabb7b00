"""``czii``: every tool of the kit as one command, subcommands in workflow order.

    czii make-synthetic --out data/synth          czii train --fold 0          czii predict --weights weights/EXP
    czii COMMAND --help                           (tools/*.py run the same code: python tools/train_fold.py ...)

Each subcommand is one module of ``czii_kit.cli`` with ``main(argv)``; nothing is imported before it is asked for,
so ``czii --help`` is instant and a tool's import errors stay its own.
"""
from __future__ import annotations

import importlib
import sys

from czii_kit.cli import args as shared_args

# name -> (module, what it does), in workflow order: data, training, evaluation, prediction, delivery, studies
COMMANDS: dict[str, tuple[str, str]] = {
    "make-synthetic": ("make_synthetic", "write a synthetic dataset in the exact competition layout"),
    "make-copick-project": ("make_copick_project", "a copick project over a competition directory"),
    "train": ("train_fold", "train one fold (leave-one-tomogram-out; --fold -1: every run; --init-from)"),
    "evaluate": ("evaluate", "cross-validation report and thresholds.json from the fold models"),
    "predict": ("predict", "predict a split: submission.csv (+ copick picks, STAR files)"),
    "score": ("score", "score a submission with the exact Kaggle metric"),
    "export": ("export", "ONNX / TensorRT export with a parity check"),
    "pack": ("pack_kaggle_dataset", "pack checkpoints and wheels as a Kaggle dataset"),
    "build-engines": ("build_engines", "build TensorRT engines on the GPU they will run on"),
    "gpu-check": ("gpu_check", "check every GPU path (TensorRT, CuPy, fp16) and print one table"),
    "study": ("study", "recipe study: arms x seeds, scored on a held-out test set"),
    "threshold-rules": ("threshold_rules", "compare threshold-picking rules on a study's models"),
    "pretrain": ("pretrain", "pretrain a starting model on the simulator (weights/pretrained/cpu_quick)"),
    "make-yolo-dataset": ("make_yolo_dataset", "z-slice PNGs and labels for the YOLO branch"),
    "baseline": ("baseline", "difference-of-Gaussians baseline on a fold's held-out run"),
    "bench": ("bench", "benchmarks: infer | train | windows | synth | scale"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: czii COMMAND [options]   (czii COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def run(name: str, argv: list[str] | None, prog: str | None = None) -> int:
    """Run one tool's ``main`` (its usage line naming ``prog``; default: the script, as argparse does)."""
    module = importlib.import_module(f"czii_kit.cli.{COMMANDS[name][0]}")
    shared_args._PROG.append(prog)
    try:
        return module.main(argv)
    finally:
        shared_args._PROG.pop()


def tool(name: str):
    """``main`` of the ``tools/*.py`` shim of command ``name``: ``python tools/predict.py ...`` is ``czii predict``."""
    def tool_main(argv: list[str] | None = None) -> int:
        return run(name, argv)
    return tool_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from czii_kit import __version__

        print(f"czii-kit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"czii: unknown command {name!r}" + (f"; did you mean {close[0]!r}?" if close else "") + "\n\n"
              + usage(), file=sys.stderr)
        return 2
    return run(name, rest, f"czii {name}")


if __name__ == "__main__":
    sys.exit(main())
