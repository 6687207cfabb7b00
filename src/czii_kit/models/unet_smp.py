"""3D U-Net from segmentation-models-pytorch-3d with a selectable encoder, random init only.

Built from the library's own parts (encoder, UnetDecoder, SegmentationHead) under the same
attribute names as ``smp.Unet``, so a stride-1 state dict loads into ``smp.Unet`` and back.
Composing instead of calling ``smp.Unet`` fixes two things the 1.0.2 class cannot do:
  - output_stride=2 by building one decoder stage fewer: the skipped stage is the
    full-resolution one, the most expensive of all (the first-place team's choice);
  - encoder_depth 3 or 4 with resnet-type encoders (``smp.Unet`` crashes: the ResNet encoder
    indexes five strides while the decoder insists on ``encoder_depth`` of them). The encoder
    still holds its unused deeper stages then (library behaviour): they never get gradients.
segmentation_models_pytorch_3d is imported lazily: it takes seconds and pulls in timm.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from czii_kit.errors import ConfigError
from czii_kit.models.activation import init_class_prior
from czii_kit.models.registry import check_forward_input, register_model

# Encoder families verified to build and run with the library's default isotropic strides and
# in_channels=1 (probe of all 124 names at 32^3). The rest are broken in 1.0.2: "timm-*",
# se_*/senet154, inception*, xception and mobilenet_v2 reject the ``strides`` argument the
# library itself passes, timm-mobilenetv3 crashes patching the first conv, mit_* need 3 channels.
VERIFIED_ENCODER_PREFIXES: tuple[str, ...] = (
    "resnet", "resnext", "efficientnet-b", "densenet", "dpn", "vgg", "mobileone"
)
FULL_DEPTH_STRIDES = ((2, 2, 2),) * 5  # the encoders always build five stages, whatever the depth
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp.Unet's default, deepest stage first


def import_smp():
    """The library and its UnetDecoder, imported on first use, muting timm's torch.jit deprecation noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import segmentation_models_pytorch_3d as smp
        from segmentation_models_pytorch_3d.decoders.unet.decoder import UnetDecoder
    return smp, UnetDecoder


def check_encoder_name(encoder_name: str, known_names: Sequence[str]) -> None:
    """Raise ConfigError for encoders that are unknown or broken in segmentation-models-pytorch-3d 1.0.2."""
    verified = [n for n in known_names if n.startswith(VERIFIED_ENCODER_PREFIXES)]
    if encoder_name.startswith("timm-"):
        raise ConfigError(
            f"unet_smp encoder_name={encoder_name!r}: the timm-* encoders are broken in segmentation-models-pytorch-3d "
            f"1.0.2 (their constructors reject the strides argument); use e.g. resnet34 or efficientnet-b3"
        )
    if encoder_name in known_names and encoder_name not in verified:
        raise ConfigError(
            f"unet_smp encoder_name={encoder_name!r} is broken in segmentation-models-pytorch-3d 1.0.2 with one "
            f"input channel and 3D strides; use one of: {', '.join(verified)}"
        )
    if encoder_name not in verified:
        raise ConfigError(f"unet_smp: unknown encoder_name={encoder_name!r}; use one of: {', '.join(verified)}")


def check_isotropic(strides: Sequence[Sequence[int]] | None) -> None:
    """Only the default (2, 2, 2) strides are supported; anything else gets a clear refusal."""
    if strides is not None and any(tuple(s) != (2, 2, 2) for s in strides):
        raise ConfigError(
            f"unet_smp strides={strides}: anisotropic strides are not supported (in segmentation-models-pytorch-3d "
            f"1.0.2 efficientnet encoders crash on them, and input_multiple is one number for all axes); "
            f"remove 'strides' and use a patch whose sizes are multiples of 2**encoder_depth"
        )


@register_model("unet_smp")
class UnetSMP(nn.Module):
    """U-Net with an smp-3d encoder; logits at 1/output_stride of the input resolution."""

    encoder_prefixes = ("encoder.",)  # what fine-tuning may freeze or slow down
    class_heads = ("segmentation_head.",)  # parameters whose first axis is the class channels (background first)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 7,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] | None = None,
        output_stride: int = 1,
        encoder_weights: None = None,
        strides: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        smp, UnetDecoder = import_smp()

        if encoder_weights is not None:
            raise ConfigError(
                f"unet_smp encoder_weights={encoder_weights!r}: pretrained weights would be downloaded at run time "
                f"(no internet on Kaggle, and they are 2D ImageNet weights); remove encoder_weights and start from "
                f"random init or load a czii-kit checkpoint"
            )
        check_isotropic(strides)
        check_encoder_name(encoder_name, smp.encoders.get_encoder_names())
        if encoder_depth not in (3, 4, 5):
            raise ConfigError(f"unet_smp encoder_depth={encoder_depth}: use 3, 4 or 5")
        if output_stride not in (1, 2):
            raise ConfigError(f"unet_smp output_stride={output_stride}: use 1 (full resolution) or 2 (half)")
        n_stages = encoder_depth - (output_stride - 1)  # stride 2 drops the last, full-resolution stage
        if decoder_channels is None:
            decoder_channels = DEFAULT_DECODER_CHANNELS[:n_stages]
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) != n_stages or min(decoder_channels) < 1:
            raise ConfigError(
                f"unet_smp decoder_channels={decoder_channels}: give {n_stages} positive channel counts "
                f"(encoder_depth={encoder_depth} with output_stride={output_stride}), deepest first"
            )
        self.output_stride = output_stride
        self.input_multiple = 2**encoder_depth

        self.encoder = smp.encoders.get_encoder(
            encoder_name, in_channels=in_channels, depth=encoder_depth, weights=None, strides=FULL_DEPTH_STRIDES
        )
        self.decoder = UnetDecoder(
            encoder_channels=self.encoder.out_channels,
            decoder_channels=decoder_channels,
            n_blocks=n_stages,
            center=encoder_name.startswith("vgg"),
            strides=((2, 2, 2),) * n_stages,
        )
        self.segmentation_head = smp.base.SegmentationHead(decoder_channels[-1], num_classes, kernel_size=3)
        init_class_prior(self.segmentation_head[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_forward_input(self, x)
        return self.segmentation_head(self.decoder(*self.encoder(x)))
