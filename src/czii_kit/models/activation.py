"""Logits (B, 7, ...) -> class probabilities (B, 6, ...), the one place that knows channel 0 is background.

"softmax": the 7 channels compete (background included), then background is dropped.
"sigmoid": each class channel 1..6 is an independent probability; channel 0 is ignored.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from czii_kit.errors import ConfigError

ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid")
FOREGROUND_PRIOR = 0.01  # initial probability of each class: particles fill ~1% of a tomogram


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
    return activation


def probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """(B, 7, ...) logits -> (B, 6, ...) probabilities of the six particle classes."""
    if check_activation(activation) == "softmax":
        return torch.softmax(logits, dim=1)[:, 1:]
    return torch.sigmoid(logits[:, 1:])


def init_class_prior(head: nn.Conv3d, prior: float = FOREGROUND_PRIOR) -> None:
    """Bias the class channels (1..) of a logits conv so training starts at ~``prior`` per class.

    Rare-foreground trick of the focal-loss paper: without it the first steps are spent
    unlearning a 50% (sigmoid) or 1/7 (softmax) foreground guess. Background bias stays 0;
    logit(prior) gives sigmoid = prior and softmax ~= prior for small priors.
    """
    with torch.no_grad():
        head.bias.zero_()
        head.bias[1:] = math.log(prior / (1.0 - prior))


class ProbabilityModel(nn.Module):
    """Wrap a logits model so engines and ONNX exports output class probabilities directly."""

    def __init__(self, model: nn.Module, activation: str):
        super().__init__()
        self.model = model
        self.activation = check_activation(activation)

    @property
    def output_stride(self) -> int:
        return self.model.output_stride

    @property
    def input_multiple(self) -> int:
        return self.model.input_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model(x), self.activation)
