"""Model registry, shapes/strides, input checks, encoder guards, probabilities and ONNX parity."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from czii_kit.errors import ConfigError
from czii_kit.models import MODELS, ProbabilityModel, build_model, check_input_shape, probabilities, register_model

SMALL_RESUNET = {"filters": [8, 12, 16]}


@pytest.fixture(autouse=True)
def two_threads():
    torch.set_num_threads(2)


def forward(model: torch.nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model.eval()(torch.randn(*shape))


# ---------------------------------------------------------------- registry


def test_unknown_model_lists_registered_names():
    with pytest.raises(ConfigError, match="unknown model 'vnet'.*resunet.*unet_smp"):
        build_model("vnet")


def test_unknown_argument_is_named():
    with pytest.raises(ConfigError, match="'filter'.*accepted arguments: in_channels, num_classes, filters"):
        build_model("resunet", filter=[8, 16])


@pytest.mark.parametrize("args, bad", [({"filters": [16]}, "filters"), ({"output_stride": 4}, "output_stride"),
                                       ({"dropout": 1.0}, "dropout"),
                                       ({"filters": [8, 16], "deep_supervision": True}, "deep_supervision")])
def test_bad_resunet_values_are_named(args, bad):
    with pytest.raises(ConfigError, match=bad):
        build_model("resunet", **args)


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resunet")(torch.nn.Identity)
    assert MODELS["resunet"].__name__ == "ResUNet"


# ---------------------------------------------------------------- shapes, strides, input checks


@pytest.mark.parametrize("stride, multiple", [(1, 4), (2, 8)])
def test_resunet_shapes(stride, multiple):
    model = build_model("resunet", output_stride=stride, **SMALL_RESUNET)
    assert (model.output_stride, model.input_multiple) == (stride, multiple)
    out = forward(model, (2, 1, 16, 24, 32))
    assert out.shape == (2, 7, 16 // stride, 24 // stride, 32 // stride)


@pytest.mark.parametrize("args", [{"encoder_name": "resnet18"}, {"encoder_name": "resnet18", "output_stride": 2},
                                  {"encoder_name": "efficientnet-b0", "encoder_depth": 4, "output_stride": 2},
                                  {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}])
def test_unet_smp_shapes(args):
    model = build_model("unet_smp", **args)
    stride = args.get("output_stride", 1)
    assert (model.output_stride, model.input_multiple) == (stride, 2 ** args.get("encoder_depth", 5))
    out = forward(model, (1, 1, 32, 32, 64))
    assert out.shape == (1, 7, 32 // stride, 32 // stride, 64 // stride)


def test_unet_smp_state_dict_is_interchangeable_with_smp_unet():
    smp = pytest.importorskip("segmentation_models_pytorch_3d")
    ours = build_model("unet_smp", encoder_name="resnet18").eval()
    theirs = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=7).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_check_input_shape():
    model = build_model("resunet", **SMALL_RESUNET)  # input_multiple 4
    check_input_shape(model, (16, 96, 96))
    check_input_shape(model, (2, 1, 16, 96, 96))
    with pytest.raises(ConfigError, match=r"\(18, 96, 96\).*input_multiple=4.*\(20, 96, 96\)"):
        check_input_shape(model, (18, 96, 96))


@pytest.mark.parametrize("name, args, shape", [("resunet", SMALL_RESUNET, (1, 1, 18, 32, 32)),
                                               ("unet_smp", {"encoder_name": "resnet18"}, (1, 1, 48, 32, 32))])
def test_forward_rejects_bad_input_shape(name, args, shape):
    with pytest.raises(ConfigError, match="input_multiple"):
        forward(build_model(name, **args), shape)


def test_resunet_every_parameter_gets_a_gradient():
    model = build_model("resunet", dropout=0.1, **SMALL_RESUNET).train()
    model(torch.randn(2, 1, 8, 16, 16)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_deep_supervision_adds_coarser_outputs_in_training_only():
    model = build_model("resunet", filters=[8, 12, 16, 20], output_stride=2, deep_supervision=True)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 32, 32)
    logits, aux = model.train()(x)
    assert logits.shape == (1, 7, 8, 16, 16)
    assert [a.shape for a in aux] == [(1, 7, 4, 8, 8), (1, 7, 2, 4, 4)]  # finest first
    (logits.square().mean() + sum(a.square().mean() for a in aux)).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        plain = build_model("resunet", filters=[8, 12, 16, 20], output_stride=2).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads")})
        assert torch.equal(model(x), plain(x))  # inference: the main output only, unchanged by the extra heads


# ---------------------------------------------------------------- unet_smp guards


@pytest.mark.parametrize("encoder, message", [("timm-efficientnet-b0", "timm-\\* encoders are broken"),
                                              ("se_resnet50", "is broken"),
                                              ("mit_b0", "is broken"),
                                              ("resnet9000", "unknown encoder_name")])
def test_encoder_guard(encoder, message):
    with pytest.raises(ConfigError, match=message):
        build_model("unet_smp", encoder_name=encoder)


def test_guarded_encoders_really_are_broken_in_the_library():
    """If this starts failing, the library was fixed and the guards can be relaxed."""
    smp = pytest.importorskip("segmentation_models_pytorch_3d")
    with pytest.raises(TypeError, match="strides"):
        smp.Unet(encoder_name="timm-efficientnet-b0", encoder_weights=None, in_channels=1, classes=7)
    anisotropic = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    model = smp.Unet(encoder_name="efficientnet-b0", encoder_weights=None, in_channels=1, classes=7,
                     strides=anisotropic)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        forward(model, (1, 1, 32, 64, 64))


def test_anisotropic_strides_are_refused():
    with pytest.raises(ConfigError, match="anisotropic"):
        build_model("unet_smp", encoder_name="resnet18", strides=[(1, 2, 2)] + [(2, 2, 2)] * 4)


@pytest.mark.parametrize("weights", ["imagenet", "ssl"])
def test_encoder_weights_are_refused(weights):
    with pytest.raises(ConfigError, match="encoder_weights"):
        build_model("unet_smp", encoder_name="resnet18", encoder_weights=weights)


@pytest.mark.parametrize("args", [{"decoder_channels": [64, 32]}, {"encoder_depth": 6}])
def test_bad_unet_smp_values_are_named(args):
    with pytest.raises(ConfigError, match=next(iter(args))):
        build_model("unet_smp", encoder_name="resnet18", **args)


@pytest.mark.parametrize("name, args", [("resunet", SMALL_RESUNET), ("unet_smp", {"encoder_name": "resnet18"}),
                                        ("unet_smp", {"encoder_name": "efficientnet-b0"})])
def test_no_network_access_while_building(monkeypatch, name, args):
    def refuse(*_args, **_kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    build_model(name, **args)


# ---------------------------------------------------------------- probabilities


def test_softmax_probabilities_plus_background_sum_to_one():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 3, 4, 5) * 3
    probs = probabilities(logits, "softmax")
    background = logits[:, 0].exp() / logits.exp().sum(dim=1)
    assert probs.shape == (2, 6, 3, 4, 5)
    torch.testing.assert_close(probs.sum(dim=1) + background, torch.ones(2, 3, 4, 5))
    torch.testing.assert_close(probs[:, 2], logits[:, 3].exp() / logits.exp().sum(dim=1))


def test_sigmoid_probabilities_ignore_the_background_channel():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 3, 4, 5)
    probs = probabilities(logits, "sigmoid")
    torch.testing.assert_close(probs, 1 / (1 + torch.exp(-logits[:, 1:])))
    logits[:, 0] += 100
    torch.testing.assert_close(probabilities(logits, "sigmoid"), probs)


def test_unknown_activation():
    with pytest.raises(ConfigError, match="unknown activation 'relu'"):
        probabilities(torch.zeros(1, 7, 1, 1, 1), "relu")


def test_probability_model_wraps_stride_and_output():
    model = build_model("resunet", output_stride=2, **SMALL_RESUNET).eval()
    wrapped = ProbabilityModel(model, "sigmoid")
    assert (wrapped.output_stride, wrapped.input_multiple) == (2, 8)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), torch.sigmoid(model(x)[:, 1:]))


def test_fresh_model_starts_with_rare_foreground():
    """The head bias prior: a fresh model predicts each class well below the 1/7 of an unbiased softmax."""
    probs = forward(ProbabilityModel(build_model("resunet", **SMALL_RESUNET), "softmax"), (1, 1, 16, 16, 16))
    assert probs.mean() < 0.03


# ---------------------------------------------------------------- ONNX


def onnx_max_abs_diff(model: torch.nn.Module, shape: tuple[int, ...], tmp_path) -> float:
    ort = pytest.importorskip("onnxruntime")
    model.eval()
    x = torch.randn(*shape)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ours,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        reference = model(x).numpy()
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max())


@pytest.mark.parametrize("stride", [1, 2])
def test_resunet_onnx_parity(tmp_path, stride):
    model = ProbabilityModel(build_model("resunet", output_stride=stride, dropout=0.2, **SMALL_RESUNET), "softmax")
    assert onnx_max_abs_diff(model, (1, 1, 16, 24, 32), tmp_path) < 1e-4


def test_unet_smp_onnx_parity(tmp_path):
    model = build_model("unet_smp", encoder_name="resnet18", output_stride=2)
    assert onnx_max_abs_diff(model, (1, 1, 32, 32, 32), tmp_path) < 1e-4
