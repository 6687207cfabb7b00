"""Electron optics: wavelength, contrast transfer, envelopes, radiation damage, and CTF deconvolution.

Conventions: spatial frequencies k in 1/Å, defocus in Å (positive = underfocus), Cs in Å. The CTF
is the weak-phase transfer -sin(chi + asin(A)), negative at low k: dense matter comes out dark,
as in the real tomograms.
"""
from __future__ import annotations

import numpy as np

ELECTRON_REST_KEV = 510.99895


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å (0.01969 Å at 300 kV)."""
    volts = voltage_kv * 1e3
    return 12.264259 / np.sqrt(volts * (1 + 0.97847572e-6 * volts))


def interaction_constant(voltage_kv: float) -> float:
    """sigma_e in rad / (V Å): phase shift per volt of potential and Å of path (6.5e-4 at 300 kV)."""
    lam = electron_wavelength(voltage_kv)
    gamma_term = (ELECTRON_REST_KEV + voltage_kv) / (2 * ELECTRON_REST_KEV + voltage_kv)
    return 2 * np.pi / (lam * voltage_kv * 1e3) * gamma_term


def ctf(k2, defocus: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float) -> np.ndarray:
    """-sin(chi(k) + asin(A)), chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4; float32 like ``k2``."""
    lam = electron_wavelength(voltage_kv)
    k2 = np.asarray(k2, dtype=np.float32)
    chi = k2 * np.float32(np.pi * lam * defocus)
    if cs_mm:
        chi -= np.float32(0.5 * np.pi * cs_mm * 1e7 * lam ** 3) * k2 * k2
    chi += np.float32(np.arcsin(amplitude_contrast))
    return np.negative(np.sin(chi, out=chi), out=chi)


def envelope(k2, bfactor: float) -> np.ndarray:
    """exp(-B k^2 / 4): everything that blurs the image (drift, partial coherence, alignment)."""
    return np.exp(np.asarray(k2, dtype=np.float32) * np.float32(-bfactor / 4))


def critical_exposure(k) -> np.ndarray:
    """Dose (e/Å^2) at which the signal at frequency k has dropped to 1/e (Grant & Grigorieff 2015)."""
    k = np.maximum(np.asarray(k, dtype=np.float32), np.float32(1e-6))
    return np.float32(0.245) * k ** np.float32(-1.665) + np.float32(2.81)


def exposure_filter(k, dose: float) -> np.ndarray:
    """Amplitude left at frequency k after ``dose`` e/Å^2 of earlier exposure: radiation damage."""
    return np.exp(np.float32(-dose / 2) / critical_exposure(k))


def deconvolution_filter(k, spacing: float, defocus: float, voltage_kv: float, cs_mm: float,
                         amplitude_contrast: float, strength: float = 1.0, falloff: float = 1.0,
                         highpass_nyquist: float = 0.02) -> np.ndarray:
    """The Wiener-like CTF deconvolution Warp and IsoNet apply to a tomogram (``ctfdeconvolved``).

    SNR model 10^(3 strength) exp(-100 falloff f / spacing) with a cosine high-pass up to
    ``highpass_nyquist``, f = k / Nyquist. Signed so low frequencies keep their sign: protein stays dark.
    """
    k = np.asarray(k, dtype=np.float32)
    f = k * np.float32(2 * spacing)
    highpass = np.float32(1) - np.cos(np.minimum(f / np.float32(highpass_nyquist), 1) * np.float32(np.pi))
    snr = np.exp(f * np.float32(-100 * falloff / spacing)) * np.float32(10 ** (3 * strength)) * highpass
    transfer = ctf(k * k, defocus, voltage_kv, cs_mm, amplitude_contrast)
    return -transfer / (transfer * transfer + 1 / (snr + np.float32(1e-6)))
