"""Pure-torch residual 3D U-Net in the DeepFindET style (small, CPU-trainable, ONNX-friendly).

Layout for filters [f0, f1, f2] and output_stride s:
    stem   conv(stride s) + residual block          -> f0 at 1/s
    down   maxpool 2 + residual block, per level     -> f1 at 1/2s, f2 at 1/4s
    up     transposed conv 2 + concat skip + block   -> back to f0 at 1/s
    head   1x1 conv -> num_classes logits at 1/s
    aux    (deep_supervision) 1x1 conv on each coarser decoder level: logits at 1/2s, 1/4s, ... returned
           next to the main logits in training mode only, so inference and exports never see them
With s=2 the stem's strided conv replaces the whole full-resolution level, so a stride-2
model costs about 1/8 of the stride-1 one at the first level.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from czii_kit.errors import ConfigError
from czii_kit.models.activation import init_class_prior
from czii_kit.models.registry import check_forward_input, register_model

LEAKY_SLOPE = 0.01


def conv_bn_act(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3x3 conv (no bias: BN follows) + BatchNorm + LeakyReLU."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(out_ch),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3x3 conv+BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(in_ch, out_ch),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv3d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(out_ch),
        )
        self.shortcut = (
            nn.Identity()
            if in_ch == out_ch
            else nn.Sequential(nn.Conv3d(in_ch, out_ch, kernel_size=1, bias=False), nn.BatchNorm3d(out_ch))
        )
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class UpBlock(nn.Module):
    """Upsample x2 with a transposed conv, concatenate the skip, fuse with a residual block."""

    def __init__(self, in_ch: int, skip_ch: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_ch, skip_ch, kernel_size=2, stride=2)
        self.fuse = ResidualBlock(2 * skip_ch, skip_ch, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


@register_model("resunet")
class ResUNet(nn.Module):
    """Residual U-Net; one level per entry of ``filters`` (default DeepFindET's [48, 64, 80])."""

    encoder_prefixes = ("stem.", "down.")  # what fine-tuning may freeze or slow down
    class_heads = ("head.", "aux_heads.")  # parameters whose first axis is the class channels (background first)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 7,
        filters: Sequence[int] = (48, 64, 80),
        dropout: float = 0.0,
        output_stride: int = 1,
        deep_supervision: bool = False,
    ):
        super().__init__()
        filters = [int(f) for f in filters]
        if len(filters) < 2 or min(filters) < 1:
            raise ConfigError(f"resunet filters={filters}: give two or more positive channel counts, e.g. [16, 24, 32]")
        if output_stride not in (1, 2):
            raise ConfigError(f"resunet output_stride={output_stride}: use 1 (full resolution) or 2 (half)")
        if deep_supervision and len(filters) < 3:
            raise ConfigError(f"resunet deep_supervision needs a decoder level above the output: give three or more "
                              f"filters (got {filters}), or set deep_supervision to false")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"resunet dropout={dropout}: use a probability in [0, 1)")
        self.output_stride = output_stride
        self.input_multiple = output_stride * 2 ** (len(filters) - 1)

        self.stem = nn.Sequential(
            conv_bn_act(in_channels, filters[0], stride=output_stride), ResidualBlock(filters[0], filters[0])
        )
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool3d(2), ResidualBlock(c_in, c_out, dropout))
            for c_in, c_out in zip(filters[:-1], filters[1:])
        )
        self.up = nn.ModuleList(
            UpBlock(c_deep, c_skip, dropout) for c_deep, c_skip in zip(filters[:0:-1], filters[-2::-1])
        )
        self.head = nn.Conv3d(filters[0], num_classes, kernel_size=1)
        init_class_prior(self.head)
        # one head per decoder level coarser than the output, finest first (1/2s, 1/4s, ...)
        self.aux_heads = nn.ModuleList(nn.Conv3d(c, num_classes, kernel_size=1) for c in filters[1:-1]) \
            if deep_supervision else nn.ModuleList()
        for head in self.aux_heads:
            init_class_prior(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits at 1/s; in training mode with deep supervision, (logits, auxiliary logits finest first)."""
        check_forward_input(self, x)
        skips = [self.stem(x)]
        for level in self.down:
            skips.append(level(skips[-1]))
        supervise = self.training and len(self.aux_heads) > 0
        x, decoded = skips.pop(), []
        for block in self.up:
            x = block(x, skips.pop())
            if supervise:
                decoded.append(x)
        logits = self.head(x)
        if not supervise:
            return logits
        coarser = decoded[-2::-1]  # decoder levels above the output, finest first
        return logits, tuple(head(level) for head, level in zip(self.aux_heads, coarser))
