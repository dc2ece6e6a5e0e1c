"""The bundled example: an idealised four-helix bundle simulated at 6 Å with noise.

Everything is built by the code (no file from EMDB or the PDB), deterministically from a seed,
so ``cryosamu example`` gives every user the same map to try ``cryosamu enhance`` on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from cryosamu_cli import mapio
from cryosamu_cli.errors import CryosamuError
from cryosamu_cli.simulate import simulate_density

# Ideal alpha helix: 3.6 residues per turn, 1.5 Å rise, backbone atom radii and phase offsets.
_RESIDUES_PER_TURN = 3.6
_RISE_A = 1.5
_BACKBONE = (("N", 7, 1.55, -0.47, -0.55), ("CA", 6, 2.30, 0.0, 0.0),
             ("C", 6, 1.65, 0.52, 0.55), ("O", 8, 1.90, 0.78, 1.6), ("CB", 6, 3.30, -0.20, -0.2))
EXAMPLE_VOXEL_A = 1.1
EXAMPLE_SHAPE_ZYX = (64, 56, 56)
EXAMPLE_ORIGIN_XYZ = (12.1, -7.7, 33.0)
EXAMPLE_RESOLUTION_A = 6.0


def helix_atoms(n_residues: int, axis_xy: tuple[float, float], z0: float,
                direction: int, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """Backbone (and CB) atoms of an ideal alpha helix along z.

    Returns:
        ``(coords_xyz, atomic_numbers)`` with coordinates in Å.
    """
    coords, numbers = [], []
    for residue in range(n_residues):
        angle = phase + direction * 2 * math.pi * residue / _RESIDUES_PER_TURN
        z_residue = z0 + direction * _RISE_A * residue
        for _, z_atomic, radius, d_angle, d_z in _BACKBONE:
            a = angle + direction * d_angle
            coords.append((axis_xy[0] + radius * math.cos(a), axis_xy[1] + radius * math.sin(a),
                           z_residue + direction * d_z))
            numbers.append(z_atomic)
    return np.array(coords), np.array(numbers)


def helix_bundle_atoms(centre_xyz: tuple[float, float, float], n_helices: int = 4,
                       n_residues: int = 28, spacing_A: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """An antiparallel bundle of ideal helices around ``centre_xyz``."""
    length = _RISE_A * (n_residues - 1)
    parts = []
    for h in range(n_helices):
        theta = 2 * math.pi * h / n_helices
        axis = (centre_xyz[0] + spacing_A * math.cos(theta),
                centre_xyz[1] + spacing_A * math.sin(theta))
        direction = 1 if h % 2 == 0 else -1
        z0 = centre_xyz[2] - direction * length / 2
        parts.append(helix_atoms(n_residues, axis, z0, direction, phase=theta))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def example_map(seed: int = 0, noise_sd: float = 0.15) -> tuple[np.ndarray, mapio.GridInfo]:
    """Simulate the example: the bundle at 6 Å, plus smoothed Gaussian noise.

    Returns:
        ``(data[z, y, x], grid)`` ready for :func:`mapio.write_map`.
    """
    voxel = (EXAMPLE_VOXEL_A,) * 3
    extent = [n * EXAMPLE_VOXEL_A for n in EXAMPLE_SHAPE_ZYX[::-1]]
    centre = tuple(o + e / 2 for o, e in zip(EXAMPLE_ORIGIN_XYZ, extent))
    coords, numbers = helix_bundle_atoms(centre)
    clean = simulate_density(coords, numbers, EXAMPLE_SHAPE_ZYX, voxel, EXAMPLE_ORIGIN_XYZ,
                             EXAMPLE_RESOLUTION_A)
    clean /= clean.max()
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(EXAMPLE_SHAPE_ZYX), 1.0)
    noisy = clean + noise_sd * noise / noise.std()
    return noisy.astype(np.float32), example_grid()


def example_grid() -> mapio.GridInfo:
    """Header of the example map: non-zero origin, non-unit voxel size, standard axis order."""
    nz, ny, nx = EXAMPLE_SHAPE_ZYX
    return mapio.GridInfo(
        shape_zyx=EXAMPLE_SHAPE_ZYX, voxel_size_A=(EXAMPLE_VOXEL_A,) * 3,
        origin_A=EXAMPLE_ORIGIN_XYZ, nstart=(0, 0, 0),
        cell_A=(nx * EXAMPLE_VOXEL_A, ny * EXAMPLE_VOXEL_A, nz * EXAMPLE_VOXEL_A),
        cell_angles=(90.0, 90.0, 90.0), sampling=(nx, ny, nz), axis_order=(1, 2, 3),
        space_group=1, labels=("cryosamu example: ideal 4-helix bundle at 6 A with noise",))


def write_example_map(output_path: str | os.PathLike, *, seed: int = 0,
                      force: bool = False) -> Path:
    """Write the example map to ``output_path`` (atomically); an identical example already
    there is left as it is (so the quickstart can be run again)."""
    data, grid = example_map(seed=seed)
    if not force and Path(output_path).is_file() and _holds(Path(output_path), data):
        return Path(output_path)
    return mapio.write_map(output_path, data, grid, force=force, note="example map")


def _holds(path: Path, data: np.ndarray) -> bool:
    """Whether the map at ``path`` is exactly ``data`` (an unreadable file is not)."""
    try:
        existing, _ = mapio.read_map(path)
    except CryosamuError:  # an unreadable file is simply not the example
        return False
    return existing.shape == data.shape and bool(np.array_equal(existing, data))
