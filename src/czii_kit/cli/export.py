"""python tools/export.py --weights weights/EXP --format onnx|tensorrt [--precision fp16]  (with a parity check)"""
from __future__ import annotations

import argparse
from pathlib import Path

from czii_kit.cli.common import exit_on_user_error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export checkpoints (3D U-Nets and YOLO slice detectors) to fixed-shape "
                                            "ONNX (opset 17) or TensorRT engines, and print the max abs difference "
                                            "against torch fp32")
    p.add_argument("--weights", nargs="+", required=True, help="experiment directories or fold*.pt files")
    p.add_argument("--format", required=True, choices=["onnx", "tensorrt"])
    p.add_argument("--precision", choices=["fp32", "fp16"],
                   help="graph precision (default: fp32 for onnx, fp16 for tensorrt); an fp16 ONNX is the file a "
                        "TensorRT fp16 engine is built from, so --format onnx --precision fp16 checks its accuracy "
                        "on CPU")
    p.add_argument("--folds", help="comma list of folds (default: all)")
    p.add_argument("--batch-size", type=int,
                   help="fixed batch of a U-Net graph (default: the config's infer.batch_size; YOLO graphs use "
                        "yolo.infer_batch)")
    p.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the checkpoint's window")
    p.add_argument("--engine-cache", default="build/engines", help="where TensorRT engines are cached")
    p.add_argument("--force", action="store_true", help="re-export over an existing ONNX file")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from czii_kit.infer.engines import require_tensorrt
    from czii_kit.infer.members import load_checkpoints
    from czii_kit.yolo.predict import is_yolo_checkpoint

    if args.format == "tensorrt":
        require_tensorrt()  # fail before any work if TensorRT or the GPU is missing
    fp16 = (args.precision or ("fp16" if args.format == "tensorrt" else "fp32")) == "fp16"
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    for ckpt in load_checkpoints(args.weights, folds):
        (export_yolo if is_yolo_checkpoint(ckpt) else export_unet)(ckpt, args, fp16)
    return 0


def write_onnx(path: Path, force: bool, export) -> Path:
    """Export to ``path`` unless it exists (the user's file is kept without --force)."""
    if path.exists() and not force:
        print(f"{path} exists (use --force to re-export)")
    else:
        export(path)
        print(f"wrote {path}")
    return path


def export_unet(ckpt: dict, args, fp16: bool) -> None:
    """Fixed-window ONNX next to the checkpoint (where predict and the Kaggle pack look), then parity."""
    from czii_kit.infer.engines import GraphEngine, TorchEngine
    from czii_kit.infer.export import check_parity, export_onnx, open_graph, parity
    from czii_kit.infer.members import packed_onnx_path, prob_model

    window = tuple(args.window or ckpt["window"])
    batch = args.batch_size or ckpt["config"]["infer"]["batch_size"]
    model = prob_model(ckpt)
    onnx = write_onnx(packed_onnx_path(ckpt["path"], window, batch, fp16), args.force,
                      lambda path: export_onnx(model, window, path, batch_size=batch, fp16=fp16))
    device = "cpu" if args.format == "onnx" else "cuda"
    candidate = GraphEngine(open_graph(args.format, lambda _: onnx, args.engine_cache, device), name=args.format)
    diff = parity(TorchEngine(model, window, device=device, fp16=False), candidate, n_batches=2, batch_size=batch)
    check_parity(f"{Path(ckpt['path']).name}: torch vs {args.format} {'fp16' if fp16 else 'fp32'}", diff, fp16)


def export_yolo(ckpt: dict, args, fp16: bool) -> None:
    """YOLO slice detectors: fixed (infer_batch, 3, imgsz, imgsz) ONNX next to the checkpoint, then parity on
    random images (class scores, and boxes relative to their size: see czii_kit.yolo.predict.parity)."""
    from czii_kit.infer.export import check_parity, open_graph
    from czii_kit.yolo.predict import export_onnx, graph_geometry, graph_runner, parity, yolo_onnx_path

    imgsz, batch = graph_geometry(ckpt)
    onnx = write_onnx(yolo_onnx_path(ckpt["path"], imgsz, batch, fp16), args.force,
                      lambda path: export_onnx(ckpt, path, fp16))
    device = "cpu" if args.format == "onnx" else "cuda"
    session = open_graph(args.format, lambda _: onnx, args.engine_cache, device)
    diff = parity(ckpt, graph_runner(session, imgsz), device)
    check_parity(f"{Path(ckpt['path']).name}: torch vs {args.format} {'fp16' if fp16 else 'fp32'} (YOLO)", diff, fp16)
