"""Start from a trained model: ``train.init_from`` (a checkpoint, or an experiment folder: its best checkpoint).

Output channels are matched by class name, not by position: a class in both keeps its trained channel, a class
new to the data gets the fresh channel of a model built for it, a class the data lacks is dropped; the background
channel (0) is kept. Every other weight must fit the model the config builds, or the checkpoint is refused with the
first layers that do not, before any data is read. ``encoder_parameters`` and ``set_encoder_frozen`` serve the
fine-tuning options (``train.encoder_lr_mult``, ``train.freeze_encoder_epochs``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from czii_kit.checkpoints import load_checkpoint, weight_mismatches
from czii_kit.errors import CheckpointError
from czii_kit.utils.checkpoint_files import find_checkpoints
from czii_kit.utils.digest import sha256_file


def init_checkpoint_path(path: str | Path) -> Path:
    """``path`` itself, or the best checkpoint of an experiment folder: the highest validation F4, else the one model
    trained on every run (fold -1), else its only checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    found = find_checkpoints(path)
    if len(found) == 1:
        return found[0]
    scored = [(float(load_checkpoint(p)["validation"].get("score", math.nan)), p) for p in found]
    scored = [(s, p) for s, p in scored if math.isfinite(s)]
    if scored:
        return max(scored, key=lambda item: item[0])[1]
    full = [p for p in found if p.stem == "fold-1"]
    if full:
        return full[0]
    raise CheckpointError(f"--init-from {path}: {len(found)} checkpoints and none has a validation score; pass one of "
                          f"them: {', '.join(map(str, found))}")


def _is_head(name: str, model: torch.nn.Module) -> bool:
    return name.startswith(tuple(getattr(model, "class_heads", ())))


def check_fits(model: torch.nn.Module, state: dict, where: str) -> None:
    """Every weight of ``state`` but the class heads has the name and shape of ``model``'s; the error names the first
    layers that do not fit."""
    # class heads one side lacks (deep-supervision heads) are dropped or start fresh
    problems = weight_mismatches(model, state, skip=lambda name: _is_head(name, model))
    if problems:
        raise CheckpointError(f"{where} does not fit the model of this config ({type(model).__name__}): {problems}. "
                              "Start from a checkpoint of the same model and model.args (its config.yaml says which)")


def channel_map(source: Sequence[str], target: Sequence[str]) -> list[int | None]:
    """For each output channel of the target model (background first), the source channel it takes, or None (a class
    new to the target: its fresh channel stays)."""
    return [0] + [1 + list(source).index(name) if name in source else None for name in target]


def mapped_state(model: torch.nn.Module, state: dict, source: Sequence[str], target: Sequence[str]) -> dict:
    """``state`` with every class-head tensor rebuilt for the target's channels (``channel_map``)."""
    ours = model.state_dict()
    picks = channel_map(source, target)
    out = dict(ours)  # a head the checkpoint lacks keeps its fresh weights
    for name, value in state.items():
        if name not in ours:
            continue  # a head this model lacks
        if not _is_head(name, model) or value.ndim == 0:
            out[name] = value
            continue
        fresh = ours[name].clone()
        for channel, taken in enumerate(picks):
            if taken is not None:
                fresh[channel] = value[taken]
        out[name] = fresh
    return out


def load_initial_weights(model: torch.nn.Module, model_cfg: dict, classes: Sequence[str],
                         init_from: str | Path) -> dict:
    """Load ``init_from``'s weights into ``model`` (built for ``classes``), matched by class name; returns the
    lineage a checkpoint records: where it started (path, sha256, model, classes, fold, thresholds)."""
    path = init_checkpoint_path(init_from)
    ckpt = load_checkpoint(path)
    where = f"--init-from {path}"
    if ckpt["model"]["name"] != model_cfg["name"]:
        raise CheckpointError(f"{where} is a {ckpt['model']['name']} model, this config builds {model_cfg['name']}; "
                              "start from a checkpoint of the same model (its config.yaml says which)")
    check_fits(model, ckpt["state_dict"], where)
    model.load_state_dict(mapped_state(model, ckpt["state_dict"], ckpt["classes"], classes))
    return {"path": str(path), "sha256": sha256_file(path), "model": ckpt["model"]["name"],
            "classes": list(ckpt["classes"]), "fold": ckpt["fold"], "thresholds": dict(ckpt["thresholds"]),
            "thresholds_from": ckpt["validation"].get("thresholds_from", f"its validation run(s) "
                                                      f"{', '.join(ckpt['validation'].get('runs', [])) or '?'}")}


def encoder_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    prefixes = tuple(getattr(model, "encoder_prefixes", ()))
    return ((n, p) for n, p in model.named_parameters() if prefixes and n.startswith(prefixes))


def parameter_groups(model: torch.nn.Module, lr: float, encoder_lr_mult: float) -> list[dict]:
    """The optimizer's groups: the encoder at ``lr * encoder_lr_mult``, the decoder and heads at ``lr``."""
    encoder = dict(encoder_parameters(model))
    rest = [p for n, p in model.named_parameters() if n not in encoder]
    if encoder_lr_mult == 1.0 or not encoder:
        return [{"params": list(model.parameters()), "lr": lr}]
    return [{"params": list(encoder.values()), "lr": lr * encoder_lr_mult}, {"params": rest, "lr": lr}]


def set_encoder_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze (or release) the encoder: no gradients for its weights, and its normalization layers in eval mode so
    their running statistics stay as trained. Call after ``model.train()``."""
    prefixes = tuple(getattr(model, "encoder_prefixes", ()))
    for name, parameter in encoder_parameters(model):
        parameter.requires_grad_(not frozen)
    if frozen and prefixes:
        for name, module in model.named_modules():
            if (name + ".").startswith(prefixes) and isinstance(module, torch.nn.modules.batchnorm._NormBase):
                module.eval()
