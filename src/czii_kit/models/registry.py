"""One model registry: configs name a model, ``build_model`` checks the args and builds it.

Every registered class takes ``(in_channels=1, num_classes=7, **args)``, returns logits
(B, num_classes, Z/s, Y/s, X/s) and exposes ``output_stride`` (s) and ``input_multiple``
(each input spatial size must be a multiple of it), and for fine-tuning ``encoder_prefixes`` (the
parameter names of its encoder) and ``class_heads`` (those whose first axis is the class channels).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from czii_kit.errors import ConfigError
from czii_kit.utils.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register


def build_model(name: str, **args: Any) -> nn.Module:
    """Build the registered model ``name`` with constructor ``args`` (validated before the call)."""
    return MODELS.build(name, **args)


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
