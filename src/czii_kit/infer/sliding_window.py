"""Sliding-window inference over a whole tomogram with blended overlaps and optional TTA.

Geometry. Windows tile the volume along each axis from 0 to the end, the last one flush with
the end, evenly spaced with at least the requested overlap. Windows start on multiples of
the engine's output stride, so window k of the input maps to an exact block of the
(Z/s, Y/s, X/s) output grid. A volume smaller than the window, or whose size is not a
multiple of the stride, is padded at the high end only (so voxel i of the output is still
input voxel i*s) and the output is cropped back to ceil(Z/s) x ceil(Y/s) x ceil(X/s).
Padding is "reflect" by default (keeps local texture, so the model sees no artificial
edge); "constant" pads with 0, the mean of a normalized volume.

Blending. Each window's probabilities are multiplied by an importance map and summed; the
result is divided by the summed weights. Because the same weights enter numerator and
denominator, a constant model gives exactly that constant everywhere, for every blend.
Maps are products of per-axis profiles, each peaking at 1 and floored at MIN_AXIS_WEIGHT:
no voxel ever gets zero weight, and the product stays separable, so where two windows
share their y-x tile their relative weight along z is not flattened by a floor.

Ensembles. Several engines (fold models) run inside the same loop: a window batch is cropped
and uploaded once, each engine runs its TTA passes on it, and the weighted mean goes into one
accumulator. The result stays on the accumulator's device (a CUDA tensor on a GPU) for the
peak finder; nothing is copied to the host here.

Memory. The accumulator is float32 (C, Z/s, Y/s, X/s) plus a float32 (Z/s, Y/s, X/s)
weight sum on ``accumulate_device`` (default: the engines' device). For a 184x630x630
tomogram with 6 classes at stride 1 that is 6 x 292 MB + 292 MB ~ 2.0 GB (0.26 GB at
stride 2) -- fine on a 16 GB T4. Windows are processed ``batch_size`` at a time.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from czii_kit.config import MAX_OVERLAP
from czii_kit.errors import ConfigError, DataError
from czii_kit.infer.engines import Engine, check_window, resolve_device
from czii_kit.infer.tta import IDENTITY, Transform, check_tta_window
from czii_kit.utils.progress import progress_bar

BLENDS = ("gaussian", "border", "constant")
PAD_MODES = ("reflect", "constant")
GAUSSIAN_SIGMA_FRACTION = 1 / 8  # sigma of the importance map, as a fraction of the window
BORDER_RAMP_FRACTION = 1 / 4  # "border" blend: linear ramp over this outer fraction of the window
MIN_AXIS_WEIGHT = 1e-3  # floor of each per-axis profile (peak 1); the 3-D map's floor is its cube

Shape3 = tuple[int, int, int]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis: first 0, last ``size - window``, gaps <= window*(1-overlap).

    ``size <= window`` gives [0] (the caller pads up to the window).
    """
    _check_overlap(overlap)
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    n_gaps = math.ceil((size - window) / step)
    return [i * (size - window) // n_gaps for i in range(n_gaps + 1)]


def padded_shape(shape: Sequence[int], window: Sequence[int], stride: int) -> Shape3:
    """Smallest shape >= ``shape`` holding a whole window and a whole number of output voxels."""
    return tuple(max(w, math.ceil(n / stride) * stride) for n, w in zip(shape, window))


def window_origins(
    shape: Sequence[int], window: Sequence[int], stride: int, overlap: float
) -> list[Shape3]:
    """Input-space (z, y, x) start of every window over a volume of ``shape`` (padded as above).

    Starts are computed on the output grid so every one is a multiple of ``stride``.
    """
    window = check_window(window, stride)
    per_axis = [
        [start * stride for start in window_starts(p // stride, w // stride, overlap)]
        for p, w in zip(padded_shape(shape, window, stride), window)
    ]
    return list(itertools.product(*per_axis))


def window_work(shape: Sequence[int], window: Sequence[int], stride: int, overlap: float) -> float:
    """Voxels the tiling pushes through the network per pass, as a multiple of the volume's voxels."""
    return len(window_origins(shape, window, stride, overlap)) * math.prod(window) / math.prod(shape)


def check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ConfigError(f"unknown blend {blend!r} (infer.blend); expected one of {', '.join(BLENDS)}")


def importance_map(shape: Sequence[int], blend: str) -> torch.Tensor:
    """Per-voxel blend weight of one output window: product of per-axis profiles (float32)."""
    check_blend(blend)
    z, y, x = (_axis_profile(n, blend) for n in shape)
    return torch.from_numpy((z[:, None, None] * y[None, :, None] * x[None, None, :]).astype(np.float32))


def _axis_profile(n: int, blend: str) -> np.ndarray:
    """1-D weight profile along an axis of ``n`` output voxels: peak 1, floor MIN_AXIS_WEIGHT."""
    index = np.arange(n, dtype=np.float64)
    if blend == "gaussian":
        profile = np.exp(-0.5 * ((index - (n - 1) / 2) / (n * GAUSSIAN_SIGMA_FRACTION)) ** 2)
    elif blend == "border":
        ramp = max(1, round(n * BORDER_RAMP_FRACTION))
        profile = np.minimum(index + 1, n - index) / ramp
    else:
        profile = np.ones(n)
    return np.clip(profile / profile.max(), MIN_AXIS_WEIGHT, 1.0)


def predict_volume(
    engines: Engine | Sequence[Engine],
    volume: np.ndarray,
    weights: Sequence[float] | None = None,
    tta: Sequence[Transform] | Sequence[Sequence[Transform]] | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: str = "gaussian",
    progress: bool = False,
    accumulate_device: str | torch.device | None = None,
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """Blend the weighted mean of the engines' TTA-averaged window predictions into one
    (C, ceil(Z/s), ceil(Y/s), ceil(X/s)) float32 tensor on ``accumulate_device`` (default: the engines' device).

    Windows outside, members and TTA passes inside: each window batch is cropped and uploaded once,
    every engine runs its passes on it, and one accumulator takes the blend. ``tta`` is one list of
    transforms for every engine, or one list per engine (a time budget may give members fewer passes).
    """
    engines = [engines] if isinstance(engines, Engine) else list(engines)
    plans = _member_plans(engines, weights, tta)
    first = engines[0]
    volume = _as_volume(volume)
    window, stride = tuple(first.window), int(first.stride)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    origins = window_origins(volume.shape, window, stride, overlap)
    padded = _pad_to(volume, padded_shape(volume.shape, window, stride), pad_mode)

    device = first.device if accumulate_device is None else resolve_device(accumulate_device)
    out_shape = tuple(math.ceil(n / stride) for n in volume.shape)
    out_window = tuple(w // stride for w in window)
    importance = importance_map(out_window, blend).to(device)
    summed = torch.zeros((first.num_classes, *out_shape), dtype=torch.float32, device=device)
    weight_sum = torch.zeros(out_shape, dtype=torch.float32, device=device)

    n_batches = math.ceil(len(origins) / batch_size)
    for chunk in progress_bar(_chunks(origins, batch_size), total=n_batches, enabled=progress,
                              desc=f"{len(engines)} model(s) x windows", unit="batch"):
        batch = upload(_crop_batch(padded, chunk, window), first.device)
        probs = None
        for engine, share, transforms in plans:
            for transform in transforms:
                prob = transform.invert(engine(transform.apply(batch)))
                _check_output(engine, prob, len(chunk), out_window)
                prob = prob.to(device) * share
                probs = prob if probs is None else probs.add_(prob)
        for origin, prob in zip(chunk, probs):
            target, source = _output_slices(origin, stride, out_window, out_shape)
            summed[(slice(None), *target)].addcmul_(prob[(slice(None), *source)], importance[source])
            weight_sum[target] += importance[source]
    summed /= weight_sum
    return summed


def upload(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch of windows onto ``device``: on a GPU through pinned memory without blocking the host, so the
    next batch is cropped while this one computes (torch's pinned-memory allocator keeps the buffer until the
    copy is done); on the CPU as it is."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


def _member_plans(engines: Sequence[Engine], weights, tta) -> list[tuple[Engine, float, list[Transform]]]:
    """(engine, share of the mean per pass, transforms) per engine; members must agree on the output grid."""
    if not engines:
        raise ConfigError("predict_volume needs at least one engine")
    weights = [1.0] * len(engines) if weights is None else [float(w) for w in weights]
    if not tta or isinstance(tta[0], Transform):
        per_engine = [list(tta) if tta else [IDENTITY]] * len(engines)
    else:
        per_engine = [list(t) if t else [IDENTITY] for t in tta]
    if len(weights) != len(engines) or len(per_engine) != len(engines):
        raise ConfigError(f"got {len(engines)} engines, {len(weights)} weights and {len(per_engine)} TTA lists; "
                          "give one of each per engine")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"ensemble weights must be positive numbers, got {weights}")
    first = engines[0]
    for engine in engines[1:]:
        for name in ("window", "stride", "num_classes", "device"):
            if getattr(engine, name) != getattr(first, name):
                raise ConfigError(
                    f"engines {first.name} and {engine.name} cannot be averaged in one window loop: {name} "
                    f"differs ({getattr(first, name)} vs {getattr(engine, name)}); use one window, stride, "
                    "class list and device for every member")
    for transforms in per_engine:
        check_tta_window(transforms, first.window)
    total = sum(weights)
    return [(engine, w / total / len(transforms), transforms)
            for engine, w, transforms in zip(engines, weights, per_engine)]


def _output_slices(
    origin: Shape3, stride: int, out_window: Shape3, out_shape: Shape3
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(accumulator slices, window slices) of one window, cropped to the unpadded output."""
    target, source = [], []
    for start, w, n in zip(origin, out_window, out_shape):
        begin = start // stride
        length = min(w, n - begin)
        target.append(slice(begin, begin + length))
        source.append(slice(0, length))
    return tuple(target), tuple(source)


def _crop_batch(volume: np.ndarray, origins: Sequence[Shape3], window: Shape3) -> torch.Tensor:
    crops = [volume[z:z + window[0], y:y + window[1], x:x + window[2]] for z, y, x in origins]
    return torch.from_numpy(np.stack(crops)[:, None])


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for begin in range(0, len(items), size):
        yield items[begin:begin + size]


def _pad_to(volume: np.ndarray, shape: Shape3, mode: str) -> np.ndarray:
    """Pad at the high end of each axis up to ``shape`` (no copy when nothing to pad)."""
    if mode not in PAD_MODES:
        raise ConfigError(f"unknown pad mode {mode!r}; expected one of {', '.join(PAD_MODES)}")
    widths = [(0, target - n) for n, target in zip(volume.shape, shape)]
    if not any(after for _, after in widths):
        return volume
    return np.pad(volume, widths, mode=mode)


def _as_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise DataError(f"expected a (Z, Y, X) volume, got an array of shape {volume.shape}")
    return volume


def _check_output(engine: Engine, probs: torch.Tensor, n: int, out_window: Shape3) -> None:
    expected = (n, engine.num_classes, *out_window)
    if tuple(probs.shape) != expected:
        raise ConfigError(
            f"engine {engine.name} returned shape {tuple(probs.shape)} for {n} windows of "
            f"{tuple(engine.window)}; expected {expected} (window / stride {engine.stride}); "
            f"check the model's output_stride"
        )


def _check_overlap(overlap: float) -> None:
    if not 0 <= overlap <= MAX_OVERLAP:
        raise ConfigError(f"overlap must be in [0, {MAX_OVERLAP}], got {overlap}")
