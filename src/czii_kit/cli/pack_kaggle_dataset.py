"""czii pack --weights weights/EXP [...] --out build/kaggle/SLUG --slug SLUG [...]   (= tools/pack_kaggle_dataset.py)

Packs checkpoints, configs and wheels into a folder ready for `kaggle datasets create -p OUT --dir-mode zip`,
for the offline notebook kaggle_notebooks/czii_inference.ipynb. Never reads Kaggle credentials.
"""
from __future__ import annotations

import argparse
import shlex

import czii_kit
from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error
from czii_kit.kaggle.pack import PLACEHOLDER_USER, PackResult, default_user, kaggle_cli_advice, pack_dataset
from czii_kit.kaggle.wheels import (KAGGLE_CUDA, KAGGLE_PLATFORMS, KAGGLE_PYTHON, TENSORRT_VERSION, KaggleTarget,
                                    gpu_wheel_commands, installed_version, missing_from_wheelhouse, missing_gpu_extras,
                                    wheelhouse_commands)


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Pack checkpoints + the czii-kit wheel into a Kaggle dataset folder")
    shared.add_weights(p)
    p.add_argument("--out", required=True, help="pack folder to write, e.g. build/kaggle/czii-kit-weights")
    p.add_argument("--slug", required=True, help="Kaggle dataset slug: 6-50 lowercase letters, digits, hyphens")
    p.add_argument("--user", help=f"Kaggle username (default: $KAGGLE_USERNAME, else {PLACEHOLDER_USER!r})")
    p.add_argument("--title", help="dataset title, 6-50 characters (default: the slug)")
    shared.add_folds(p, "only these folds of each experiment (default: all)")
    p.add_argument("--wheels", help="folder of dependency wheels Kaggle lacks (the tool prints how to make it)")
    p.add_argument("--onnx", action="store_true", help="also pack each checkpoint's ONNX export (tools/export.py)")
    p.add_argument("--thresholds-from", metavar="REPORT",
                   help="pack thresholds.json from tools/evaluate.py (cross-validated thresholds and source weights); "
                        "the notebook predicts with them")
    p.add_argument("--default-thresholds", action="store_true",
                   help="pack full-data checkpoints that carry only the config's default thresholds (refused "
                        "otherwise: pass --thresholds-from)")
    p.add_argument("--default-fusion", action="store_true",
                   help="pack several kinds of checkpoints (U-Net + YOLO) without tuned source weights: the notebook "
                        "fuses them with the config's fusion.weights (refused otherwise: pass --thresholds-from)")
    p.add_argument("--force", action="store_true", help="replace a different pack already at --out")
    p.add_argument("--kaggle-python", default=KAGGLE_PYTHON,
                   help=f"Python MAJOR.MINOR of the Kaggle image the wheels are for (default {KAGGLE_PYTHON}; check "
                        "with `!python --version` in a Kaggle notebook)")
    p.add_argument("--kaggle-cuda", default=KAGGLE_CUDA,
                   help=f"CUDA MAJOR.MINOR of the Kaggle image's torch (default {KAGGLE_CUDA}; check with "
                        "`torch.version.cuda`): picks the tensorrt-cuXX / cupy-cudaXXx wheels")
    p.add_argument("--kaggle-platform", action="append", metavar="TAG",
                   help=f"platform tag the wheels may have, repeatable (default: {' '.join(KAGGLE_PLATFORMS)})")
    p.add_argument("--tensorrt-version", default=TENSORRT_VERSION,
                   help=f"TensorRT release of the printed GPU wheel commands (default {TENSORRT_VERSION}; it must "
                        "support the T4, compute capability 7.5, and the image's CUDA)")
    shared.add_progress(p)
    return p.parse_args(argv)


def print_summary(result: PackResult) -> None:
    files = result.manifest["files"]
    megabytes = sum(f["size"] for f in files) / 1e6
    verb = "replaced the older pack at" if result.replaced else "packed"
    print(f"{verb} {result.out}: {len(files)} files, {megabytes:.1f} MB")
    for c in result.manifest["checkpoints"]:
        score = "n/a" if c["score"] is None else f"{c['score']:.4f}"
        print(f"  {c['path']}: fold {c['fold']}, {c['model']}, validation F4 {score}"
              + (f", ONNX {', '.join(c['onnx'])}" if c["onnx"] else ""))
    print(f"  wheels: {', '.join(p.name for p in result.wheels)}")
    print(f"  for the Kaggle image: {result.target.options()} (recorded in manifest.json; the notebook's "
          "preflight.py checks them before installing)")


def print_wheelhouse_advice(result: PackResult) -> None:
    missing = missing_from_wheelhouse(result.wheels, result.extra)
    if missing:
        print(f"WARNING: Kaggle's image lacks {', '.join(missing)}, and no packed wheel provides them: the notebook "
              "will stop before installing (preflight.py names them). Make a wheelhouse, then re-pack with "
              f"--wheels wheels {result.target.options()}:")
        for command in wheelhouse_commands("wheels", result.target, result.extra):
            print(f"  {command}")
    gpu = missing_gpu_extras(result.wheels, result.target)
    if gpu:
        print(f"note: no wheels of {', '.join(gpu)} packed: on Kaggle the notebook runs torch fp16 instead of "
              f"TensorRT and finds peaks on the CPU, unless the image has them. For CUDA {result.target.cuda} add:")
        for command in gpu_wheel_commands("wheels", result.target):
            print(f"  {command}")


def print_next_steps(result: PackResult) -> None:
    out = shlex.quote(str(result.out))
    message = shlex.quote(f"czii-kit {czii_kit.__version__}: {len(result.manifest['checkpoints'])} checkpoint(s)")
    dataset = result.manifest["dataset"]
    print("next: upload with the kaggle CLI (it reads your API token itself; this tool never does):")
    print(f"  new dataset:  kaggle datasets create -p {out} --dir-mode zip")
    print(f"  new version:  kaggle datasets version -p {out} -m {message} --dir-mode zip")
    print(f"then attach {dataset} to the notebook (dataset_sources in kaggle_notebooks/kernel-metadata.json; the "
          "notebook finds the pack under /kaggle/input by its manifest) and push it on the T4s:")
    print("  kaggle kernels push -p kaggle_notebooks --accelerator NvidiaTeslaT4")
    advice = kaggle_cli_advice(installed_version("kaggle"))
    if advice:
        print(f"note: {advice}")


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    user = args.user or default_user()
    target = KaggleTarget(python=args.kaggle_python, cuda=args.kaggle_cuda,
                          platforms=tuple(args.kaggle_platform or KAGGLE_PLATFORMS), tensorrt=args.tensorrt_version)
    result = pack_dataset(args.weights, args.out, args.slug, user, title=args.title, folds=shared.folds(args.folds),
                          wheels=args.wheels, onnx=args.onnx, force=args.force, progress=not args.no_progress,
                          target=target, thresholds_from=args.thresholds_from,
                          default_thresholds=args.default_thresholds, default_fusion=args.default_fusion)
    print_summary(result)
    if user == PLACEHOLDER_USER:
        print(f"note: no --user and no $KAGGLE_USERNAME: dataset-metadata.json says {PLACEHOLDER_USER!r}; "
              "re-pack with --user, or edit its \"id\", before uploading")
    print_wheelhouse_advice(result)
    print_next_steps(result)
    return 0
