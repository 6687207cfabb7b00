"""czii pretrain [--out weights/pretrained/cpu_quick] [--data-dir data/pretrain] [--runs 20] [--epochs 60] ...

Pretrain a config on the kit's simulator: a varied simulated set (made once into --data-dir: several imaging
settings, all four reconstructions), trained with held-out runs of every setting, scored on the held-out
simulator sets of docs/results.md (made once under --eval-root), written to --out with CARD.md. Fine-tune from it
with ``czii train --fold -1 --data YOURS --init-from OUT``. The logic is ``czii_kit.pretrain``.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    from czii_kit.pretrain import PretrainSpec

    spec = PretrainSpec()
    p = shared.parser("Pretrain a starting model on the kit's simulator (data, training, scores, CARD.md)")
    p.add_argument("--out", default=f"weights/pretrained/{spec.config}", help="model folder (default %(default)s)")
    p.add_argument("--data-dir", default="data/pretrain", help="the simulated pretraining set, made once "
                                                               "(default %(default)s)")
    p.add_argument("--eval-root", default="data", help="where the held-out sets eval_default/eval_hard are made once")
    p.add_argument("--config", default=spec.config)
    p.add_argument("--runs", type=int, default=spec.runs, help="simulated train runs (default %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, default=list(spec.shape), metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=spec.seed)
    p.add_argument("--epochs", type=int, default=spec.epochs)
    p.add_argument("--samples-per-epoch", type=int, default=spec.samples_per_epoch)
    shared.add_overrides(p, "train.lr=0.002")
    shared.add_progress(p)
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.pretrain import PretrainSpec, pretrain

    args = parse_args(argv)
    spec = PretrainSpec(config=args.config, runs=args.runs, shape=tuple(args.shape), seed=args.seed,
                        epochs=args.epochs, samples_per_epoch=args.samples_per_epoch, overrides=args.overrides)
    command = shlex.join(["czii", "pretrain", *(sys.argv[1:] if argv is None else argv)])
    pretrain(args.out, args.data_dir, spec, args.eval_root, command, progress=not args.no_progress)
    return 0
