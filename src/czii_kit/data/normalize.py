"""Tomogram normalization, identical at training and inference (stored in checkpoints).

robust_zscore: (x - median) / (IQR / 1.349), statistics from a strided subsample so a
full 184x630x630 volume costs ~0.1 s, then clipped to +-clip. Per tomogram, so the raw
scale (~1e-5 on the real data) and per-run contrast differences do not matter.
"""
from __future__ import annotations

import numpy as np

from czii_kit.errors import ConfigError, DataError

METHODS = ("robust_zscore",)


def normalize_volume(vol: np.ndarray, method: str = "robust_zscore", clip: float = 6.0,
                     subsample: int = 4, name: str = "volume") -> np.ndarray:
    if method not in METHODS:
        raise ConfigError(f"unknown normalize.method {method!r}; expected one of {', '.join(METHODS)}")
    sample = vol[::subsample, ::subsample, ::subsample]
    if not np.isfinite(sample).all() or not np.isfinite(vol).all():
        bad = int((~np.isfinite(vol)).sum())
        raise DataError(f"{name} contains {bad} NaN/inf voxels; repair the tomogram (e.g. np.nan_to_num) before use")
    lo, med, hi = np.percentile(sample, [25, 50, 75])
    scale = (hi - lo) / 1.349
    if not scale > 0:
        raise DataError(f"{name} is constant (interquartile range 0); it holds no image")
    out = (vol - np.float32(med)) * np.float32(1.0 / scale)
    np.clip(out, -clip, clip, out=out)
    return out.astype(np.float32, copy=False)


def normalize_from_config(vol: np.ndarray, norm_cfg: dict, name: str = "volume") -> np.ndarray:
    return normalize_volume(vol, norm_cfg["method"], norm_cfg["clip"], norm_cfg["subsample"], name)
