"""Tilt-series geometry: tilt schemes, and exact Fourier projection / weighted back-projection about y.

The specimen is tilted about the y axis, so each y row of the volume is an independent 2-D
problem in (z, x). A projection at tilt theta, in the frame x' = x - z tan(theta) that the
detector sees stretched by 1/cos(theta), is a sum over z of rows shifted by z tan(theta):

    S_theta(x', y) = sum_z V(z, y, x' + (z - zc) tan theta)

After one FFT of the volume over x and y the shifts are phase factors, so projecting all tilts
is one batched complex matrix product per kx, (tilts x z) @ (z x ky), and back-projection is its
adjoint. This is the Fourier-slice theorem evaluated exactly (trigonometric interpolation, no
gridding): exact for a volume band-limited in z and periodic in x, i.e. a laterally periodic
slab. Cost: two volume FFTs plus 2 x nx x ny/2 x nz x n_tilts complex multiply-adds, so it
grows linearly with the voxel count (x log) and the number of tilts.

Array layout of spectra: (kx, z, ky) complex64, kx full (``fftfreq``), ky half (``rfftfreq``), in
cycles per voxel.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from czii_kit.errors import ConfigError

_FFT = dict(workers=-1)


def tilt_angles(tilt_min: float, tilt_max: float, step: float) -> np.ndarray:
    """Ascending tilt angles in degrees: multiples of ``step`` from ``tilt_min`` to ``tilt_max`` (0 included)."""
    lo, hi = int(np.ceil(tilt_min / step - 1e-9)), int(np.floor(tilt_max / step + 1e-9))
    if hi - lo < 1:
        raise ConfigError(f"tilt range {tilt_min}..{tilt_max} with step {step} holds fewer than two tilts")
    return np.arange(lo, hi + 1) * float(step)


def acquisition_order(angles: np.ndarray, scheme: str, group: int = 2) -> np.ndarray:
    """Indices of ``angles`` in the order they are collected.

    dose-symmetric (Hagen et al. 2017): 0, then groups of ``group`` tilts alternating between the
    positive and the negative side; bidirectional: 0 to one end, then the other side from 0;
    unidirectional: one end to the other.
    """
    angles = np.asarray(angles, dtype=float)
    start = int(np.argmin(np.abs(angles)))
    up, down = list(range(start + 1, len(angles))), list(range(start - 1, -1, -1))
    if scheme == "unidirectional":
        return np.arange(len(angles))
    if scheme == "bidirectional":
        return np.array([start, *up, *down])
    if scheme != "dose-symmetric":
        raise ConfigError(f"unknown tilt scheme {scheme!r}; choose dose-symmetric, bidirectional or unidirectional")
    order, sides = [start], [up, down]
    side = 0
    while up or down:
        take = sides[side] if sides[side] else sides[1 - side]
        order += take[:group]
        del take[:group]
        side = 1 - side
    return np.array(order)


def prior_dose(order: np.ndarray, dose_per_tilt: np.ndarray) -> np.ndarray:
    """Per tilt (in angle order): the dose received before it plus half its own, e/Å^2."""
    dose_per_tilt = np.broadcast_to(np.asarray(dose_per_tilt, dtype=float), order.shape)
    collected = dose_per_tilt[order]
    before = np.cumsum(collected) - collected / 2
    out = np.empty(len(order))
    out[order] = before
    return out


def angular_weights(angles_deg: np.ndarray) -> np.ndarray:
    """Radians each tilt stands for (half the gaps to its neighbours; a full step at the ends)."""
    rad = np.radians(np.asarray(angles_deg, dtype=float))
    gaps = np.diff(rad)
    return np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]]) if len(rad) > 1 else np.array([np.pi])


# --------------------------------------------------------------------------- spectra
def frequencies(shape) -> tuple[np.ndarray, np.ndarray]:
    """kx (full) and ky (half) in cycles/voxel for a (z, y, x) volume, float32."""
    nz, ny, nx = shape
    return scipy.fft.fftfreq(nx).astype(np.float32), scipy.fft.rfftfreq(ny).astype(np.float32)


def to_spectrum(volume: np.ndarray) -> np.ndarray:
    """(z, y, x) float volume -> (kx, z, ky) complex64 spectrum over x and y."""
    xzy = np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 0, 1))
    return scipy.fft.rfft2(xzy, axes=(0, 2), **_FFT)


def from_spectrum(spectrum: np.ndarray, shape) -> np.ndarray:
    """(kx, z, ky) spectrum -> (z, y, x) float32 volume."""
    nz, ny, nx = shape
    xzy = scipy.fft.irfft2(spectrum, s=(nx, ny), axes=(0, 2), **_FFT)
    return np.ascontiguousarray(xzy.astype(np.float32, copy=False).transpose(1, 2, 0))


def _phases(kx: np.ndarray, z_rel: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """(kx, tilt, z) complex64: exp(2 pi i kx z tan theta), the shift of row z at each tilt."""
    shift = z_rel[None, :] * np.tan(np.radians(angles_deg))[:, None]  # (tilt, z)
    return np.exp(2j * np.pi * kx[:, None, None].astype(np.float64) * shift[None]).astype(np.complex64)


def project(spectrum: np.ndarray, angles_deg: np.ndarray, z_rel: np.ndarray, ky: np.ndarray | None = None,
            axis_error: float = 0.0, max_step: float = 0.2) -> np.ndarray:
    """Sheared sums S_theta of a (kx, z, ky) spectrum: (kx, tilt, ky) complex64 (no 1/cos, no band limit).

    ``axis_error`` (radians): the true tilt axis is rotated in the x-y plane, which moves row z of
    tilt theta by axis_error z tan(theta) along y; z is split into slabs so that this shift varies
    by at most ``max_step`` voxels within one (each slab gets its own phase).
    """
    kx = scipy.fft.fftfreq(spectrum.shape[0]).astype(np.float32)
    tan = np.tan(np.radians(angles_deg))
    spread = abs(axis_error) * np.abs(tan).max() * np.ptp(z_rel)  # voxels of y shift across z
    n_slabs = int(np.clip(np.ceil(spread / max_step), 1, len(z_rel)))
    out = None
    for idx in np.array_split(np.arange(len(z_rel)), n_slabs):
        part = np.matmul(_phases(kx, z_rel[idx], angles_deg), spectrum[:, idx, :])
        if axis_error:
            shift_y = axis_error * z_rel[idx].mean() * tan  # (tilt,)
            part *= np.exp(-2j * np.pi * shift_y[:, None] * ky[None, :]).astype(np.complex64)[None]
        out = part if out is None else out.__iadd__(part)
    return out


def backproject(projections: np.ndarray, angles_deg: np.ndarray, z_rel: np.ndarray,
                kx: np.ndarray | None = None) -> np.ndarray:
    """Adjoint of ``project`` (no axis error): (kx, tilt, ky) -> (kx, z, ky) complex64; ``kx``: the
    rows' frequencies when ``projections`` holds only some rows."""
    kx = scipy.fft.fftfreq(projections.shape[0]).astype(np.float32) if kx is None else kx
    return np.matmul(_phases(kx, z_rel, angles_deg).conj().transpose(0, 2, 1), projections)
