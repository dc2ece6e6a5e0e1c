"""Experimental-like maps simulated from models alone (``prepare-data --simulate-from``).

The degradation model, applied to every model with its own random draw:

1. heavy atoms shifted by a random sub-voxel offset (0–1 Å per axis);
2. eq. 1 at a random resolution of 4–8 Å, each atom widened by a per-residue B-factor
   ``B_global × lognormal(0, 0.5)`` with ``B_global`` in 20–120 Å² (flexible loops blur more);
3. 0–3 detergent/solvent-like blobs: smooth Gaussians of σ 5–10 Å, 10–30 % of the peak
   density, centred 8–20 Å outside a random atom;
4. a smooth solvent background (Gaussian-filtered noise, σ 6 Å, 3 % of the peak);
5. noise whose radial power spectrum follows a real map's (``noise_reference``), scaled to a
   random signal-to-noise ratio (signal s.d. / noise s.d.) of 0.7–3.

The target is eq. 1 without the B-factors, on the same 1 Å grid, at 2 Å (the paper) or at
the map's drawn resolution (``prepare-data --target-resolution input``).

Real maps at 3–4 Å are brought to a chosen 4–8 Å resolution by :func:`degraded_real_map`
(validation and training pairs that keep everything a real map has: solvent, masking,
unmodelled density, local resolution): a B-factor blur, noise with the map's own radial power
spectrum scaled so that the signal-to-noise ratio of the shell at the new resolution is that of
a map whose half-map FSC crosses 0.143 there, and the low-pass at that resolution that
depositors' post-processing applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from cryosamu_cli import mapio, metrics
from cryosamu_cli.grid import band_limit, bfactor_sharpen
from cryosamu_cli.simulate import simulate_density
from cryosamu_cli.structure import Atoms

MARGIN_A = 12.0


@dataclass(frozen=True)
class Degradation:
    """The random draw behind one simulated map (recorded in the manifest)."""

    resolution_A: float
    b_global: float
    shift_A: tuple[float, float, float]
    blobs: int
    snr: float

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else round(v, 4) if isinstance(v, float)
                    else v) for k, v in asdict(self).items()}


def radial_power_spectrum(volume: np.ndarray,
                          voxel_size_zyx: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean power per Fourier shell: ``(frequency in 1/Å, power)``, up to Nyquist."""
    shells, width = metrics.shell_index(volume.shape, voxel_size_zyx)
    spectrum = np.abs(np.fft.rfftn(volume - volume.mean())) ** 2
    n_shells = int(min(0.5 / v for v in voxel_size_zyx) / width) + 1
    flat, keep = shells.ravel(), shells.ravel() < n_shells
    power = np.bincount(flat[keep], weights=spectrum.ravel()[keep], minlength=n_shells)
    counts = np.bincount(flat[keep], minlength=n_shells)
    return np.arange(n_shells) * width, power / np.maximum(counts, 1)


def shaped_noise(shape_zyx: tuple[int, int, int], voxel_A: float, reference: tuple,
                 rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise whose radial power spectrum follows ``reference`` (frequency,
    power); beyond the reference's highest frequency its last value is used."""
    return _shaped_noise_on(shape_zyx, (voxel_A,) * 3, reference, rng)


# A full map whose half maps correlate 0.143 in a shell has SNR 2 * 0.143 / (1 - 0.143) there.
SNR_AT_RESOLUTION = 2 * 0.143 / (1 - 0.143)


@dataclass(frozen=True)
class RealDegradation:
    """How a real map was brought to a lower resolution (recorded with the pair)."""

    resolution_A: float
    b_blur: float
    noise_sd: float
    low_pass: bool
    seed: int

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def degraded_real_map(data: np.ndarray, voxel_size_zyx: tuple[float, ...], resolution_A: float,
                      seed: int, b_blur: float | None = None, low_pass: bool = True,
                      ) -> tuple[np.ndarray, RealDegradation]:
    """A real map ``data[z, y, x]`` brought to ``resolution_A``: blurred by ``b_blur`` (default
    ``2 R²`` Å², the amplitude at 1/R falls to e^-0.5), plus noise shaped like the map's own
    radial power spectrum at the SNR of an FSC = 0.143 shell at 1/R, and (``low_pass``)
    truncated at R as post-processed deposited maps are.

    Returns:
        ``(degraded map, record)``; the map keeps the input's shape and units.
    """
    rng = np.random.default_rng(seed)
    b_blur = 2.0 * resolution_A ** 2 if b_blur is None else b_blur
    blurred, _ = bfactor_sharpen(data, voxel_size_zyx, 1.0, b_factor=-b_blur)
    reference = radial_power_spectrum(data, voxel_size_zyx)
    noise = _shaped_noise_on(data.shape, voxel_size_zyx, reference, rng)
    signal_power = _shell_power(blurred, voxel_size_zyx, resolution_A)
    noise_power = _shell_power(noise, voxel_size_zyx, resolution_A)
    noise_sd = float(np.sqrt(signal_power / (noise_power * SNR_AT_RESOLUTION)))
    degraded = blurred + noise_sd * noise
    if low_pass:
        degraded = band_limit(degraded, voxel_size_zyx, resolution_A)
    return degraded.astype(np.float32), RealDegradation(resolution_A, float(b_blur), noise_sd,
                                                        low_pass, seed)


def _shaped_noise_on(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                     reference: tuple, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise with the ``reference`` radial power spectrum on any grid."""
    white = np.fft.rfftn(rng.standard_normal(shape_zyx))
    shells, width = metrics.shell_index(shape_zyx, voxel_size_zyx)
    frequency, power = reference
    noise = np.fft.irfftn(white * np.sqrt(np.interp(shells * width, frequency, power)),
                          s=shape_zyx, axes=(0, 1, 2))
    return (noise / noise.std()).astype(np.float32)


def _shell_power(volume: np.ndarray, voxel_size_zyx: tuple[float, ...],
                 resolution_A: float) -> float:
    """Mean Fourier power of ``volume`` in the shell at 1 / ``resolution_A``."""
    frequency, power = radial_power_spectrum(volume, voxel_size_zyx)
    return float(np.interp(1.0 / resolution_A, frequency, power))


def draw(rng: np.random.Generator) -> Degradation:
    """One random degradation."""
    return Degradation(resolution_A=float(rng.uniform(4.0, 8.0)),
                       b_global=float(rng.uniform(20.0, 120.0)),
                       shift_A=tuple(float(x) for x in rng.uniform(0.0, 1.0, 3)),
                       blobs=int(rng.integers(0, 4)), snr=float(rng.uniform(0.7, 3.0)))


def simulated_pair(atoms: Atoms, reference: tuple, rng: np.random.Generator,
                   target_resolution_A: float | None = 2.0,
                   ) -> tuple[np.ndarray, np.ndarray, mapio.GridInfo, Degradation]:
    """An experimental-like map and its eq. 1 target for one model, on a 1 Å grid; the target
    is at ``target_resolution_A`` (None: the map's own drawn resolution), without B-factors.

    Returns:
        ``(map, target, grid, degradation)``; both volumes are raw (not normalised).
    """
    params = draw(rng)
    low = atoms.xyz.min(axis=0) - MARGIN_A - np.asarray(params.shift_A)
    shape_xyz = np.ceil(atoms.xyz.max(axis=0) + MARGIN_A - low).astype(int) + 1
    shape = tuple(int(n) for n in shape_xyz[::-1])
    geometry = (shape, (1.0, 1.0, 1.0), tuple(low))
    residue_factor = rng.lognormal(0.0, 0.5, len(atoms.residues))
    extra_b = params.b_global * residue_factor[atoms.residue_index]
    clean = simulate_density(atoms.xyz, atoms.atomic_number, *geometry, params.resolution_A,
                             extra_b=extra_b)
    experimental = clean + _blobs(atoms, low, shape, clean.max(), params.blobs, rng)
    experimental += 0.03 * clean.max() * _smooth_unit_noise(shape, 6.0, rng)
    experimental += clean.std() / params.snr * shaped_noise(shape, 1.0, reference, rng)
    target = simulate_density(atoms.xyz, atoms.atomic_number, *geometry,
                              target_resolution_A or params.resolution_A)
    return experimental.astype(np.float32), target, _grid_of(shape, low), params


def _blobs(atoms: Atoms, low: np.ndarray, shape: tuple[int, int, int], peak: float, count: int,
           rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian blobs just outside the model (detergent, lipids, unmodelled parts)."""
    volume = np.zeros(shape, np.float32)
    for _ in range(count):
        anchor = atoms.xyz[rng.integers(len(atoms.xyz))]
        direction = rng.standard_normal(3)
        centre = anchor + direction / np.linalg.norm(direction) * rng.uniform(8.0, 20.0)
        sigma = rng.uniform(5.0, 10.0)
        z, y, x = (np.arange(n) for n in shape)
        cx, cy, cz = centre - low
        profile = [np.exp(-(axis - c) ** 2 / (2 * sigma ** 2)) for axis, c in
                   ((z, cz), (y, cy), (x, cx))]
        volume += rng.uniform(0.1, 0.3) * peak * np.einsum("i,j,k->ijk", *profile)
    return volume


def _smooth_unit_noise(shape: tuple[int, int, int], sigma: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered noise scaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (noise / noise.std()).astype(np.float32)


def _grid_of(shape_zyx: tuple[int, int, int], low_xyz: np.ndarray) -> mapio.GridInfo:
    """A 1 Å grid whose first voxel lies at ``low_xyz``."""
    nz, ny, nx = shape_zyx
    return mapio.GridInfo(shape_zyx, (1.0, 1.0, 1.0), tuple(float(v) for v in low_xyz),
                          (0, 0, 0), (float(nx), float(ny), float(nz)), (90.0, 90.0, 90.0),
                          (nx, ny, nz), (1, 2, 3), 1, ("cryosamu simulated map",))
