"""One model registry: configs name a model, ``build_model`` checks the args and builds it.

Every registered class takes ``(in_channels=1, num_classes=7, **args)``, returns logits
(B, num_classes, Z/s, Y/s, X/s) and exposes ``output_stride`` (s) and ``input_multiple``
(each input spatial size must be a multiple of it).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from czii_kit.errors import ConfigError

MODELS: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator that makes a model buildable by ``name``."""

    def register(cls: T) -> T:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is already registered by {MODELS[name].__qualname__}")
        MODELS[name] = cls
        return cls

    return register


def check_args(factory: Callable[..., Any], args: Mapping[str, Any], what: str) -> None:
    """Raise ConfigError naming any key of ``args`` that ``factory``'s signature does not accept."""
    accepted = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = [key for key in args if key not in accepted]
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for {what}; "
            f"accepted arguments: {', '.join(accepted)}"
        )


def build_model(name: str, **args: Any) -> nn.Module:
    """Build the registered model ``name`` with constructor ``args`` (validated before the call)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    check_args(cls, args, f"model {name!r}")
    return cls(**args)


def check_input_shape(model: nn.Module, shape: Sequence[int]) -> None:
    """Raise ConfigError unless the last three sizes of ``shape`` are multiples of ``model.input_multiple``.

    Call it on the patch/window shape before training or inference, so a bad size fails
    at once with the next valid sizes instead of deep inside a decoder concat.
    """
    spatial = tuple(int(s) for s in shape[-3:])
    multiple = model.input_multiple
    if len(spatial) != 3 or any(s <= 0 or s % multiple for s in spatial):
        fixed = tuple(max(multiple, -(-s // multiple) * multiple) for s in spatial)  # round up: pad
        raise ConfigError(
            f"input spatial shape {spatial} (z, y, x) does not suit {type(model).__name__}: each size must be "
            f"a positive multiple of its input_multiple={multiple}; use e.g. {fixed}"
        )


def check_forward_input(model: nn.Module, x: torch.Tensor) -> None:
    """``check_input_shape`` for a model's forward; skipped while tracing for ONNX, where the
    input shape is fixed by the example and reading traced sizes as ints only warns."""
    if not torch.jit.is_tracing():
        check_input_shape(model, x.shape)
