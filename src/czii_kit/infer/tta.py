"""Test-time augmentation: flips on any axis and 90-degree rotations in the y-x plane.

A transform is applied to a window batch before the engine and inverted on the engine's
output, so TTA composes with the sliding window and blending. Rotations never mix z: the
missing wedge makes tomograms anisotropic along z, so only y-x rotations are symmetries.
Flips and rotations commute with a stride-s output grid as long as every window size is a
multiple of s (the sliding window checks that).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from czii_kit.errors import ConfigError

AXIS_LETTERS = "zyx"  # spatial axis 0, 1, 2 of a (B, C, Z, Y, X) tensor
ROTATIONS = {"rot90": 1, "rot180": 2, "rot270": 3}
PRESETS = ("none", "flips", "full")
_SPATIAL = 2  # index of the first spatial dimension in (B, C, Z, Y, X)
_YX_DIMS = (_SPATIAL + 1, _SPATIAL + 2)


@dataclass(frozen=True)
class Transform:
    """Flip the listed spatial axes (0=z, 1=y, 2=x), then rotate y->x by ``rot90_k`` quarter turns."""

    flips: tuple[int, ...] = ()
    rot90_k: int = 0

    def __post_init__(self) -> None:
        flips = tuple(sorted(set(self.flips)))
        if any(axis not in (0, 1, 2) for axis in flips):
            raise ConfigError(f"flip axes must be among 0 (z), 1 (y), 2 (x); got {self.flips}")
        object.__setattr__(self, "flips", flips)
        object.__setattr__(self, "rot90_k", self.rot90_k % 4)

    @property
    def name(self) -> str:
        """The token that parses back to this transform, e.g. 'id', 'zy', 'x+rot90'."""
        parts = ["".join(AXIS_LETTERS[a] for a in self.flips)] if self.flips else []
        if self.rot90_k:
            parts.append(f"rot{90 * self.rot90_k}")
        return "+".join(parts) or "id"

    @property
    def is_identity(self) -> bool:
        return not self.flips and not self.rot90_k

    @property
    def swaps_yx(self) -> bool:
        """True when the transform needs equal y and x sizes (odd quarter turns)."""
        return self.rot90_k % 2 == 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a (B, C, Z, Y, X) batch."""
        if self.flips:
            x = torch.flip(x, dims=[_SPATIAL + a for a in self.flips])
        if self.rot90_k:
            x = torch.rot90(x, self.rot90_k, dims=_YX_DIMS)
        return x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Undo ``apply`` on a (B, C, Z', Y', X') output (same or strided grid)."""
        if self.rot90_k:
            y = torch.rot90(y, -self.rot90_k, dims=_YX_DIMS)
        if self.flips:
            y = torch.flip(y, dims=[_SPATIAL + a for a in self.flips])
        return y


IDENTITY = Transform()


def _all_flip_sets() -> list[tuple[int, ...]]:
    """The 8 subsets of {z, y, x}, identity first."""
    return [tuple(a for a in range(3) if mask >> a & 1) for mask in range(8)]


def _preset(name: str) -> list[Transform]:
    if name == "none":
        return [IDENTITY]
    if name == "flips":
        return [IDENTITY] + [Transform((axis,)) for axis in range(3)]
    return [Transform(flips, k) for k in (0, 1) for flips in _all_flip_sets()]


def _valid_tokens_text() -> str:
    return (
        f"presets {', '.join(PRESETS)}; or a comma list of tokens: 'id', flip axes as letters "
        f"from 'zyx' (e.g. z, zy, zyx), {', '.join(ROTATIONS)}, or flips+rotation (e.g. x+rot90)"
    )


def _parse_token(token: str) -> Transform:
    """One token such as 'id', 'zy', 'rot270' or 'x+rot90'."""
    flips: list[int] = []
    rot90_k = 0
    for part in token.split("+"):
        if part in ("id", "identity"):
            continue
        if part in ROTATIONS:
            rot90_k += ROTATIONS[part]
        elif part and set(part) <= set(AXIS_LETTERS) and len(set(part)) == len(part):
            flips.extend(AXIS_LETTERS.index(letter) for letter in part)
        else:
            raise ConfigError(f"unknown TTA token {token!r}; valid: {_valid_tokens_text()}")
    return Transform(tuple(flips), rot90_k)


def parse_tta(spec: str | Sequence[str]) -> list[Transform]:
    """'none' | 'flips' | 'full' | 'id,z,y,x,zy,rot90,x+rot90' (or a list of tokens) -> transforms.

    Duplicates are dropped (order kept) so no view is counted twice in the average.
    """
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    tokens = [t.strip().lower() for t in tokens if t.strip()]
    if not tokens:
        raise ConfigError(f"empty TTA spec {spec!r}; valid: {_valid_tokens_text()}")
    transforms: list[Transform] = []
    for token in tokens:
        for transform in _preset(token) if token in PRESETS else [_parse_token(token)]:
            if transform not in transforms:
                transforms.append(transform)
    return transforms


def check_tta_window(transforms: Sequence[Transform], window: Sequence[int]) -> None:
    """Fail at planning time when a 90/270-degree rotation meets a non-square y-x window."""
    rotating = [t.name for t in transforms if t.swaps_yx]
    if rotating and window[1] != window[2]:
        raise ConfigError(
            f"TTA {', '.join(rotating)} rotates y and x, which needs equal y and x window sizes, "
            f"but the window is {tuple(window)}; use a square y-x window or drop the rotations "
            f"(e.g. --tta flips)"
        )
