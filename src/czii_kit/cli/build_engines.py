"""czii build-engines --weights PACK_OR_WEIGHTS ... --out DIR   (on the GPU the engines will run on)

Same as ``python tools/build_engines.py``."""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Build the TensorRT engine of every checkpoint on this GPU, before the timed run: the "
                      "inference notebook uses engines whose key matches")
    shared.add_weights(p)
    p.add_argument("--out", required=True, help="folder for the engines (+ engines.json), e.g. a Kaggle dataset")
    shared.add_device(p, default="cuda:0", what="; engines run on that GPU model only")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="inference keys the engines are built for, e.g. --set infer.batch_size=4 (window, batch "
                        "and precision are part of each engine's key: build with what predict will run)")
    p.add_argument("--engine-cache", default="build/engines", help="where ONNX exports go on the way")
    p.add_argument("--no-check", action="store_true", help="skip the parity check of each engine against torch fp32")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from czii_kit.infer.prebuild import build_engines

    records = build_engines(args.weights, args.out, args.device, args.overrides, args.engine_cache,
                            check=not args.no_check)
    print(f"{len(records)} engine(s) in {args.out}; attach that folder as a dataset and pass it to predict "
          "(--engines DIR) or the notebook (CZII_ENGINES_DIR)")
    return 0
