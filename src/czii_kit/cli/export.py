"""czii export --weights weights/EXP --format onnx|tensorrt [--precision fp16]  (with a parity check)

Same as ``python tools/export.py``."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error
from czii_kit.errors import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("Export checkpoints (3D U-Nets and YOLO slice detectors) to fixed-shape ONNX (opset 17) or "
                      "TensorRT engines, and print the max abs difference against torch fp32")
    shared.add_weights(p)
    p.add_argument("--format", required=True, choices=["onnx", "tensorrt"])
    p.add_argument("--precision", choices=["fp32", "fp16"],
                   help="graph precision (default: fp32 for onnx, fp16 for tensorrt); an fp16 ONNX is the file a "
                        "TensorRT fp16 engine is built from, so --format onnx --precision fp16 checks its accuracy "
                        "on CPU")
    shared.add_folds(p)
    p.add_argument("--batch-size", type=int,
                   help="fixed batch of a U-Net graph (default: the config's infer.batch_size; YOLO graphs use "
                        "yolo.infer_batch)")
    p.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the checkpoint's window")
    p.add_argument("--engine-cache", default="build/engines", help="where TensorRT engines are cached")
    p.add_argument("--force", action="store_true", help="re-export over an existing ONNX file")
    p.add_argument("--fold-ensemble", action="store_true",
                   help="fold the 3D checkpoints (same window and stride) into ONE graph returning their weighted "
                        "mean; predict uses it with --set infer.fold_ensemble=true and a graph engine")
    p.add_argument("--member-weights", help="with --fold-ensemble: comma list of weights, one per checkpoint")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from czii_kit.infer.engines import require_onnxruntime, require_tensorrt
    from czii_kit.infer.kinds import KINDS, VolumeKind, group_by_kind, load_checkpoints

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.format == "tensorrt":  # fail before any work if what runs the parity check is missing
        require_tensorrt()
    else:
        require_onnxruntime(" to check the export's parity")
    fp16 = (args.precision or ("fp16" if args.format == "tensorrt" else "fp32")) == "fp16"
    weights = shared.member_weights(args.member_weights)
    ckpts = load_checkpoints(args.weights, shared.folds(args.folds))
    groups = group_by_kind(ckpts, weights)
    if args.fold_ensemble:
        volume = VolumeKind.name
        if set(groups) != {volume} or len(groups[volume]) < 2:
            raise ConfigError("--fold-ensemble folds two or more 3D checkpoints into one graph; pass only 3D "
                              f"checkpoints (got {', '.join(f'{len(g)} {k}' for k, g in groups.items())})")
        group = groups[volume]
        export_one(KINDS[volume], [c for c, _ in group], args, fp16, [w for _, w in group])
        return 0
    for name, group in groups.items():
        for ckpt, _ in group:
            export_one(KINDS[name], [ckpt], args, fp16)
    return 0


def export_config(ckpt: dict, args) -> dict:
    """The checkpoint's config with the command line's window and batch size (what predict runs with)."""
    cfg = copy.deepcopy(ckpt["config"])
    if args.window:
        cfg["infer"]["window"] = list(args.window)
    if args.batch_size is not None:
        cfg["infer"]["batch_size"] = args.batch_size
    return cfg


def export_one(kind, ckpts: list[dict], args, fp16: bool, weights: list[float] | None = None) -> None:
    """Fixed-shape ONNX next to the checkpoint (where predict and the Kaggle pack look), then parity vs torch fp32."""
    from czii_kit.infer.engines import resolve_device
    from czii_kit.infer.export import EngineFiles, check_parity, export_graph, open_graph, parity
    from czii_kit.infer.kinds import graph_name

    cfg = export_config(ckpts[0], args)
    path = kind.onnx_path(ckpts, cfg, fp16, weights)
    spec = kind.graph(ckpts, cfg, weights)
    fresh = args.force or not path.exists()
    if fresh:
        export_graph(spec, path, fp16)
        print(f"wrote {path}")
    else:
        print(f"{path} exists (use --force to re-export)")
    device = "cpu" if args.format == "onnx" else "cuda"
    engine = lambda: EngineFiles(Path(args.engine_cache)).engine_path(  # noqa: E731
        graph_name(kind, ckpts, cfg, fp16, weights), [c["path"] for c in ckpts], resolve_device(device))
    what = f"{path.name}: torch fp32 vs {args.format} {'fp16' if fp16 else 'fp32'}"
    try:
        check_parity(what, parity(spec, open_graph(args.format, lambda _: path, device, engine), device), fp16)
    except BaseException:
        if fresh:  # an export that was not checked, or failed its check, is not left for predict or pack to use
            path.unlink(missing_ok=True)
            print(f"removed {path}: its parity check failed or did not finish")
        raise
