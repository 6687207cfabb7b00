"""The microscope and the reconstruction, end to end: density -> tilt series -> the four tomograms.

One forward FFT of the specimen, one batched matrix product for all projections (true, slightly
wrong geometry), per-tilt imaging (``tiltseries``), one product for the back-projection (nominal
geometry), then one inverse FFT per reconstruction (``recon``). Peak memory is about eight
volumes of float32.
"""
from __future__ import annotations

import numpy as np

from czii_kit.data.synth import geometry, recon, tiltseries
from czii_kit.data.synth.config import SynthConfig
from czii_kit.data.synth.tiltseries import Acquisition
from czii_kit.utils.timing import StageClock

SPLIT_ROWS = 4  # the noise split is back-projected for every 4th kx row only: it feeds a spectrum estimate


def tomograms(density: np.ndarray, acq: Acquisition, cfg: SynthConfig, rng: np.random.Generator,
              recons=("denoised",), timings: dict | None = None) -> dict[str, np.ndarray]:
    """Image a (z, y, x) density and reconstruct it: {recon: float32 (z, y, x)}.

    The noise and the noise split come from two streams of ``rng``, and every recon's gain and
    denoiser are computed whatever is asked for, so a recon does not depend on which others are made.
    ``timings``, if given, receives seconds per stage.
    """
    clock = StageClock(timings)
    shape = density.shape
    nz, _, nx = shape
    _, ky = geometry.frequencies(shape)
    z_rel = np.arange(nz) - (nz - 1) / 2
    spectrum = geometry.to_spectrum(density)
    sheared = geometry.project(spectrum, acq.angles + acq.angle_errors, z_rel, ky, np.radians(acq.axis_error))
    truth = spectrum if "isonetcorrected" in recons else None
    del spectrum
    clock.lap("project")
    noise_rng, split_rng = rng.spawn(2)
    weighted = tiltseries.record(sheared, acq, cfg, shape, noise_rng)
    del sheared
    rows = np.arange(0, nx, SPLIT_ROWS)
    split = tiltseries.record_split_noise(acq, cfg, shape, split_rng, rows)
    clock.lap("tilt images")
    volumes = recon.reconstruct(weighted, split, rows, truth, acq, cfg, shape, recons)
    clock.lap("reconstruct")
    return volumes
