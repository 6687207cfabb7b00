"""Test-time augmentation: which of the tomogram's symmetries to average over.

The transforms are ``czii_kit.data.geometry.Transform`` (the type training augmentation uses):
applied to a window batch (B, C, Z, Y, X) before the engine and inverted on its output, so TTA
composes with the sliding window and blending. Flips and rotations commute with a stride-s
output grid as long as every window size is a multiple of s (the sliding window checks that).
"""
from __future__ import annotations

from collections.abc import Sequence

from czii_kit.data.geometry import AXIS_LETTERS, IDENTITY, Transform
from czii_kit.errors import ConfigError

__all__ = ["IDENTITY", "PRESETS", "Transform", "check_tta_window", "parse_tta"]

ROTATIONS = {"rot90": 1, "rot180": 2, "rot270": 3}
PRESETS = ("none", "flips", "full")


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
    for transform in transforms:
        transform.check_shape(window, "window")
