"""Recording a tilt series: what happens to each projection between the specimen and the WBP.

Per tilt, in the detector frame of ``geometry``: the projected density becomes a phase
(interaction constant x potential x path, longer by 1/cos at high tilt), the CTF at that tilt's
defocus - which changes linearly across a tilted specimen, handled with a few defocus nodes
blended across the image like strip-based CTF models - an envelope, radiation damage for the
dose received before that tilt (dose-symmetric order by default), a small tilt-angle error,
residual alignment shifts, a tilt-axis error, the detector's band limit, and shot noise for the
electrons that cross the ice unscattered. Then the R-weighting (|k_u| times the tilt's angular
share) of weighted back-projection. Everything stays in Fourier space but the defocus blend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from czii_kit.data.synth import geometry, optics
from czii_kit.data.synth.config import SynthConfig
from czii_kit.particles import VOXEL_SPACING

PROTEIN_POTENTIAL_V = 5.8  # mean inner potential of protein (relative density 1); ice (0.69) is then ~4 V
INELASTIC_MFP = 3500.0  # Å, inelastic mean free path in vitreous ice at 300 kV (energy filter removes those)
DQE = 0.8  # detector quantum efficiency at the low frequencies a 10 Å pixel keeps
DEFOCUS_STEP = 1000.0  # Å between defocus nodes across a tilted image


@dataclass(frozen=True)
class Acquisition:
    """One run's tilt series as collected; per-tilt arrays are in ascending angle order."""

    angles: np.ndarray  # nominal tilt angles (degrees): what the reconstruction assumes
    order: np.ndarray  # indices of ``angles`` in collection order
    angle_errors: np.ndarray  # degrees: true angle = nominal + error
    defocus: np.ndarray  # Å underfocus at the tilt axis
    shifts: np.ndarray  # (tilt, 2) residual alignment shifts along x' and y, Å
    axis_error: float  # degrees: in-plane rotation of the true tilt axis away from y
    dose: np.ndarray  # e/Å^2 per tilt
    bfactor: float  # Å^2
    ice_thickness: float  # Å
    gain: float  # the run's value scale relative to TARGET_STD (real runs differ a little)

    @property
    def prior_dose(self) -> np.ndarray:
        return geometry.prior_dose(self.order, self.dose)

    def summary(self) -> dict:
        """JSON-friendly record for synthetic.json."""
        return {"tilt_range_deg": [float(self.angles[0]), float(self.angles[-1])], "n_tilts": len(self.angles),
                "order": [float(a) for a in self.angles[self.order]], "defocus_um": round(self.defocus.mean() / 1e4, 3),
                "axis_error_deg": round(self.axis_error, 3), "dose": round(float(self.dose.sum()), 1),
                "bfactor": round(self.bfactor, 1), "ice_thickness_nm": round(self.ice_thickness / 10, 1),
                "gain": round(self.gain, 4)}


def sample_acquisition(cfg: SynthConfig, rng: np.random.Generator, ice_thickness: float) -> Acquisition:
    """Draw one run's tilt range, defocus, errors, envelope and scale from their configured ranges."""
    step = cfg.tilt_step_deg
    tilt_max = max(step * round(rng.uniform(*cfg.tilt_max_deg) / step), step)  # the nearest whole step
    angles = geometry.tilt_angles(-tilt_max, tilt_max, step)
    n = len(angles)
    defocus = rng.uniform(*cfg.defocus_um) * 1e4 + rng.normal(0, cfg.defocus_jitter_um * 1e4, n)
    return Acquisition(
        angles=angles, order=geometry.acquisition_order(angles, cfg.tilt_scheme),
        angle_errors=rng.normal(0, cfg.tilt_angle_error_deg, n), defocus=np.maximum(defocus, 0.0),
        shifts=rng.normal(0, cfg.shift_error_angstrom, (n, 2)),
        axis_error=float(rng.normal(0, cfg.tilt_axis_error_deg)),
        dose=np.full(n, cfg.dose / n), bfactor=float(rng.uniform(*cfg.bfactor)), ice_thickness=float(ice_thickness),
        gain=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))))


def shot_noise_std(acq: Acquisition, cfg: SynthConfig, tilt: int) -> float:
    """Std of the image contrast per detector pixel: 1/sqrt(unscattered electrons counted)."""
    cos = np.cos(np.radians(acq.angles[tilt]))
    electrons = acq.dose[tilt] * VOXEL_SPACING ** 2 * DQE * np.exp(-acq.ice_thickness / (INELASTIC_MFP * cos))
    return cfg.noise / np.sqrt(electrons)


def _wbp_weight(kx: np.ndarray, angle: float, share: float) -> np.ndarray:
    """R-weighting of one tilt in the x' frame (|k_u| = |kx| / cos) times its angular share, within the
    detector's band (|k_u| <= Nyquist); (kx, 1) float32."""
    cos = np.cos(np.radians(angle))
    return (np.abs(kx) * np.float32(share / cos) * (np.abs(kx) <= 0.5 * cos))[:, None].astype(np.float32)


def _white(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Spectrum (unnormalised rfft2) of white noise with the given per-sample std; layout (x', y)."""
    return scipy.fft.rfft2(rng.standard_normal(shape, dtype=np.float32) * np.float32(std), workers=-1)


def _noise_spectrum(rng, acq, cfg, shape, tilt: int) -> np.ndarray:
    """Shot noise of one tilt: white per detector pixel, i.e. std/sqrt(cos) per x' sample before the band limit."""
    _, ny, nx = shape
    std = shot_noise_std(acq, cfg, tilt) / np.sqrt(np.cos(np.radians(acq.angles[tilt])))
    return _white(rng, (nx, ny), std)


def _defocus_blend(spectrum: np.ndarray, k2: np.ndarray, acq: Acquisition, cfg: SynthConfig, tilt: int,
                   theta: float, x_rel: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """CTF with the defocus gradient across the tilted image, plus the x'-dependent part of the
    tilt-axis error (a y shear), applied in the (x', ky) domain; returns the (kx, ky) spectrum."""
    ctf = dict(voltage_kv=cfg.voltage_kv, cs_mm=cfg.cs_mm, amplitude_contrast=cfg.amplitude_contrast)
    defocus = acq.defocus[tilt] + x_rel * VOXEL_SPACING * np.sin(theta)  # Å along x'
    lo, hi = defocus.min(), defocus.max()
    n_nodes = 1 + int(np.ceil((hi - lo) / DEFOCUS_STEP))
    shear = np.radians(acq.axis_error) * (1 - np.cos(theta)) * x_rel
    if n_nodes == 1 and not shear.any():
        return spectrum * optics.ctf(k2, float(acq.defocus[tilt]), **ctf)
    nodes = np.linspace(lo, hi, n_nodes)
    step = max(nodes[1] - nodes[0], 1e-9) if n_nodes > 1 else 1.0
    mixed = np.zeros(spectrum.shape, dtype=np.complex64)
    for node in nodes:
        weight = np.clip(1 - np.abs(defocus - node) / step, 0, 1).astype(np.float32)[:, None]
        mixed += weight * scipy.fft.ifft(spectrum * optics.ctf(k2, float(node), **ctf), axis=0, workers=-1)
    if shear.any():
        mixed *= np.exp(-2j * np.pi * shear[:, None] * ky[None, :]).astype(np.complex64)
    return scipy.fft.fft(mixed, axis=0, workers=-1)


def record(sheared: np.ndarray, acq: Acquisition, cfg: SynthConfig, shape, rng: np.random.Generator) -> np.ndarray:
    """Weighted, noisy images of every tilt from the sheared sums of ``geometry.project``: (kx, tilt, ky)."""
    _, ny, nx = shape
    kx, ky = geometry.frequencies(shape)
    x_rel = np.arange(nx) - (nx - 1) / 2
    phase_per_voxel = optics.interaction_constant(cfg.voltage_kv) * PROTEIN_POTENTIAL_V * VOXEL_SPACING
    shares = geometry.angular_weights(acq.angles)
    out = np.empty(sheared.shape, dtype=np.complex64)
    for t in range(len(acq.angles)):
        theta = np.radians(acq.angles[t] + acq.angle_errors[t])
        cos = np.cos(theta)
        k2 = ((kx / cos)[:, None] ** 2 + ky[None, :] ** 2) / np.float32(VOXEL_SPACING ** 2)  # (1/Å)^2 on the detector
        sx, sy = acq.shifts[t] / VOXEL_SPACING
        signal = sheared[:, t, :] * (np.float32(2 * phase_per_voxel / cos) * optics.envelope(k2, acq.bfactor)
                                     * optics.exposure_filter(np.sqrt(k2), acq.prior_dose[t]))
        signal *= np.exp(-2j * np.pi * (sx * kx[:, None] + sy * ky[None, :])).astype(np.complex64)
        image = _defocus_blend(signal, k2, acq, cfg, t, theta, x_rel, ky)
        if cfg.noise:
            image += _noise_spectrum(rng, acq, cfg, shape, t)
        out[:, t, :] = image * _wbp_weight(kx, acq.angles[t], shares[t])
    return out


def record_split_noise(acq: Acquisition, cfg: SynthConfig, shape, rng: np.random.Generator,
                       rows: np.ndarray) -> np.ndarray:
    """Weighted images of pure shot noise with the statistics of ``record``'s, for kx rows ``rows``.

    Stands for the difference of the even- and odd-frame half series (their signal cancels; their
    noise has the full series' power): what a Noise2Noise-style denoiser learns the noise from.
    """
    kx, _ = geometry.frequencies(shape)
    shares = geometry.angular_weights(acq.angles)
    out = np.zeros((len(rows), len(acq.angles), shape[1] // 2 + 1), dtype=np.complex64)
    if cfg.noise:
        for t in range(len(acq.angles)):
            out[:, t, :] = _noise_spectrum(rng, acq, cfg, shape, t)[rows] * _wbp_weight(kx[rows], acq.angles[t],
                                                                                       shares[t])
    return out
