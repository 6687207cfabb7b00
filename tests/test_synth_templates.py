"""Particle templates: the MRC reader, resampling between voxel sizes, the shipped maps, user maps folders."""
from pathlib import Path

import numpy as np
import pytest

from czii_kit.data.synth import SynthConfig, generate_run
from czii_kit.data.synth.mrc import read_mrc, write_mrc
from czii_kit.data.synth.phantoms import phantom_templates
from czii_kit.data.synth.templates import (ANGSTROM3_PER_DALTON, MAPPING_FILE, centre_of_mass, map_templates,
                                           normalize, packaged_maps_dir, radius_of_gyration, read_mapping, resample)
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, RADIUS, VOXEL_SPACING

MAPS = packaged_maps_dir()


def lumpy_map(spacing: float, box_angstrom: float = 300.0) -> np.ndarray:
    """An asymmetric particle of known geometry: four Gaussians (Å) off the box centre, sampled at ``spacing``."""
    n = int(round(box_angstrom / spacing))
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    blobs = [((10.0, -20.0, 30.0), 18.0, 1.0), ((-25.0, 15.0, 0.0), 14.0, 0.7), ((30.0, 30.0, -20.0), 12.0, 0.5),
             ((0.0, -40.0, -35.0), 16.0, 0.8)]
    return sum(a * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * s ** 2))
               for c, s, a in blobs).astype(np.float32)


# --------------------------------------------------------------------------- MRC
def test_mrc_round_trip_keeps_data_and_voxel_size(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7), dtype=np.float32)
    read, voxel = read_mrc(write_mrc(tmp_path / "a.mrc", data, 4.2))
    np.testing.assert_array_equal(read, data)
    np.testing.assert_allclose(voxel, [4.2, 4.2, 4.2], rtol=1e-6)


def test_mrc_axis_order_and_byte_order_are_honoured(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)  # (z, y, x)
    raw = bytearray(write_mrc(tmp_path / "a.mrc", data, 1.0).read_bytes())
    # store it as (x, y, z) sections/rows/columns: columns are z, rows y, sections x (MAPC=3, MAPR=2, MAPS=1)
    header = np.frombuffer(bytes(raw[:1024]), dtype="<i4").copy()
    header[0:3] = 5, 6, 7
    header[16:19] = 3, 2, 1
    sections = np.ascontiguousarray(data.transpose(2, 1, 0)).tobytes()
    swapped = bytes(header.tobytes()[:208]) + bytes(raw[208:1024]) + sections
    (tmp_path / "b.mrc").write_bytes(swapped)
    np.testing.assert_array_equal(read_mrc(tmp_path / "b.mrc")[0], data)
    big = np.frombuffer(bytes(raw[:1024]), dtype="<i4").astype(">i4").tobytes()
    big = big[:212] + b"\x11\x11\x00\x00" + big[216:]
    (tmp_path / "c.mrc").write_bytes(big + data.astype(">f4").tobytes())
    np.testing.assert_array_equal(read_mrc(tmp_path / "c.mrc")[0], data)


def test_unreadable_mrc_files_are_named(tmp_path):
    with pytest.raises(DataError, match="cannot read map"):
        read_mrc(tmp_path / "missing.mrc")
    (tmp_path / "short.mrc").write_bytes(b"MAP")
    with pytest.raises(DataError, match="short.mrc.*shorter than an MRC header"):
        read_mrc(tmp_path / "short.mrc")
    good = write_mrc(tmp_path / "good.mrc", np.ones((4, 4, 4), np.float32), 10.0).read_bytes()
    (tmp_path / "cut.mrc").write_bytes(good[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_mrc(tmp_path / "cut.mrc")
    header = np.frombuffer(good[:1024], dtype="<i4").copy()
    header[3] = 4  # complex
    (tmp_path / "mode.mrc").write_bytes(header.tobytes()[:208] + good[208:])
    with pytest.raises(DataError, match="mode 4 is not supported"):
        read_mrc(tmp_path / "mode.mrc")


# --------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("spacing, new_spacing", [(5.0, 10.0), (5.0, VOXEL_SPACING), (10.0, 7.0), (3.0, 10.0)])
def test_resampling_keeps_mass_centre_and_radius_of_gyration(spacing, new_spacing):
    source = lumpy_map(spacing)
    out = resample(source, spacing, new_spacing)
    assert out.shape[0] % 2 == 1 and len(set(out.shape)) == 1
    # mass = integral x voxel volume
    assert out.sum() * new_spacing ** 3 == pytest.approx(source.sum() * spacing ** 3, rel=0.01)
    # the centre of mass lands on the middle voxel
    np.testing.assert_allclose(centre_of_mass(out), (np.array(out.shape) - 1) / 2, atol=0.02)
    assert radius_of_gyration(out, new_spacing) == pytest.approx(radius_of_gyration(source, spacing), rel=0.02)


def test_normalization_by_mass_gives_the_protein_volume():
    density = normalize(lumpy_map(10.0), 10.0, mass_kda=250)
    assert density.sum() * 10.0 ** 3 == pytest.approx(250e3 * ANGSTROM3_PER_DALTON, rel=1e-5)


# --------------------------------------------------------------------------- shipped maps
def test_the_shipped_maps_travel_with_their_licence_and_attribution():
    names = {p.name for p in MAPS.iterdir()}
    assert {"LICENSE", "README.md", MAPPING_FILE} <= names
    assert "Apache License, Version 2.0" in (MAPS / "LICENSE").read_text()
    readme = (MAPS / "README.md").read_text()
    assert "polnet" in readme and "Apache" in readme
    assert {e.path.name for e in read_mapping(MAPS)} == {p for p in names if p.endswith(".mrc")}


def test_shipped_templates_have_the_classes_sizes_and_masses():
    templates = map_templates()
    assert set(templates.targets) == set(CLASS_NAMES) and len(templates.distractors) == 1
    for name, t in templates.targets.items():
        np.testing.assert_allclose(centre_of_mass(t.density), t.centre, atol=0.05)
        assert 0.5 < t.radius * VOXEL_SPACING / RADIUS[name] < 1.35, name  # bodies about the class radius
        assert 0.5 < t.density.max() < 1.2  # relative density: protein ~ 1
    mass = {n: t.mass for n, t in templates.targets.items()}
    heavy, medium = ("ribosome", "virus-like-particle"), ("apo-ferritin", "beta-galactosidase", "thyroglobulin")
    assert min(mass[c] for c in heavy) > 5 * max(mass[c] for c in medium)
    assert min(mass[c] for c in medium) > 5 * mass["beta-amylase"]


def test_phantoms_are_available_with_hollow_shells():
    phantoms = phantom_templates().targets
    for name in ("apo-ferritin", "virus-like-particle"):
        d = phantoms[name].density
        c = tuple(int(i) for i in phantoms[name].centre)
        assert d[c] < 0.1 * d.max(), name


# --------------------------------------------------------------------------- user maps folders
def user_folder(tmp_path: Path, spacing: float = 5.0, **edits) -> Path:
    """The shipped maps re-sampled to ``spacing`` Å and written as a user's folder; ``edits`` change maps.yaml."""
    folder = tmp_path / "maps"
    folder.mkdir()
    lines = {}
    for entry in read_mapping(MAPS):
        density, voxel = read_mrc(entry.path)
        if spacing != voxel[0]:
            density = resample(density, voxel, spacing, keep_mass=0.9999)
        write_mrc(folder / entry.path.name, density, spacing)
        lines[entry.name] = f"{{file: {entry.path.name}, mass_kda: {entry.mass_kda}}}"
    lines.update(edits)
    text = "\n".join(f"{k}: {v}" if k != "distractors" else f"{k}: [{v}]" for k, v in lines.items() if v is not None)
    (folder / MAPPING_FILE).write_text(text + "\n")
    return folder


def test_a_user_folder_at_another_voxel_size_gives_the_same_particles(tmp_path):
    shipped, mine = map_templates(), map_templates(user_folder(tmp_path, 5.0))
    for name in CLASS_NAMES:
        assert mine.targets[name].radius == pytest.approx(shipped.targets[name].radius, rel=0.05), name
        assert mine.targets[name].mass == pytest.approx(shipped.targets[name].mass, rel=0.01), name
    vols, picks = generate_run("TS_5_4", 0, SynthConfig(shape=(48, 96, 96), maps=str(tmp_path / "maps")))
    assert vols["denoised"].shape == (48, 96, 96) and set(picks["particle_type"]) == set(CLASS_NAMES)


@pytest.mark.parametrize("edit, error, message", [
    ({"ribosom": "x.mrc"}, ConfigError, "unknown class name 'ribosom' .*did you mean 'ribosome'"),
    ({"thyroglobulin": None}, ConfigError, "no map for thyroglobulin.*thyroglobulin: FILE.mrc"),
    ({"ribosome": "nothere.mrc"}, DataError, "nothere.mrc .*named for ribosome.* does not exist"),
    ({"ribosome": "{file: 6qzp.mrc, mass: 3}"}, ConfigError, "unknown key.*mass"),
    ({"ribosome": "{file: 6qzp.mrc, voxel_size: -1}"}, ConfigError, "voxel_size = -1 must be a positive number"),
    ({"ribosome": "{file: 6qzp.mrc, voxel_size: 1.0}"}, DataError, "ribosome map is .* the voxel size is wrong"),
])
def test_bad_mapping_files_are_named_with_the_fix(tmp_path, edit, error, message):
    with pytest.raises(error, match=message):
        map_templates(user_folder(tmp_path, 10.0, **edit))


def test_missing_folder_mapping_file_and_voxel_size_are_named(tmp_path):
    with pytest.raises(ConfigError, match="maps folder .*nope does not exist"):
        map_templates(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no maps.yaml"):
        map_templates(tmp_path / "empty")
    folder = user_folder(tmp_path, 10.0)
    header = bytearray((folder / "8cpv.mrc").read_bytes())
    header[40:52] = bytes(12)  # cell = 0: no voxel size
    (folder / "8cpv.mrc").write_bytes(bytes(header))
    with pytest.raises(DataError, match="8cpv.mrc: the header gives no voxel size.*voxel_size"):
        map_templates(folder)
