"""Arguments every tool shares, defined once, so that one flag means one thing everywhere.

``--data`` is a competition directory or a copick config JSON (default: the built-in synthetic dataset),
``--weights`` experiment folders or checkpoint files, ``--device`` auto | cpu | cuda | cuda:N, ``--engine``
one of the inference engines, ``--set KEY=VALUE`` a config override, ``--folds`` fold numbers (``0 2``
or ``0,2``), ``--no-progress`` plain output for logs.
"""
from __future__ import annotations

import argparse
import re

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_PROG: list[str | None] = []  # set by the `czii` dispatcher: "czii predict" instead of "predict.py" in usage


def parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A tool's parser; its usage line names the command the user typed (``czii NAME`` or ``tools/NAME.py``)."""
    return argparse.ArgumentParser(prog=_PROG[-1] if _PROG else None, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def device(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N."""
    value = text.strip().lower()
    if not DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return value


def run_list(runs: str | None) -> list[str] | None:
    """--runs a,b -> [a, b]; None (or only commas): every run of the split."""
    names = [r.strip() for r in (runs or "").split(",") if r.strip()]
    return names or None


def folds(values: list[str] | str | None) -> list[int] | None:
    """Fold numbers from ``--folds 0 2``, ``--folds 0,2`` or both mixed; None when not given."""
    if values is None:
        return None
    items = [part for value in ([values] if isinstance(values, str) else values) for part in value.split(",") if part]
    try:
        return [int(part) for part in items]
    except ValueError:
        from czii_kit.errors import ConfigError

        raise ConfigError(f"--folds {' '.join(items)}: give fold numbers, e.g. --folds 0 2 or --folds 0,2") from None


def member_weights(text: str | None) -> list[float] | None:
    """``--member-weights 1,1,2``: one averaging weight per checkpoint; None when not given."""
    try:
        return [float(w) for w in text.split(",")] if text else None
    except ValueError:
        from czii_kit.errors import ConfigError

        raise ConfigError(f"--member-weights {text!r}: give comma-separated numbers, e.g. 1,1,2") from None


def add_data(p: argparse.ArgumentParser, required: bool = False, flag: str = "--data",
             what: str = "competition directory or copick config JSON") -> None:
    default = "" if required else " (default: the built-in synthetic dataset)"
    p.add_argument(flag, required=required, help=f"{what}{default}")


def add_weights(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--weights", nargs="+", required=required, help="experiment directories or fold*.pt files")


def add_folds(p: argparse.ArgumentParser, what: str = "only these folds of each experiment (default: all)") -> None:
    p.add_argument("--folds", nargs="+", metavar="K", help=f"{what}; e.g. --folds 0 2 or --folds 0,2")


def add_device(p: argparse.ArgumentParser, default: str | None = None, what: str = "") -> None:
    shown = f"default: {default}" if default else "default: the config's"
    p.add_argument("--device", type=device, default=default,
                   help=f"auto | cpu | cuda | cuda:N ({shown}){what}")


def add_engine(p: argparse.ArgumentParser) -> None:
    from czii_kit.config import ENGINE_KINDS

    p.add_argument("--engine", choices=list(ENGINE_KINDS),
                   help="default: the checkpoint config's infer.engine; onnx_fp16 runs the fp16 graph TensorRT "
                        "builds from, so a CPU shows what fp16 does to the submission")


def add_overrides(p: argparse.ArgumentParser, example: str = "train.epochs=5") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. --set {example} (repeatable)")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (a terminal gets bars, a log file a few plain lines, unless this is set)")


def add_ray(p: argparse.ArgumentParser, per: str, cpus: float) -> None:
    """--ray ADDRESS and the resources each Ray trial (or worker) declares: ``--cpus-per-PER``, ``--gpus-per-PER``."""
    group = p.add_argument_group('Ray (optional extra: pip install -e ".[ray]"; docs/scale.md)')
    group.add_argument("--ray", metavar="ADDRESS",
                       help="local: start Ray on this machine; auto, HOST:6379 or ray://HOST:10001: join that cluster")
    group.add_argument(f"--cpus-per-{per}", type=float, default=cpus, metavar="N",
                       help=f"CPUs each Ray {per} reserves (its torch threads; default {cpus:g})")
    group.add_argument(f"--gpus-per-{per}", type=float, metavar="N",
                       help=f"GPUs each Ray {per} reserves (default: 1 when the cluster has GPUs and the device is not "
                            "cpu, else 0; 0.5 lets two share one)")


def ray_only(args: argparse.Namespace, *flags: str) -> None:
    """Refuse Ray's flags without --ray (a flag that silently does nothing is a bug report waiting)."""
    given = [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_")) not in (None, False)]
    if given and not args.ray:
        from czii_kit.errors import ConfigError

        raise ConfigError(f"{', '.join(given)} {'works' if len(given) == 1 else 'work'} only with --ray (e.g. "
                          "--ray local)")
