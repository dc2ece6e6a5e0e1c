"""The bundled example map and the eq. 1 simulator behind it."""

from __future__ import annotations

import numpy as np
import pytest

from cryosamu_cli import examples, mapio
from cryosamu_cli.simulate import gaussian_k, simulate_density


def test_single_atom_follows_eq_1():
    shape, voxel, origin = (21, 21, 21), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    atom = np.array([[10.3, 9.6, 10.0]])
    rho = simulate_density(atom, np.array([6]), shape, voxel, origin, resolution_A=4.0)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    r2 = (x - 10.3) ** 2 + (y - 9.6) ** 2 + (z - 10.0) ** 2
    expected = 6 * np.exp(-gaussian_k(4.0) * r2)
    # each atom is evaluated within 4 sigma, so the error is at most Z * exp(-8)
    assert np.abs(rho - expected).max() < 6 * np.exp(-8)
    assert rho.max() == pytest.approx(expected.max(), rel=1e-6)


def test_anisotropic_voxels_place_atoms_in_angstrom():
    atom = np.array([[6.0, 4.0, 9.0]])
    rho = simulate_density(atom, np.array([8]), (10, 10, 10), (2.0, 1.0, 3.0), (0.0, 0.0, 0.0),
                           resolution_A=3.0)
    assert np.unravel_index(rho.argmax(), rho.shape) == (3, 4, 3)


def test_example_is_deterministic_and_shows_the_helices(tmp_path):
    a, grid = examples.example_map(seed=0)
    b, _ = examples.example_map(seed=0)
    assert np.array_equal(a, b)
    clean, _ = examples.example_map(seed=0, noise_sd=0.0)
    assert 0.4 < np.corrcoef(a.ravel(), clean.ravel())[0, 1] < 0.7  # noisy, but not noise only
    # density along the bundle's helix axes stands well above the corners
    assert clean[32, 28, 28 + 9] > 5 * abs(clean[2, 2, 2])
    path = examples.write_example_map(tmp_path / "ex.mrc")
    data, read_grid = mapio.read_map(path)
    assert np.allclose(data, a) and read_grid.origin_A == pytest.approx(examples.EXAMPLE_ORIGIN_XYZ)
