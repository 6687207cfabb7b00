"""Segmentation losses on (B, 7, ...) logits vs (B, 6, ...) soft heatmap targets in [0, 1].

Conventions shared by every loss:
  - channel 0 of the logits is background, channels 1..6 are the particle classes;
  - background target = 1 - max over the class heatmaps; a voxel is "positive" where the
    relevant heatmap is >= POSITIVE_THRESHOLD (inside a particle's positive region);
  - ``class_weights`` (one per class, default all 1) multiply each class's term; they are not
    renormalised, so all-ones gives the plain mean and a zero removes the class entirely;
  - ``pos_weight`` multiplies the weight of positive voxels; means over voxels are weighted
    means (sum of w * loss / sum of w), so pos_weight shifts emphasis without changing scale.
Each loss module carries ``activation`` ("softmax" or "sigmoid"): the one to use at inference.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from czii_kit.errors import ConfigError
from czii_kit.utils.registry import Registry
from czii_kit.particles import CZII

POSITIVE_THRESHOLD = 0.5
LOSSES = Registry("loss")
register_loss = LOSSES.register


def build_loss(name: str, class_weights: Sequence[float] | None = None, **args: Any) -> nn.Module:
    """Build the registered loss ``name``; unknown names or arguments raise ConfigError."""
    return LOSSES.build(name, class_weights=class_weights, **args)


def class_weight_tensor(class_weights: Sequence[float] | None) -> torch.Tensor:
    """Validated (C,) float tensor of per-class weights (one per class, in the config's class order); all ones for
    the six CZII classes when None."""
    if class_weights is None:
        return torch.ones(len(CZII))
    weights = torch.as_tensor([float(w) for w in class_weights])
    if weights.ndim != 1 or not len(weights) or bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ConfigError(f"class_weights={list(class_weights)}: give one finite non-negative number per class, "
                          "in the config's class order")
    return weights


def check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:  # also rejects NaN
            raise ConfigError(f"loss argument {name}={value}: use a number >= 0")


def check_positive(**values: float) -> None:
    """For divisors: a zero pos_weight or smooth can turn a loss into 0/0."""
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"loss argument {name}={value}: use a number > 0")


def check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Logits (B, C + 1, ...) (background first) and target (B, C, ...) must share batch and spatial sizes."""
    n = target.shape[1] if target.dim() == logits.dim() else len(CZII)
    expected = (len(logits), n, *logits.shape[2:])
    if logits.shape[1] != n + 1 or tuple(target.shape) != expected:
        raise ConfigError(
            f"loss got logits {tuple(logits.shape)} and target {tuple(target.shape)}; expected (B, {n + 1}, Z, Y, X) "
            f"and (B, {n}, Z, Y, X): build targets at the model's output_stride"
        )


def broadcast_classes(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, 1, 1) on ``like``'s device and dtype."""
    return weights.to(like).view(1, -1, *([1] * (like.dim() - 2)))


def positive_weight(positive: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Voxel weights: pos_weight where ``positive``, 1 elsewhere."""
    return 1.0 + (pos_weight - 1.0) * positive.float()


def soft_class_target(target: torch.Tensor) -> torch.Tensor:
    """(B, 6, ...) heatmaps -> (B, 7, ...) distributions: [1 - max(heat), heat...] summing to 1."""
    background = 1.0 - target.amax(dim=1, keepdim=True)
    full = torch.cat([background, target], dim=1)
    return full / full.sum(dim=1, keepdim=True)  # sum >= 1 since background + max heat = 1


class DeepSupervision(nn.Module):
    """Any loss plus the same loss on a model's coarser auxiliary outputs (``model.args.deep_supervision``).

    An auxiliary output k levels coarser is compared with the target max-pooled by its factor (a particle's peak
    survives pooling) and weighs 0.5**k, nnU-Net's choice; the sum is divided by the total weight, so the loss keeps
    its scale. A plain tensor output (eval mode, or a model without auxiliary heads) gives the wrapped loss exactly.
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss
        self.activation = loss.activation

    def forward(self, output: torch.Tensor | tuple, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self.loss(output, target)
        logits, auxiliary = output
        total, weight = self.loss(logits, target), 1.0
        for level, aux in enumerate(auxiliary, 1):
            factor = target.shape[-1] // aux.shape[-1]
            if tuple(a * factor for a in aux.shape[2:]) != tuple(target.shape[2:]):
                raise ConfigError(f"auxiliary output {tuple(aux.shape)} is not the target {tuple(target.shape)} "
                                  "downsampled by one integer factor; the patch size must be a multiple of the "
                                  "model's input_multiple")
            w = 0.5 ** level
            total = total + w * self.loss(aux, F.max_pool3d(target, factor))
            weight += w
        return total / weight


@register_loss("weighted_ce")
class WeightedCrossEntropy(nn.Module):
    """Soft-target cross-entropy over background + 6 classes.

    Per voxel: -sum_c w_c * t_c * log softmax(logits)_c with w = [1, class_weights], averaged
    over voxels with weight pos_weight where max heat >= 0.5 and 1 elsewhere.
    """

    activation = "softmax"

    def __init__(self, class_weights: Sequence[float] | None = None, pos_weight: float = 1.0):
        super().__init__()
        check_positive(pos_weight=pos_weight)
        self.pos_weight = float(pos_weight)
        channel_weights = torch.cat([torch.ones(1), class_weight_tensor(class_weights)])  # background weighs 1
        self.register_buffer("channel_weights", channel_weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        log_p = F.log_softmax(logits.float(), dim=1)
        weighted_target = soft_class_target(target.float()) * broadcast_classes(self.channel_weights, log_p)
        per_voxel = -(weighted_target * log_p).sum(dim=1)
        voxel_w = positive_weight(target.amax(dim=1) >= POSITIVE_THRESHOLD, self.pos_weight)
        return (per_voxel * voxel_w).sum() / voxel_w.sum()


@register_loss("tversky")
class TverskyLoss(nn.Module):
    """1 - Tversky index per class on softmax class probabilities, class-weighted mean over classes.

    TI_c = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth), with soft counts summed over
    the batch and all voxels: TP = sum p*t, FP = sum p*(1-t), FN = sum (1-p)*t. The default
    beta > alpha penalises missed particles more than false alarms: the metric is F-beta, beta=4.
    """

    activation = "softmax"

    def __init__(
        self, class_weights: Sequence[float] | None = None, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0
    ):
        super().__init__()
        check_non_negative(alpha=alpha, beta=beta)
        check_positive(smooth=smooth)
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)
        self.register_buffer("class_weights", class_weight_tensor(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        prob = torch.softmax(logits.float(), dim=1)[:, 1:]
        target = target.float()
        reduce_dims = [0, *range(2, prob.dim())]
        tp = (prob * target).sum(reduce_dims)
        fp = (prob * (1 - target)).sum(reduce_dims)
        fn = ((1 - prob) * target).sum(reduce_dims)
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return (self.class_weights * (1 - index)).mean()


@register_loss("ce_tversky")
class CrossEntropyTversky(nn.Module):
    """ce_weight * weighted_ce + tversky_weight * tversky: voxel-level calibration plus region overlap."""

    activation = "softmax"

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        ce_weight: float = 1.0,
        tversky_weight: float = 1.0,
        pos_weight: float = 1.0,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = 1.0,
    ):
        super().__init__()
        check_non_negative(ce_weight=ce_weight, tversky_weight=tversky_weight)
        self.ce_weight, self.tversky_weight = float(ce_weight), float(tversky_weight)
        self.ce = WeightedCrossEntropy(class_weights, pos_weight=pos_weight)
        self.tversky = TverskyLoss(class_weights, alpha=alpha, beta=beta, smooth=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce_weight * self.ce(logits, target) + self.tversky_weight * self.tversky(logits, target)


class SigmoidLoss(nn.Module):
    """Shared shape of bce/focal: element loss on sigmoid(logits[:, 1:]) vs heatmaps, weighted mean.

    Element weight = class_weight_c * (pos_weight where heat_c >= 0.5 else 1); the mean divides
    by the sum of the pos_weight factors only, so class weights act as plain multipliers.
    """

    activation = "sigmoid"

    def __init__(self, class_weights: Sequence[float] | None = None, pos_weight: float = 1.0):
        super().__init__()
        check_positive(pos_weight=pos_weight)
        self.pos_weight = float(pos_weight)
        self.register_buffer("class_weights", class_weight_tensor(class_weights), persistent=False)

    def element_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        class_logits, target = logits[:, 1:].float(), target.float()
        loss = self.element_loss(class_logits, target) * broadcast_classes(self.class_weights, class_logits)
        element_w = positive_weight(target >= POSITIVE_THRESHOLD, self.pos_weight)
        return (loss * element_w).sum() / element_w.sum()


@register_loss("bce")
class BinaryCrossEntropy(SigmoidLoss):
    """Per-class binary cross-entropy with soft targets."""

    def element_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


@register_loss("focal")
class FocalLoss(SigmoidLoss):
    """Sigmoid focal loss for soft targets: bce * |t - p|^gamma * (alpha t + (1 - alpha)(1 - t)).

    |t - p| is the soft-target form of (1 - p_t) (as in generalized focal loss), so a prediction
    equal to the heatmap costs nothing. Defaults are RetinaNet's gamma=2, alpha=0.25;
    alpha=0.5 weighs positives and negatives alike (times 0.5).
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        pos_weight: float = 1.0,
        gamma: float = 2.0,
        alpha: float = 0.25,
    ):
        super().__init__(class_weights, pos_weight=pos_weight)
        check_non_negative(gamma=gamma)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"focal alpha={alpha}: use a weight in [0, 1] for positives (1 - alpha for negatives)")
        self.gamma, self.alpha = float(gamma), float(alpha)

    def element_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        modulator = (target - torch.sigmoid(logits)).abs().pow(self.gamma)
        alpha_t = self.alpha * target + (1 - self.alpha) * (1 - target)
        return bce * modulator * alpha_t
