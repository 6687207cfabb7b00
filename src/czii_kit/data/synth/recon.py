"""From weighted projections to the four reconstructions Kaggle ships, on the real data's value scale.

- ``wbp``: the weighted back-projection itself (missing wedge, streaks, noise rising with k).
- ``ctfdeconvolved``: wbp through the Wiener-like CTF deconvolution Warp and IsoNet use
  (``optics.deconvolution_filter``) at the run's defocus.
- ``denoised``: wbp through the MMSE linear filter 1 - N/P in shells of |k| and of the angle to z,
  N measured on the even/odd noise difference: the linear, shift-invariant part of what a
  Noise2Noise denoiser (cryo-CARE, DenoisET) learns from the same split. Not its nonlinearity.
- ``isonetcorrected``: the deconvolved and denoised recon with its missing wedge filled by the
  scene's true density, passed through the transfer the measured data has at that frequency and
  scaled by ``isonet_fill``: an oracle stand-in for IsoNet's learned wedge filling (it is right
  where IsoNet is only plausible), without its network artifacts.

All four share one gain, set so that ``denoised`` has std TARGET_STD x the run's gain; wbp and
ctfdeconvolved keep more noise and come out larger, as in the real data.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from czii_kit.data.synth import geometry, optics
from czii_kit.data.synth.config import TARGET_STD, SynthConfig
from czii_kit.data.synth.tiltseries import PROTEIN_POTENTIAL_V, Acquisition
from czii_kit.particles import VOXEL_SPACING

RADIAL_BINS = 48  # shells of |k| for the denoiser's SNR (up to the corner of the spectrum)
ANGLE_BINS = 4  # and bins of |kz| / |k|: WBP noise is anisotropic
TABLE = 4096  # radial filters are tabulated on this many |k| values and looked up
K_MAX = float(np.sqrt(0.75))  # cycles/voxel at the corner of the spectrum
WEDGE_EDGE_DEG = 3.0  # the isonet fill fades in over this many degrees past the last tilt
ISONET_BOX = 64  # voxels: IsoNet learns on subtomograms this size, so it restores nothing larger
_FFT = dict(workers=-1)


class Grid:
    """The frequencies of a (kx, kz, ky) spectrum as a fine radial index (for radial filters, looked
    up from tables: no volume-sized temporaries) and (radial, angular) bins for the denoiser."""

    def __init__(self, kx: np.ndarray, kz: np.ndarray, ky: np.ndarray):
        k = np.sqrt(kx[:, None, None] ** 2 + kz[None, :, None] ** 2 + ky[None, None, :] ** 2)
        self.kx, self.kz = kx, kz
        self.index = np.minimum(k * np.float32((TABLE - 1) / K_MAX) + np.float32(0.5), TABLE - 1).astype(np.uint16)
        self.k = np.arange(TABLE) * (K_MAX / (TABLE - 1)) / VOXEL_SPACING  # 1/Å of each table entry

    def radial(self, table: np.ndarray) -> np.ndarray:
        """A radial filter given on ``self.k``, for every frequency: float32 (kx, kz, ky)."""
        return np.asarray(table, dtype=np.float32)[self.index]

    def bins(self) -> np.ndarray:
        """Flat (radial, angular) bin of every frequency, int16."""
        radial = (self.index // np.uint16(-(-TABLE // RADIAL_BINS))).astype(np.int16)
        k = self.index.astype(np.float32) * np.float32(K_MAX / (TABLE - 1))
        cos_z = np.abs(self.kz)[None, :, None] / np.maximum(k, np.float32(1e-9))
        angular = np.minimum(cos_z * ANGLE_BINS, ANGLE_BINS - 1).astype(np.int16)
        return radial * np.int16(ANGLE_BINS) + angular


def _shell_power(spectrum: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Mean |X|^2 per bin."""
    power = np.bincount(bins.ravel(), (spectrum.real ** 2 + spectrum.imag ** 2).ravel(),
                        minlength=RADIAL_BINS * ANGLE_BINS)
    count = np.bincount(bins.ravel(), minlength=RADIAL_BINS * ANGLE_BINS)
    return power / np.maximum(count, 1)


def wiener_denoiser(recon: np.ndarray, split: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Per-bin gain max(0, 1 - N/P) from a recon's and its noise split's 3-D spectra (``Grid.bins`` of their rows)."""
    signal_plus_noise, noise = _shell_power(recon, bins), _shell_power(split, bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(signal_plus_noise > 0, 1 - noise / signal_plus_noise, 0.0)
    return np.clip(gain, 0, 1).astype(np.float32)


def _std(spectrum: np.ndarray, shape) -> float:
    """Std of the volume whose full (kx, kz, ky) rfft-spectrum this is, by Parseval (no inverse FFT)."""
    n = float(np.prod(shape))
    weight = np.full(spectrum.shape[-1], 2.0)
    weight[0] = 1.0
    if shape[1] % 2 == 0:
        weight[-1] = 1.0
    power = sum((part.astype(np.float64) ** 2).sum(axis=(0, 1)) for part in (spectrum.real, spectrum.imag))
    mean = float(spectrum[0, 0, 0].real) / n
    return float(np.sqrt(max((power * weight).sum() / n ** 2 - mean ** 2, 0.0)))


def _missing_wedge(kx, kz, angles: np.ndarray) -> np.ndarray:
    """(kx, kz, 1) float32: 1 in the unmeasured region (slice angle outside the tilt range), soft edge."""
    slice_angle = np.degrees(np.arctan2(-kz[None, :], kx[:, None]))  # the tilt whose slice holds (kx, kz)
    slice_angle = (slice_angle + 90) % 180 - 90  # k and -k lie on the same slice
    past = np.maximum(angles[0] - slice_angle, slice_angle - angles[-1])
    return np.clip(past / WEDGE_EDGE_DEG, 0, 1).astype(np.float32)[:, :, None]


def _wedge_fill(truth: np.ndarray, grid: Grid, in_plane_gain: np.ndarray, acq: Acquisition, cfg: SynthConfig,
                nx: int) -> np.ndarray:
    """IsoNet stand-in: the truth in the missing wedge as the measured data carries it at each |k|
    (CTF, envelope, damage), denoised like the best-measured direction, times ``isonet_fill``; nothing
    larger than IsoNet's box, and not the slab itself (flat along x: the kx = 0 planes)."""
    k = grid.k
    radial_bin = np.minimum(np.arange(TABLE) // -(-TABLE // RADIAL_BINS), RADIAL_BINS - 1)
    phase = 2 * optics.interaction_constant(cfg.voltage_kv) * PROTEIN_POTENTIAL_V * VOXEL_SPACING
    table = (phase * cfg.isonet_fill * in_plane_gain[radial_bin] * np.clip(k * ISONET_BOX * VOXEL_SPACING - 1, 0, 1)
             * optics.ctf(k * k, float(acq.defocus.mean()), cfg.voltage_kv, cfg.cs_mm, cfg.amplitude_contrast)
             * optics.envelope(k * k, acq.bfactor) * optics.exposure_filter(k, float(np.median(acq.prior_dose))))
    wedge = _missing_wedge(grid.kx, grid.kz, acq.angles) * (np.abs(grid.kx) * nx > 1.5)[:, None, None]
    fill = scipy.fft.fft(truth, axis=1, overwrite_x=True, **_FFT)
    fill *= grid.radial(table)
    fill *= wedge
    return fill


def reconstruct(weighted: np.ndarray, split: np.ndarray, rows: np.ndarray, truth: np.ndarray | None,
                acq: Acquisition, cfg: SynthConfig, shape, recons) -> dict[str, np.ndarray]:
    """The requested recons from the weighted projections, the noise split's (for kx ``rows``) and,
    for the wedge fill, the scene's (kx, z, ky) spectrum (consumed)."""
    nz, _, nx = shape
    z_rel = np.arange(nz) - (nz - 1) / 2
    kx, ky = geometry.frequencies(shape)
    kz = scipy.fft.fftfreq(nz).astype(np.float32)
    wbp = scipy.fft.fft(geometry.backproject(weighted, acq.angles, z_rel), axis=1, overwrite_x=True, **_FFT)
    grid = Grid(kx, kz, ky)
    bins = grid.bins()
    if cfg.noise:
        noise = scipy.fft.fft(geometry.backproject(split, acq.angles, z_rel, kx[rows]), axis=1, **_FFT)
        gains = wiener_denoiser(wbp[rows], noise, bins[rows])
    else:
        gains = np.ones(RADIAL_BINS * ANGLE_BINS, dtype=np.float32)
    denoiser = gains[bins]
    del bins
    scale = np.float32(TARGET_STD * acq.gain / max(_std(wbp * denoiser, shape), 1e-30))
    deconvolution = optics.deconvolution_filter(grid.k, VOXEL_SPACING, float(acq.defocus.mean()), cfg.voltage_kv,
                                                cfg.cs_mm, cfg.amplitude_contrast, cfg.deconv_strength,
                                                cfg.deconv_falloff)

    def spectrum(recon: str) -> np.ndarray:
        if recon == "wbp":
            return wbp
        if recon == "denoised":
            return wbp * denoiser
        if recon == "ctfdeconvolved":
            return wbp * grid.radial(deconvolution)
        out = _wedge_fill(truth, grid, gains.reshape(RADIAL_BINS, ANGLE_BINS)[:, 0], acq, cfg, nx)
        out += wbp * denoiser
        out *= grid.radial(deconvolution)
        return out

    volumes = {}
    for recon in recons:
        spec = spectrum(recon)
        volume = geometry.from_spectrum(scipy.fft.ifft(spec, axis=1, overwrite_x=spec is not wbp, **_FFT), shape)
        volume *= scale
        volumes[recon] = volume
    return volumes
