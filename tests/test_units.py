import numpy as np

from czii_kit.particles import (CLASS_NAMES, PARTICLES, RADIUS, VOXEL_SPACING, WEIGHT, angstrom_to_voxel,
                                particle, voxel_to_angstrom)


def test_competition_constants():
    assert CLASS_NAMES == ("apo-ferritin", "beta-amylase", "beta-galactosidase", "ribosome", "thyroglobulin",
                           "virus-like-particle")
    assert [RADIUS[c] for c in CLASS_NAMES] == [60, 65, 90, 150, 130, 135]
    assert [WEIGHT[c] for c in CLASS_NAMES] == [1, 0, 2, 1, 2, 1]
    assert sum(WEIGHT.values()) == 7
    assert VOXEL_SPACING == 10.012444
    assert particle("ribosome").hit_radius == 75.0


def test_unknown_particle_names_the_valid_ones():
    try:
        particle("ferritin")
    except KeyError as e:
        assert "apo-ferritin" in str(e)
    else:
        raise AssertionError("expected KeyError")


def test_axis_order_and_scale():
    # a pick at x=100 Å, y=200 Å, z=300 Å is array index (z, y, x) = (300, 200, 100) / spacing
    zyx = angstrom_to_voxel([[100.0, 200.0, 300.0]])
    np.testing.assert_allclose(zyx, [[300 / VOXEL_SPACING, 200 / VOXEL_SPACING, 100 / VOXEL_SPACING]])
    # voxel (z=1, y=2, x=3) centre is at x=3*s, y=2*s, z=1*s Å (no half-voxel shift)
    np.testing.assert_allclose(voxel_to_angstrom([[1, 2, 3]]), [[3 * VOXEL_SPACING, 2 * VOXEL_SPACING, VOXEL_SPACING]])


def test_round_trips_are_exact():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 6300, size=(10_000, 3))
    np.testing.assert_allclose(voxel_to_angstrom(angstrom_to_voxel(xyz)), xyz, rtol=0, atol=1e-9)
    idx = rng.integers(0, 630, size=(10_000, 3))
    back = angstrom_to_voxel(voxel_to_angstrom(idx))
    np.testing.assert_array_equal(np.rint(back).astype(int), idx)
    np.testing.assert_allclose(back, idx, atol=1e-9)


def test_particles_table_is_the_single_source():
    assert len(PARTICLES) == 6 and len({p.name for p in PARTICLES}) == 6
