"""Density maps simulated from atoms by eq. 1 of the paper.

``rho(x) = sum_i theta * Z_i * exp(-k |x - r_i|^2)`` over heavy atoms ``i`` with atomic number
``Z_i``. We follow the convention of Chimera's ``molmap``: the Gaussian's standard deviation is
``sigma = 0.225 * resolution`` (``1 / (pi * sqrt(2))`` of the resolution), so
``k = 1 / (2 sigma^2)``, and ``theta = 1`` because maps are normalised afterwards. Each atom is
evaluated exactly on the voxels within ``4 sigma`` using the separable form of the Gaussian.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

SIGMA_PER_RESOLUTION = 1.0 / (math.pi * math.sqrt(2.0))
_CUTOFF_SIGMAS = 4.0
_CHUNK = 2048


def gaussian_k(resolution_A: float) -> float:
    """The ``k`` of eq. 1 for a resolution in Å."""
    sigma = SIGMA_PER_RESOLUTION * resolution_A
    return 1.0 / (2.0 * sigma * sigma)


def simulate_density(coords_xyz: np.ndarray, atomic_numbers: np.ndarray,
                     shape_zyx: tuple[int, int, int], voxel_size_A: tuple[float, float, float],
                     origin_xyz: tuple[float, float, float], resolution_A: float,
                     extra_b: np.ndarray | None = None) -> np.ndarray:
    """Evaluate eq. 1 on a grid.

    Args:
        coords_xyz: ``(M, 3)`` atom positions in Å (x, y, z).
        atomic_numbers: ``(M,)`` atomic numbers ``Z_i`` (heavy atoms only).
        shape_zyx: Output shape ``[z, y, x]``.
        voxel_size_A: Voxel size along x, y, z in Å.
        origin_xyz: Position in Å of voxel ``[0, 0, 0]``.
        resolution_A: Resolution that sets ``k``.
        extra_b: Optional per-atom B-factors (Å²) that widen each Gaussian by
            ``sigma_i^2 += B_i / (8 pi^2)`` (used to simulate flexible regions; each atom then
            integrates to the same total as without it).

    Returns:
        float32 density ``[z, y, x]``.
    """
    sigma2 = np.full(len(atomic_numbers), (SIGMA_PER_RESOLUTION * resolution_A) ** 2)
    weights = np.asarray(atomic_numbers, dtype=np.float64).copy()
    if extra_b is not None:
        widened = sigma2 + np.asarray(extra_b, float) / (8 * math.pi ** 2)
        weights *= (sigma2 / widened) ** 1.5
        sigma2 = widened
    density = np.zeros(int(np.prod(shape_zyx)), dtype=np.float64)
    fractional = (np.asarray(coords_xyz, float) - np.asarray(origin_xyz, float)) / voxel_size_A
    half = [int(math.ceil(_CUTOFF_SIGMAS * math.sqrt(sigma2.max()) / v)) for v in voxel_size_A]
    for start in range(0, len(weights), _CHUNK):
        part = slice(start, start + _CHUNK)
        _add_atoms(density, fractional[part], weights[part], shape_zyx, voxel_size_A, half,
                   1.0 / (2.0 * sigma2[part]))
    return density.reshape(shape_zyx).astype(np.float32)


def _add_atoms(density: np.ndarray, fractional: np.ndarray, weights: np.ndarray,
               shape_zyx: tuple[int, int, int], voxel_size_A: tuple[float, float, float],
               half: list[int], k: np.ndarray) -> None:
    """Add the Gaussians (per-atom ``k``) of a chunk of atoms into the flat ``density``."""
    nz, ny, nx = shape_zyx
    per_axis = []
    for axis, (n, v, h) in enumerate(zip((nx, ny, nz), voxel_size_A, half)):
        centre = np.floor(fractional[:, axis]).astype(int)
        index = centre[:, None] + np.arange(-h, h + 2)[None, :]
        values = np.exp(-k[:, None] * ((index - fractional[:, axis:axis + 1]) * v) ** 2)
        inside = (index >= 0) & (index < n)
        per_axis.append((np.clip(index, 0, n - 1), values * inside))
    (ix, gx), (iy, gy), (iz, gz) = per_axis
    values = np.einsum("a,az,ay,ax->azyx", weights, gz, gy, gx)
    flat = (iz[:, :, None, None] * ny + iy[:, None, :, None]) * nx + ix[:, None, None, :]
    density += np.bincount(flat.ravel(), weights=values.ravel(), minlength=density.size)


# Electron scattering factors: International Tables for Crystallography Vol. C (2011),
# Table 4.3.2.2 (Peng et al.), f(s) = sum a_i exp(-b_i s^2) with s = sin(theta)/lambda.
ELECTRON_FORM_FACTORS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "H": ((0.0349, 0.1201, 0.197, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    "C": ((0.0893, 0.2563, 0.757, 1.0487, 0.3575), (0.2465, 1.71, 6.4094, 18.6113, 50.2523)),
    "N": ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    "O": ((0.0974, 0.2921, 0.691, 0.699, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    "S": ((0.2497, 0.5628, 1.3899, 2.1865, 0.7715), (0.2681, 1.6711, 7.0267, 19.5377, 50.3888)),
    "P": ((0.2548, 0.6106, 1.4541, 2.3204, 0.8477), (0.2908, 1.874, 8.5176, 24.3434, 63.2996)),
    "SE": ((0.4477, 1.1678, 1.5843, 2.8087, 1.1956), (0.2405, 1.5442, 6.3231, 19.461, 52.0233)),
    "MG": ((0.2314, 0.6866, 0.9677, 2.1882, 1.1339), (0.3278, 2.272, 10.9241, 39.2898, 101.9748)),
    "ZN": ((0.4288, 1.2646, 1.4472, 1.8294, 1.0934), (0.2593, 1.7998, 6.75, 25.586, 73.5284)),
    "CA": ((0.4054, 1.388, 2.1602, 3.7532, 2.2063), (0.3499, 3.0991, 11.9608, 53.9353, 142.3892)),
    "FE": ((0.3946, 1.2725, 1.7031, 2.314, 1.4795), (0.2717, 2.0443, 7.6007, 29.9714, 86.2265)),
    "NA": ((0.2142, 0.6853, 0.7692, 1.6589, 1.4482), (0.3334, 2.3446, 10.083, 48.3037, 138.27)),
    "CL": ((0.2443, 0.5397, 1.3919, 2.0197, 0.6621), (0.2468, 1.5242, 6.1537, 16.6687, 42.3086)),
    "K": ((0.4115, 1.4031, 2.2784, 2.6742, 2.2162), (0.3703, 3.3874, 13.1029, 68.9592, 194.4329)),
    "MN": ((0.3796, 1.2094, 1.7815, 2.542, 1.5937), (0.2699, 2.0455, 7.4726, 31.0604, 91.5622)),
}
# van der Waals radii (Å) used for the molecular mask, as in cctbx's bulk-solvent mask.
VDW_RADII_A = {"H": 1.2, "C": 1.775, "N": 1.5, "O": 1.45, "S": 1.8, "P": 1.9, "SE": 1.9,
               "MG": 1.73, "ZN": 1.39, "CA": 1.95, "FE": 1.26, "NA": 2.27, "CL": 1.75, "K": 2.75,
               "MN": 1.19}
_FCALC_CHUNK = 1024


def form_factor(element: str, atomic_number: int) -> tuple[np.ndarray, np.ndarray]:
    """Electron form-factor Gaussians ``(a, b)`` of an element (carbon scaled by Z if unknown)."""
    if element in ELECTRON_FORM_FACTORS:
        a, b = ELECTRON_FORM_FACTORS[element]
        return np.array(a), np.array(b)
    a, b = ELECTRON_FORM_FACTORS["C"]
    return np.array(a) * max(atomic_number, 1) / 6.0, np.array(b)


def model_map(atoms, shape_zyx: tuple[int, int, int], voxel_size_A: tuple[float, float, float],
              origin_xyz: tuple[float, float, float], resolution_A: float) -> np.ndarray:
    """The model map Phenix's map_model_cc compares with: ``F_calc`` to ``resolution_A``.

    Structure factors of the atoms (electron form factors, isotropic B, occupancy) in the
    map's box, treated as a periodic P1 cell, keeping reflections with ``d > resolution_A``,
    Fourier-transformed onto the map's grid. The sums are separable along h, k, l, so they are
    done exactly (no gridding approximation) as matrix products.

    Args:
        atoms: :class:`~cryosamu_cli.structure.Atoms`.
        shape_zyx: Map shape.
        voxel_size_A: Voxel size along x, y, z.
        origin_xyz: Position in Å of voxel ``[0, 0, 0]``.
        resolution_A: High-resolution cutoff ``d_min``.

    Returns:
        float32 ``[z, y, x]`` model map (arbitrary absolute scale).
    """
    cell = np.array([n * v for n, v in zip(shape_zyx[::-1], voxel_size_A)])
    limits = [min(int(np.floor(c / resolution_A)), n // 2) for c, n in zip(cell, shape_zyx[::-1])]
    hx = np.arange(0, limits[0] + 1)
    ky = np.arange(-limits[1], limits[1] + 1)
    lz = np.arange(-limits[2], limits[2] + 1)
    coefficients = structure_factors(atoms, cell, np.asarray(origin_xyz), (hx, ky, lz))
    s2 = ((hx[None, None, :] / cell[0]) ** 2 + (ky[None, :, None] / cell[1]) ** 2
          + (lz[:, None, None] / cell[2]) ** 2)
    coefficients[s2 >= 1.0 / resolution_A ** 2] = 0.0
    spectrum = np.zeros((shape_zyx[0], shape_zyx[1], shape_zyx[2] // 2 + 1), complex)
    spectrum[np.ix_(lz % shape_zyx[0], ky % shape_zyx[1], hx)] = coefficients
    return np.fft.irfftn(spectrum, s=shape_zyx, axes=(0, 1, 2)).astype(np.float32)


def structure_factors(atoms, cell_A: np.ndarray, origin_xyz: np.ndarray,
                      indices: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Structure factors ``F[l, k, h]`` of the atoms in a P1 box ``cell_A`` (x, y, z lengths).

    Uses the sign convention of ``numpy.fft.rfftn``, so the result compares directly with the
    FFT of a map on the same box. ``indices`` are the h (x), k (y) and l (z) to compute.
    """
    fractional = (atoms.xyz - origin_xyz) / cell_A
    hx, ky, lz = indices
    s2 = ((hx[None, None, :] / cell_A[0]) ** 2 + (ky[None, :, None] / cell_A[1]) ** 2
          + (lz[:, None, None] / cell_A[2]) ** 2)
    coefficients = np.zeros((len(lz), len(ky), len(hx)), complex)
    for element in np.unique(atoms.element):
        chosen = np.nonzero(atoms.element == element)[0]
        a, b = form_factor(str(element), int(atoms.atomic_number[chosen[0]]))
        # f(s) exp(-B s^2/4) = [sum_t a_t exp(-b_t s^2/4)] exp(-B s^2/4): the atom sum is done
        # once per element and multiplied by the element's form factor afterwards
        atoms_sum = np.zeros_like(coefficients)
        for start in range(0, len(chosen), _FCALC_CHUNK):
            part = chosen[start:start + _FCALC_CHUNK]
            atoms_sum += _separable_sum(atoms.occupancy[part], atoms.b_iso[part],
                                        fractional[part], cell_A, indices)
        form = sum(a_t * np.exp(-b_t * s2 / 4.0) for a_t, b_t in zip(a, b))
        coefficients += form * atoms_sum
    return coefficients


def _separable_sum(weights: np.ndarray, b_total: np.ndarray, frac: np.ndarray, cell: np.ndarray,
                   indices: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """``sum_n w_n exp(-B_n s^2 / 4) exp(-2 pi i h.x_n)`` for all (l, k, h) of the grid."""
    factors = []
    for axis, index in enumerate(indices):
        damping = np.exp(-b_total[:, None] * (index[None, :] / cell[axis]) ** 2 / 4.0)
        phase = np.exp(-2j * np.pi * frac[:, axis:axis + 1] * index[None, :])
        factors.append(damping * phase)
    gx, gy, gz = factors
    zy = (weights[:, None, None] * gz[:, :, None] * gy[:, None, :]).reshape(len(weights), -1)
    return (zy.T @ gx).reshape(len(indices[2]), len(indices[1]), len(indices[0]))


def molecular_mask(atoms, shape_zyx: tuple[int, int, int],
                   voxel_size_A: tuple[float, float, float], origin_xyz: tuple[float, float, float],
                   solvent_radius_A: float = 1.1, shrink_radius_A: float = 0.9) -> np.ndarray:
    """Voxels inside the molecule, as cctbx's bulk-solvent mask defines them.

    A voxel within its van der Waals radius of an atom is inside; one beyond radius +
    ``solvent_radius_A`` of every atom is solvent; one in between is inside unless it lies
    within ``shrink_radius_A`` of a solvent voxel.
    """
    from scipy.spatial import cKDTree

    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    points = np.stack([x.ravel() * voxel_size_A[0], y.ravel() * voxel_size_A[1],
                       z.ravel() * voxel_size_A[2]], axis=1)
    local = atoms.xyz - np.asarray(origin_xyz)
    radii = np.array([VDW_RADII_A.get(str(e), 1.775) for e in atoms.element])
    margin = np.full(len(points), np.inf)  # min over atoms of (distance - vdW radius)
    for radius in np.unique(radii):
        tree = cKDTree(local[radii == radius])
        distance, _ = tree.query(points, distance_upper_bound=radius + solvent_radius_A + 1.0)
        margin = np.minimum(margin, distance - radius)
    margin = margin.reshape(shape_zyx)
    core = margin < 0
    solvent = margin >= solvent_radius_A
    to_solvent = ndimage.distance_transform_edt(~solvent, sampling=voxel_size_A[::-1])
    return core | (~solvent & (to_solvent > shrink_radius_A))
