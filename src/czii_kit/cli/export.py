"""python tools/export.py --weights weights/EXP --format onnx|tensorrt  (with a parity check)"""
from __future__ import annotations

import argparse
from pathlib import Path

from czii_kit.cli.common import exit_on_user_error
from czii_kit.errors import CheckpointError

FP32_TOLERANCE = 1e-4  # torch vs ONNX Runtime, both fp32
FP16_TOLERANCE = 2e-2  # torch fp32 vs a TensorRT fp16 engine, on probabilities


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export checkpoints to ONNX (opset 17, fixed window) or TensorRT fp16, "
                                            "and print the max abs difference against torch")
    p.add_argument("--weights", nargs="+", required=True, help="experiment directories or fold*.pt files")
    p.add_argument("--format", required=True, choices=["onnx", "tensorrt"])
    p.add_argument("--folds", help="comma list of folds (default: all)")
    p.add_argument("--batch-size", type=int, help="fixed batch of the graph (default: the config's infer.batch_size)")
    p.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the checkpoint's window")
    p.add_argument("--engine-cache", default="build/engines", help="where TensorRT engines are cached")
    p.add_argument("--force", action="store_true", help="re-export over an existing ONNX file")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from czii_kit.infer.engines import OnnxEngine, TensorRTEngine, TorchEngine, require_tensorrt
    from czii_kit.infer.export import build_tensorrt_engine, export_onnx, parity
    from czii_kit.infer.members import load_checkpoints, packed_onnx_path, prob_model
    from czii_kit.yolo.predict import is_yolo_checkpoint

    if args.format == "tensorrt":
        require_tensorrt()  # fail before any work if TensorRT or the GPU is missing
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    for ckpt in load_checkpoints(args.weights, folds):
        if is_yolo_checkpoint(ckpt):
            export_yolo(ckpt, args)
            continue
        window = tuple(args.window or ckpt["window"])
        batch = args.batch_size or ckpt["config"]["infer"]["batch_size"]
        path = Path(ckpt["path"])
        onnx = packed_onnx_path(path, window, batch)
        model = prob_model(ckpt)
        if onnx.exists() and not args.force:
            print(f"{onnx} exists (use --force to re-export)")
        else:
            export_onnx(model, window, onnx, batch_size=batch)
            print(f"wrote {onnx}")
        reference = TorchEngine(model, window, device="cpu" if args.format == "onnx" else "cuda")
        if args.format == "onnx":
            candidate, tol = OnnxEngine(onnx, device="cpu"), FP32_TOLERANCE
        else:
            candidate, tol = TensorRTEngine(build_tensorrt_engine(onnx, args.engine_cache), device="cuda"), FP16_TOLERANCE
        diff = parity(reference, candidate, n_batches=2, batch_size=batch)
        print(f"parity {path.name}: torch vs {args.format}: max abs diff {diff:.3e} (tolerance {tol:.0e}) "
              f"{'OK' if diff <= tol else 'FAILED'}")
        if diff > tol:
            raise CheckpointError(f"{args.format} output of {path} differs from torch by {diff:.3e} > {tol:.0e}")
    return 0


def export_yolo(ckpt: dict, args) -> None:
    """YOLO slice detectors: ONNX through ultralytics' exporter (next to the checkpoint, where predict looks),
    parity against torch on random slices. TensorRT: build from that ONNX with trtexec on the GPU."""
    import torch

    from czii_kit.yolo.predict import build_detection_model, export_onnx, onnx_runner, torch_runner, yolo_onnx_path

    if args.format == "tensorrt":
        raise CheckpointError(f"{ckpt['path']} is a YOLO checkpoint: export it with --format onnx and build the "
                              "engine on the GPU with `trtexec --onnx=FILE --fp16`")
    path = Path(ckpt["path"])
    onnx = yolo_onnx_path(path)
    if onnx.exists() and not args.force:
        print(f"{onnx} exists (use --force to re-export)")
    else:
        export_onnx(ckpt, onnx)
        print(f"wrote {onnx}")
    imgsz = int(ckpt["window"][0])
    batch = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    diff = float((torch_runner(build_detection_model(ckpt), cpu)(batch) - onnx_runner(onnx, cpu)(batch)).abs().max())
    tol = 1e-3  # raw box coordinates are in pixels, so absolute differences are larger than for probabilities
    print(f"parity {path.name}: torch vs onnx (YOLO): max abs diff {diff:.3e} (tolerance {tol:.0e}) "
          f"{'OK' if diff <= tol else 'FAILED'}")
    if diff > tol:
        raise CheckpointError(f"ONNX output of {path} differs from torch by {diff:.3e} > {tol:.0e}")
