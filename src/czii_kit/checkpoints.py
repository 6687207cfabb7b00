"""Checkpoints that carry everything needed to use them later, written atomically.

A neutral module: training writes checkpoints, inference, evaluation, export and packing read them.

fold{K}.pt holds the EMA weights of the best validation epoch with: model name and args,
output activation and stride, resolved config, normalization, class order, tuned
per-class thresholds, the validation table and score, epoch, fold, package version.
fold{K}_last.pt is the resume state (raw + EMA weights, optimizer, scheduler, RNG, log).
"""
from __future__ import annotations

from pathlib import Path

import torch

import czii_kit
from czii_kit.config import dump_config, infer_window, with_new_defaults
from czii_kit.errors import CheckpointError, first_few, first_line
from czii_kit.models import ProbabilityModel, build_model
from czii_kit.utils.atomic import atomic_path

FORMAT = "czii-kit-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "package_version", "model", "state_dict", "config", "classes",
            "activation", "stride", "normalization", "window", "thresholds", "validation", "epoch", "fold")


def save_checkpoint(payload: dict, path: str | Path) -> Path:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": czii_kit.__version__, **payload}
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"internal: checkpoint payload lacks {missing}")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def save_state(state: dict, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Load and check a fold checkpoint; errors say what is wrong and how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `czii train --fold 0`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own reason, without its advice to load the file as an arbitrary pickle
        why = first_line(str(e).split("WeightsUnpickler error:")[-1])
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(e).__name__}: {why}); "
                              "it is truncated or not a czii-kit checkpoint") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a czii-kit checkpoint (no format={FORMAT!r} field)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer czii-kit (format {ckpt['format_version']}); "
                              "upgrade czii-kit")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks fields {', '.join(missing)}; re-train or re-export it")
    ckpt["path"] = str(path)
    ckpt["config"] = with_new_defaults(ckpt["config"])
    return ckpt


def untrained_checkpoint(cfg: dict, model: torch.nn.Module | None = None) -> dict:
    """The checkpoint of an untrained model of ``cfg`` (or of ``model``, built from it): benchmarks, parity checks
    and the GPU self-check need weights, not skill. Its thresholds are 0.5 and it has no validation."""
    classes = list(cfg["classes"])
    if model is None:
        model = build_model(cfg["model"]["name"], num_classes=len(classes) + 1, **cfg["model"]["args"])
    from czii_kit.particles import VOXEL_SPACING

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": czii_kit.__version__,
            "path": f"untrained/{cfg['model']['name']}", "model": {"name": cfg["model"]["name"],
                                                                  "args": dict(cfg["model"]["args"])},
            "state_dict": model.state_dict(), "config": cfg, "config_yaml": dump_config(cfg), "classes": classes,
            "activation": "softmax", "stride": model.output_stride, "normalization": dict(cfg["normalize"]),
            "window": list(infer_window(cfg)), "voxel_spacing": VOXEL_SPACING,
            "thresholds": dict.fromkeys(classes, 0.5), "validation": {"score": float("nan")}, "epoch": 0, "fold": 0,
            "input_multiple": model.input_multiple}


def describe_lineage(lineage: dict) -> str:
    """One line: where a checkpoint started from."""
    return (f"started from {lineage['path']} (sha256 {lineage['sha256'][:12]}, {lineage['model']}, classes "
            f"{', '.join(lineage['classes'])})")


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"resume state {path} could not be loaded ({type(e).__name__}: {e}); "
                              "delete it to start the fold afresh") from e


def unfinished_training(ckpt: dict) -> str | None:
    """Why a fold checkpoint is the best epoch of a training that was stopped before its end (its resume state
    beside it says so: a killed job), or None (also when that state cannot be read: nothing to tell). The state is
    read as tensors and plain values only (no pickled code runs) and memory-mapped (its weights are not read)."""
    path = Path(ckpt["path"])
    last = path.with_name(f"{path.stem}_last.pt")
    if not last.is_file():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 -- unreadable, or more than tensors and plain values: nothing to tell
        return None
    if state.get("finished", True):
        return None
    return (f"{path}: its training stopped after epoch {state['epoch'] + 1} of {ckpt['config']['train']['epochs']} "
            f"({last.name} was not finished); finish it with czii train --resume (the same --fold and --out)")


MISMATCHES_SHOWN = 4  # weights quoted when a state does not fit a model


def weight_mismatches(model: torch.nn.Module, state: dict, skip=lambda name: False) -> str:
    """The first weights of ``state`` that do not fit ``model`` (by name and shape), in words; "" when all fit.
    ``skip``: names not compared (class heads that fine-tuning maps by name)."""
    ours = model.state_dict()
    problems = [f"{k} (not in this model)" for k in state if k not in ours and not skip(k)]
    problems += [f"{k} (not in the checkpoint)" for k in ours if k not in state and not skip(k)]
    problems += [f"{k} (shape {tuple(state[k].shape)} in the checkpoint, {tuple(ours[k].shape)} in the model)"
                 for k in state if k in ours and not skip(k) and state[k].shape != ours[k].shape]
    return first_few(problems, MISMATCHES_SHOWN, "; ")


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """The checkpoint's 3D model with its (EMA) weights, in eval mode (one output channel per class + background)."""
    model = build_model(ckpt["model"]["name"], num_classes=len(ckpt["classes"]) + 1, **ckpt["model"]["args"])
    mismatches = weight_mismatches(model, ckpt["state_dict"])
    if mismatches:
        raise CheckpointError(f"checkpoint {ckpt.get('path', '?')}: its weights do not fit the model its config names "
                              f"({ckpt['model']['name']} {ckpt['model']['args']}): {mismatches}. The checkpoint "
                              "and its config disagree: use the checkpoint as training wrote it")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, AttributeError, TypeError) as e:  # what the name and shape check cannot see
        raise CheckpointError(f"checkpoint {ckpt.get('path', '?')}: its weights do not load into "
                              f"{ckpt['model']['name']} ({type(e).__name__}: {first_line(e)})") from e
    return model.eval()


def probability_model(ckpt: dict) -> ProbabilityModel:
    """The checkpoint's 3D model wrapped to output class probabilities (what every engine runs)."""
    return ProbabilityModel(model_from_checkpoint(ckpt), ckpt["activation"]).eval()
