"""The forward model: tilt schemes, projection geometry, missing wedge, CTF, dose, noise, reconstructions."""
import numpy as np
import pytest
import scipy.fft

from czii_kit.data import layout
from czii_kit.data.synth import SynthConfig, TARGET_STD, geometry, optics, tiltseries, tomograms
from czii_kit.data.synth.tiltseries import Acquisition
from czii_kit.particles import VOXEL_SPACING, angstrom_to_voxel, voxel_to_angstrom

SHAPE = (64, 64, 96)


def acquisition(angles, scheme="dose-symmetric", defocus=3e4, dose=120.0, **kw) -> Acquisition:
    """A perfectly aligned series at the given angles."""
    n = len(angles)
    values = dict(angles=np.asarray(angles, float), order=geometry.acquisition_order(angles, scheme),
                  angle_errors=np.zeros(n), defocus=np.full(n, defocus), shifts=np.zeros((n, 2)), axis_error=0.0,
                  dose=np.full(n, dose / n), bfactor=0.0, ice_thickness=1500.0, gain=1.0)
    return Acquisition(**{**values, **kw})


def blob(shape, centre_zyx, sigma=1.2) -> np.ndarray:
    z, y, x = np.indices(shape)
    return np.exp(-((z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2)
                  / (2 * sigma ** 2)).astype(np.float32)


def located(volume: np.ndarray, voxel) -> np.ndarray:
    """Sub-voxel (z, y, x) of a point's image near ``voxel``. Its transfer is real and even, so once
    shifted back to the true position its spectrum is real: the phase of R^2 is -4 pi k.delta.
    Weighted least squares on the low frequencies, after removing the integer shift."""
    spectrum = scipy.fft.fftn(volume.astype(np.float64))
    k = np.stack(np.meshgrid(*[scipy.fft.fftfreq(n) for n in volume.shape], indexing="ij"), axis=-1)
    spectrum *= np.exp(2j * np.pi * (k @ np.asarray(voxel, float)))
    keep = (np.linalg.norm(k, axis=-1) < 0.2) & (np.abs(spectrum) > 0)
    phase, weight, kk = np.angle(spectrum[keep] ** 2), np.abs(spectrum[keep]) ** 2, k[keep]
    delta = np.linalg.lstsq(kk * np.sqrt(weight)[:, None] * -4 * np.pi, phase * np.sqrt(weight), rcond=None)[0]
    return np.asarray(voxel, float) + delta


# --------------------------------------------------------------------------- tilt schemes
def test_tilt_angles_are_the_real_series():
    angles = geometry.tilt_angles(-60, 60, 3)
    assert len(angles) == 41 and angles[0] == -60 and angles[-1] == 60 and 0 in angles
    np.testing.assert_array_equal(geometry.tilt_angles(-50.5, 58.9, 3), np.arange(-48, 58, 3))


def test_acquisition_orders():
    angles = geometry.tilt_angles(-9, 9, 3)  # -9 -6 -3 0 3 6 9
    as_angles = {s: angles[geometry.acquisition_order(angles, s)].tolist() for s in
                 ("dose-symmetric", "bidirectional", "unidirectional")}
    assert as_angles["dose-symmetric"] == [0, 3, 6, -3, -6, 9, -9]  # Hagen: 0, then pairs alternating sides
    assert as_angles["bidirectional"] == [0, 3, 6, 9, -3, -6, -9]
    assert as_angles["unidirectional"] == [-9, -6, -3, 0, 3, 6, 9]
    with pytest.raises(Exception, match="unknown tilt scheme"):
        geometry.acquisition_order(angles, "random")


def test_prior_dose_follows_the_collection_order():
    angles = geometry.tilt_angles(-6, 6, 3)  # collected 0, 3, 6, -3, -6
    prior = geometry.prior_dose(geometry.acquisition_order(angles, "dose-symmetric"), np.full(5, 2.0))
    np.testing.assert_allclose(prior, [9.0, 7.0, 1.0, 3.0, 5.0])  # received before each tilt + half its own


def test_angular_shares_cover_the_range():
    angles = geometry.tilt_angles(-60, 60, 3)
    assert geometry.angular_weights(angles).sum() == pytest.approx(np.radians(123.0))


# --------------------------------------------------------------------------- geometry
def test_back_projection_is_the_adjoint_of_projection():
    rng = np.random.default_rng(0)
    shape, angles = (16, 8, 24), geometry.tilt_angles(-60, 60, 15)
    z_rel = np.arange(shape[0]) - (shape[0] - 1) / 2
    volume = geometry.to_spectrum(rng.standard_normal(shape))
    images = (rng.standard_normal((shape[2], len(angles), shape[1] // 2 + 1))
              + 1j * rng.standard_normal((shape[2], len(angles), shape[1] // 2 + 1))).astype(np.complex64)
    forward = np.vdot(images, geometry.project(volume, angles, z_rel))
    adjoint = np.vdot(geometry.backproject(images, angles, z_rel), volume)
    assert forward == pytest.approx(adjoint, rel=1e-4)


def test_tilt_axis_error_moves_a_plane_along_y_by_its_height():
    rng = np.random.default_rng(1)
    shape, angles, error = (9, 32, 32), np.array([-60.0, 30.0]), np.radians(2.0)
    z_rel = np.arange(shape[0]) - (shape[0] - 1) / 2
    volume = np.zeros(shape, np.float32)
    volume[8] = rng.standard_normal(shape[1:])  # one plane, 4 voxels above the axis
    _, ky = geometry.frequencies(shape)
    shifted = geometry.project(geometry.to_spectrum(volume), angles, z_rel, ky, axis_error=error, max_step=1e-3)
    plain = geometry.project(geometry.to_spectrum(volume), angles, z_rel)
    expected_shift = error * 4 * np.tan(np.radians(angles))  # voxels along y
    np.testing.assert_allclose(shifted, plain * np.exp(-2j * np.pi * expected_shift[None, :, None] * ky[None, None]),
                               rtol=1e-3, atol=1e-3 * np.abs(plain).max())


@pytest.mark.parametrize("scheme, tilt_min, tilt_max, step", [
    ("dose-symmetric", -60, 60, 3), ("bidirectional", -45, 57, 3), ("unidirectional", -60, 60, 3),
    ("dose-symmetric", -30, 60, 2)])
def test_a_point_reconstructs_where_it_is_in_angstrom(scheme, tilt_min, tilt_max, step):
    shape = (40, 48, 64)
    pick = np.array([[413.0, 250.0, 220.0]])  # (x, y, z) Å, off-centre in every axis
    centre = angstrom_to_voxel(pick)[0]
    cfg = SynthConfig.preset("clean", shape=shape, tilt_scheme=scheme)
    acq = acquisition(geometry.tilt_angles(tilt_min, tilt_max, step), scheme)
    volumes = tomograms(blob(shape, centre), acq, cfg, np.random.default_rng(0), layout.RECONS)
    for recon, volume in volumes.items():
        darkest = np.unravel_index(np.argmin(volume), shape)  # dense comes out dark
        np.testing.assert_array_equal(darkest, np.round(centre).astype(int), err_msg=recon)
        found = voxel_to_angstrom(located(volume, darkest))[0]
        np.testing.assert_allclose(found, pick[0], atol=0.5, err_msg=recon)  # Å


def wedge_power(volume: np.ndarray, angle_deg: float, width_deg: float = 6.0) -> float:
    """Mean spectral power of the kz-kx directions within width/2 of the slice of tilt angle_deg."""
    kz = scipy.fft.fftfreq(volume.shape[0])[:, None, None]
    kx = scipy.fft.rfftfreq(volume.shape[2])[None, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        slice_angle = np.degrees(np.arctan(-kz / kx))  # the tilt whose central slice holds (kx, kz)
    k = np.sqrt(kz ** 2 + kx ** 2)
    select = (np.abs(slice_angle - angle_deg) < width_deg / 2) & (k > 0.05) & (k < 0.4)
    power = np.abs(scipy.fft.rfftn(volume)) ** 2
    return float(power[np.broadcast_to(select, power.shape)].mean())


def test_the_missing_wedge_is_where_the_tilt_range_says():
    rng = np.random.default_rng(2)
    density = rng.standard_normal(SHAPE).astype(np.float32)
    cfg = SynthConfig.preset("clean", shape=SHAPE)
    acq = acquisition(geometry.tilt_angles(-30, 60, 1), defocus=0.0)  # asymmetric, fine steps, no CTF zeros
    wbp = tomograms(density, acq, cfg, np.random.default_rng(0), ("wbp",))["wbp"]
    measured = [wedge_power(wbp, a) for a in (-20.0, 0.0, 45.0)]
    missing = [wedge_power(wbp, a) for a in (-60.0, -45.0, 80.0)]
    assert max(missing) < 0.02 * min(measured)


# --------------------------------------------------------------------------- optics
def test_wavelength_and_interaction_constant_at_300_kv():
    assert optics.electron_wavelength(300) == pytest.approx(0.019687, abs=1e-6)
    assert optics.interaction_constant(300) == pytest.approx(6.526e-4, rel=1e-3)


@pytest.mark.parametrize("defocus_um, cs_mm", [(3.0, 2.7), (1.5, 0.0), (4.5, 2.7)])
def test_ctf_zeros_are_where_the_phase_reaches_multiples_of_pi(defocus_um, cs_mm):
    lam, df, cs = optics.electron_wavelength(300), defocus_um * 1e4, cs_mm * 1e7
    phase0 = np.arcsin(0.07)
    k = np.linspace(0, 0.08, 400001)
    transfer = optics.ctf(k * k, df, 300, cs_mm, 0.07).astype(np.float64)
    assert transfer[0] == pytest.approx(-0.07, abs=1e-6)  # dense is dark at low frequency
    crossings = k[1:][np.diff(np.sign(transfer)) != 0]
    for n, found in zip((1, 2, 3), crossings):
        # pi lam df k^2 - pi/2 cs lam^3 k^4 + phase0 = n pi, smallest root in k^2
        a, b, c = 0.5 * np.pi * cs * lam ** 3, -np.pi * lam * df, n * np.pi - phase0
        k2 = -c / b if cs == 0 else (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)
        assert found == pytest.approx(np.sqrt(k2), abs=2e-6)


def test_radiation_damage_and_deconvolution_filters():
    k = np.array([0.01, 0.03, 0.05])
    critical = 0.245 * k ** -1.665 + 2.81
    np.testing.assert_allclose(optics.exposure_filter(k, 2 * critical), np.exp(-1), rtol=1e-5)
    assert optics.exposure_filter(np.array([0.05]), 0.0)[0] == 1
    wiener = optics.deconvolution_filter(np.linspace(0.003, 0.05, 200), VOXEL_SPACING, 3e4, 300, 2.7, 0.07)
    transfer = optics.ctf(np.linspace(0.003, 0.05, 200) ** 2, 3e4, 300, 2.7, 0.07)
    assert (np.sign(wiener) == -np.sign(transfer)).all()  # flips phases so dense stays dark everywhere


def test_defocus_changes_across_a_tilted_image_as_the_geometry_says():
    rng = np.random.default_rng(3)
    shape, theta = (32, 32, 256), np.radians(60.0)
    spectrum = scipy.fft.rfft2(rng.standard_normal((shape[2], shape[1])).astype(np.float32))
    kx, ky = geometry.frequencies(shape)
    k2 = ((kx / np.cos(theta))[:, None] ** 2 + ky[None] ** 2) / VOXEL_SPACING ** 2
    acq = acquisition([-60.0, 60.0])
    cfg = SynthConfig.preset("clean", shape=shape)
    x_rel = np.arange(shape[2]) - (shape[2] - 1) / 2
    blended = scipy.fft.ifft(tiltseries._defocus_blend(spectrum, k2, acq, cfg, 1, theta, x_rel, ky), axis=0)
    for column in (0, 128, 255):
        defocus = 3e4 + x_rel[column] * VOXEL_SPACING * np.sin(theta)  # Å: further from focus on one side
        alone = scipy.fft.ifft(spectrum * optics.ctf(k2, defocus, 300, 2.7, 0.07), axis=0)[column]
        assert np.abs(blended[column] - alone).max() < 0.05 * np.abs(alone).max()


# --------------------------------------------------------------------------- noise and reconstructions
def test_shot_noise_is_poisson_for_the_unscattered_electrons():
    cfg = SynthConfig(shape=SHAPE)
    angles = geometry.tilt_angles(-60, 60, 3)
    thin, thick = acquisition(angles, ice_thickness=0.0), acquisition(angles, ice_thickness=2000.0)
    zero = np.zeros((SHAPE[2], len(angles), SHAPE[1] // 2 + 1), np.complex64)
    std = {(a.ice_thickness, d): tiltseries.record(zero, acquisition(angles, dose=d, ice_thickness=a.ice_thickness),
                                                   cfg, SHAPE, np.random.default_rng(0)).std()
           for a in (thin, thick) for d in (30.0, 120.0)}
    assert std[0.0, 30.0] / std[0.0, 120.0] == pytest.approx(2.0, rel=0.02)  # 1/sqrt(dose)
    # thicker ice scatters more electrons away (more so at high tilt): noisier images
    assert std[2000.0, 120.0] > std[0.0, 120.0] * np.exp(1000.0 / tiltseries.INELASTIC_MFP)
    pixel = 120.0 / len(angles) * VOXEL_SPACING ** 2 * tiltseries.DQE  # electrons per pixel at tilt 0, no ice
    assert tiltseries.shot_noise_std(thin, cfg, 20) == pytest.approx(1 / np.sqrt(pixel))


@pytest.fixture(scope="module")
def run():
    from czii_kit.data.synth import simulate_run

    return simulate_run("TS_6_4", 0, SynthConfig(shape=(64, 128, 128), density=3.0), layout.RECONS)


def test_all_four_recons_are_on_the_real_value_scale(run):
    volumes, _, _, acq = run
    assert set(volumes) == set(layout.RECONS)
    for volume in volumes.values():
        assert volume.dtype == np.float32 and volume.shape == (64, 128, 128) and np.isfinite(volume).all()
        assert abs(volume.mean()) < 0.05 * volume.std()
    assert volumes["denoised"].std() == pytest.approx(TARGET_STD * acq.gain, rel=1e-3)
    assert volumes["wbp"].std() > 2 * volumes["denoised"].std()  # the denoiser removed noise, not signal scale


def test_denoising_and_wedge_filling_do_what_they_say(run):
    from czii_kit.data.synth.render import render_density

    volumes, _, scene, _ = run
    truth = render_density(scene)

    def corr(a):
        return abs(np.corrcoef(a.ravel(), truth.ravel())[0, 1])

    assert corr(volumes["denoised"]) > 1.5 * corr(volumes["wbp"])
    filled = {r: wedge_power(volumes[r], 80.0, 20.0) / wedge_power(volumes[r], 0.0, 20.0)
              for r in ("denoised", "isonetcorrected")}  # missing over measured
    assert filled["isonetcorrected"] > 5 * filled["denoised"]
