"""Losses against hand-computed values (plain-math references), orderings and weighting rules."""
from __future__ import annotations

import math

import pytest
import torch

from czii_kit.errors import ConfigError
from czii_kit.losses import LOSSES, DeepSupervision, build_loss

N_CLASSES = 6
BIG = 30.0  # logit margin that makes softmax/sigmoid outputs hard to within e-13


def zeros(n_voxels: int = 2, channels: int = N_CLASSES + 1) -> torch.Tensor:
    """(1, channels, 1, 1, n_voxels) zeros: a tiny volume whose voxels are easy to address."""
    return torch.zeros(1, channels, 1, 1, n_voxels)


def hard_logits(labels: list[int]) -> torch.Tensor:
    """Logits whose softmax is one-hot on ``labels[v]`` (0 = background) at voxel v."""
    logits = torch.full((1, N_CLASSES + 1, 1, 1, len(labels)), -BIG)
    for v, label in enumerate(labels):
        logits[0, label, 0, 0, v] = BIG
    return logits


def hard_target(labels: list[int]) -> torch.Tensor:
    """Heatmaps with 1 at class ``labels[v]`` (1..6) of voxel v, 0 for background voxels (label 0)."""
    target = zeros(len(labels), N_CLASSES)
    for v, label in enumerate(labels):
        if label:
            target[0, label - 1, 0, 0, v] = 1.0
    return target


def log_softmax_list(values: list[float]) -> list[float]:
    total = math.log(sum(math.exp(v) for v in values))
    return [v - total for v in values]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- hand-made values


def test_weighted_ce_hard_targets_by_hand():
    # Uniform logits: every channel has log-prob -log 7. Voxel 0 is class 2 (positive), voxel 1 background.
    target = hard_target([2, 0])
    weights = [1.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    loss = build_loss("weighted_ce", class_weights=weights, pos_weight=2.0)(zeros(), target)
    expected = (2.0 * 3.0 * math.log(7) + 1.0 * 1.0 * math.log(7)) / (2.0 + 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_soft_target_by_hand():
    # One voxel, heat 0.25 for class 1 and 0.1 for class 4:
    # background = 0.75, so the target distribution is [0.75, 0.25, 0, 0, 0.1, 0, 0] / 1.1.
    logit_values = [0.5, -1.0, 2.0, 0.0, 0.3, -0.7, 1.5]
    logits = torch.tensor(logit_values).view(1, 7, 1, 1, 1)
    target = torch.zeros(1, 6, 1, 1, 1)
    target[0, 0], target[0, 3] = 0.25, 0.1
    log_p = log_softmax_list(logit_values)
    expected = -(0.75 * log_p[0] + 0.25 * 2.0 * log_p[1] + 0.1 * 5.0 * log_p[4]) / 1.1
    loss = build_loss("weighted_ce", class_weights=[2.0, 1.0, 1.0, 5.0, 1.0, 1.0], pos_weight=10.0)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # max heat 0.25 < 0.5: pos_weight must not apply


def test_tversky_by_hand():
    # Two voxels: a class-1 particle predicted with logits [0, 1, 0, ...], and background predicted uniform.
    logit_rows = [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 7]
    logits = torch.tensor(logit_rows).T.reshape(1, 7, 1, 1, 2)
    target = hard_target([1, 0])
    alpha, beta, smooth = 0.2, 0.8, 0.5
    probs = [[math.exp(v) for v in log_softmax_list(row)] for row in logit_rows]
    per_class = []
    for c in range(1, 7):
        t = [1.0 if c == 1 else 0.0, 0.0]
        p = [probs[0][c], probs[1][c]]
        tp = sum(pi * ti for pi, ti in zip(p, t))
        fp = sum(pi * (1 - ti) for pi, ti in zip(p, t))
        fn = sum((1 - pi) * ti for pi, ti in zip(p, t))
        per_class.append(1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    expected = sum(per_class) / 6
    loss = build_loss("tversky", alpha=alpha, beta=beta, smooth=smooth)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bce_by_hand():
    logits = zeros(2)
    logits[0, 3, 0, 0, 0] = 1.2  # class 3 (index 2 of the targets), voxel 0
    target = zeros(2, N_CLASSES)
    target[0, 2, 0, 0, 0] = 0.8  # positive element (>= 0.5)
    bce = lambda x, t: -(t * math.log(sigmoid(x)) + (1 - t) * math.log(1 - sigmoid(x)))  # noqa: E731
    weights = [1.0, 1.0, 4.0, 1.0, 1.0, 1.0]
    # 12 elements: the positive one (weight 4 * pos 3), one class-3 negative with logit 0 (weight 4), 10 others logit 0.
    numerator = 4 * 3 * bce(1.2, 0.8) + 4 * bce(0.0, 0.0) + 10 * bce(0.0, 0.0)
    expected = numerator / (3 + 11)
    loss = build_loss("bce", class_weights=weights, pos_weight=3.0)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_by_hand():
    x, t, gamma, alpha = 0.7, 0.3, 1.5, 0.4
    logits = zeros(1)
    logits[0, 1:] = x
    target = torch.full((1, N_CLASSES, 1, 1, 1), t)
    p = sigmoid(x)
    bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    expected = bce * abs(t - p) ** gamma * (alpha * t + (1 - alpha) * (1 - t))
    loss = build_loss("focal", gamma=gamma, alpha=alpha)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_is_zero_when_prediction_equals_soft_target():
    t = torch.tensor([0.2, 0.9, 0.5, 0.0, 1.0, 0.7]).view(1, 6, 1, 1, 1)
    logits = torch.cat([torch.zeros(1, 1, 1, 1, 1), torch.logit(t.clamp(1e-6, 1 - 1e-6))], dim=1)
    assert build_loss("focal")(logits, t).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- orderings and weighting rules


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_perfect_prediction_beats_wrong_one(name):
    labels = [0, 1, 2, 3, 4, 5, 6, 0]
    target = hard_target(labels)
    loss = build_loss(name)
    wrong = [0, 2, 3, 4, 5, 6, 1, 3]
    assert loss(hard_logits(labels), target) < loss(hard_logits(wrong), target) - 0.1


@pytest.mark.parametrize("name", ["weighted_ce", "tversky", "bce", "focal"])
def test_class_weight_scales_an_error_confined_to_one_class(name):
    # The only error: class 3 missed at voxel 1 (predicted background). Everything else is perfect,
    # so the loss is (almost) all class 3's term and doubling its weight doubles the loss.
    target = hard_target([1, 3, 0])
    logits = hard_logits([1, 0, 0])
    base = build_loss(name)(logits, target).item()
    doubled = build_loss(name, class_weights=[1, 1, 2, 1, 1, 1])(logits, target).item()
    other = build_loss(name, class_weights=[1, 1, 1, 1, 2, 1])(logits, target).item()
    assert base > 0.01
    assert doubled == pytest.approx(2 * base, rel=1e-3)
    assert other == pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("name", ["weighted_ce", "tversky", "bce", "focal"])
def test_zero_class_weight_removes_that_class(name):
    target = hard_target([1, 3, 0])
    weights = [1, 1, 0, 1, 1, 1]
    loss = build_loss(name, class_weights=weights)
    missed_class3 = loss(hard_logits([1, 0, 0]), target).item()
    perfect = loss(hard_logits([1, 3, 0]), target).item()
    assert missed_class3 == pytest.approx(perfect, abs=1e-6)


def test_tversky_penalises_false_negatives_more_by_default():
    target = hard_target([2, 0, 0, 2])
    loss = build_loss("tversky")
    false_positive = loss(hard_logits([2, 2, 0, 2]), target).item()  # an extra class-2 voxel
    false_negative = loss(hard_logits([2, 0, 0, 0]), target).item()  # a missed class-2 voxel
    assert false_negative > false_positive > 0
    swapped = build_loss("tversky", alpha=0.7, beta=0.3)
    assert swapped(hard_logits([2, 2, 0, 2]), target).item() > swapped(hard_logits([2, 0, 0, 0]), target).item()


def test_tversky_fp_and_fn_by_formula():
    # Class 2 has 2 target voxels. FP case: TP=2, FP=1, FN=0; FN case: TP=1, FP=0, FN=1. Other classes are exact.
    target = hard_target([2, 0, 0, 2])
    alpha, beta, smooth = 0.3, 0.7, 1.0
    loss = build_loss("tversky", alpha=alpha, beta=beta, smooth=smooth)
    fp_expected = (1 - (2 + smooth) / (2 + alpha * 1 + smooth)) / 6
    fn_expected = (1 - (1 + smooth) / (1 + beta * 1 + smooth)) / 6
    assert loss(hard_logits([2, 2, 0, 2]), target).item() == pytest.approx(fp_expected, rel=1e-5)
    assert loss(hard_logits([2, 0, 0, 0]), target).item() == pytest.approx(fn_expected, rel=1e-5)


@pytest.mark.parametrize("name", ["weighted_ce", "bce"])
def test_pos_weight_emphasises_errors_inside_particles(name):
    target = hard_target([1, 0])
    miss_particle = hard_logits([0, 0])  # error at the positive voxel
    false_alarm = hard_logits([1, 1])  # error at the negative voxel
    plain, weighted = build_loss(name), build_loss(name, pos_weight=5.0)
    assert plain(miss_particle, target).item() == pytest.approx(plain(false_alarm, target).item(), rel=1e-4)
    assert weighted(miss_particle, target).item() > 2 * weighted(false_alarm, target).item()


def test_ce_tversky_is_the_weighted_sum():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 7, 3, 4, 5), torch.rand(2, 6, 3, 4, 5)
    ce = build_loss("weighted_ce", pos_weight=2.0)(logits, target)
    tv = build_loss("tversky", beta=0.9, alpha=0.1)(logits, target)
    combined = build_loss("ce_tversky", ce_weight=0.5, tversky_weight=3.0, pos_weight=2.0, alpha=0.1, beta=0.9)
    assert combined(logits, target).item() == pytest.approx(0.5 * ce.item() + 3.0 * tv.item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_are_finite_even_for_extreme_logits(name):
    torch.manual_seed(1)
    logits = (torch.randn(2, 7, 4, 4, 4) * 60).requires_grad_()
    target = torch.rand(2, 6, 4, 4, 4) * (torch.rand(2, 6, 4, 4, 4) > 0.7)
    value = build_loss(name, class_weights=[1, 0, 2, 1, 3, 1])(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name, activation", [("weighted_ce", "softmax"), ("tversky", "softmax"),
                                              ("ce_tversky", "softmax"), ("bce", "sigmoid"), ("focal", "sigmoid")])
def test_activation_attribute(name, activation):
    assert build_loss(name).activation == activation


# ---------------------------------------------------------------- errors


def test_unknown_loss_lists_registered_names():
    with pytest.raises(ConfigError, match="unknown loss 'dice'.*bce.*tversky"):
        build_loss("dice")


def test_unknown_argument_is_named():
    with pytest.raises(ConfigError, match="'gamma'.*accepted arguments: class_weights, pos_weight"):
        build_loss("bce", gamma=2.0)


@pytest.mark.parametrize("weights", [[], [1, 1, 1, 1, 1, -1], [1, 1, 1, 1, 1, float("nan")]])
def test_bad_class_weights(weights):
    with pytest.raises(ConfigError, match="class_weights"):
        build_loss("weighted_ce", class_weights=weights)


@pytest.mark.parametrize("name, args, bad", [("bce", {"pos_weight": 0.0}, "pos_weight"),
                                             ("tversky", {"alpha": -0.1}, "alpha"),
                                             ("focal", {"alpha": 1.5}, "alpha")])
def test_bad_values_are_named(name, args, bad):
    with pytest.raises(ConfigError, match=bad):
        build_loss(name, **args)


def test_shape_mismatch_says_to_use_the_output_stride():
    with pytest.raises(ConfigError, match="output_stride"):
        build_loss("bce")(torch.zeros(1, 7, 4, 4, 4), torch.zeros(1, 6, 8, 8, 8))


# ---------------------------------------------------------------- deep supervision


def test_deep_supervision_scores_coarse_outputs_against_the_pooled_target():
    loss = DeepSupervision(build_loss("weighted_ce"))
    target = torch.zeros(1, N_CLASSES, 4, 4, 4)
    target[0, 2, 1, 2, 3] = 1.0  # one particle voxel: pooled by 2 it lands in coarse voxel (0, 1, 1)
    right = torch.full((1, N_CLASSES + 1, 2, 2, 2), -BIG)
    right[:, 0] = BIG
    right[0, :, 0, 1, 1] = -BIG
    right[0, 3, 0, 1, 1] = BIG
    main = torch.zeros(1, N_CLASSES + 1, 4, 4, 4)
    assert loss(main, target).item() == build_loss("weighted_ce")(main, target).item()  # a tensor: the plain loss
    wrong = right.roll(1, dims=-1)
    assert loss((main, (right,)), target) < loss((main, (wrong,)), target)
    assert loss((main, (right,)), target).item() == pytest.approx(loss(main, target).item() / 1.5, rel=1e-5)
    coarser = torch.full((1, N_CLASSES + 1, 1, 1, 1), -BIG)
    coarser[0, 3] = BIG  # the particle's class wins the single coarsest voxel too
    assert loss((main, (right, coarser)), target).item() == pytest.approx(loss(main, target).item() / 1.75, rel=1e-5)
    assert loss((main, (right, coarser.roll(1, dims=1))), target) > loss((main, (right, coarser)), target)
    with pytest.raises(ConfigError, match="integer factor"):
        loss((main, (torch.zeros(1, N_CLASSES + 1, 2, 3, 2),)), target)
    assert loss.activation == "softmax"
