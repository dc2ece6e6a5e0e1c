"""Experimental-like maps simulated from models alone (``prepare-data --simulate-from``).

The degradation model, applied to every model with its own random draw:

1. heavy atoms shifted by a random sub-voxel offset (0–1 Å per axis);
2. eq. 1 at a random resolution of 4–8 Å, each atom widened by a per-residue B-factor
   ``B_global × lognormal(0, 0.5)`` with ``B_global`` in 20–120 Å² (flexible loops blur more);
3. 0–3 detergent/solvent-like blobs: smooth Gaussians of σ 5–10 Å, 10–30 % of the peak
   density, centred 8–20 Å outside a random atom;
4. a smooth solvent background (Gaussian-filtered noise, σ 6 Å, 3 % of the peak);
5. ``basic``: noise whose radial power spectrum follows a real map's (``noise_reference``),
   scaled to a random signal-to-noise ratio (signal s.d. / noise s.d.) of 0.7–3.
   ``realistic``: noise set shell by shell from the map's own signal, so that the
   signal-to-noise ratio is that of an FSC = 0.143 shell at the drawn resolution and rises
   towards low frequencies as ``exp(snr_b · (1/R² − s²))`` (``snr_b`` 4–12 R²: a half-map
   FSC of 0.6–0.97 at 1.5 R), as a reconstruction's does; beyond R the noise stays flat.
   (The reference's spectrum, emd_6824's, is itself low-passed near 8 Å: noise shaped by it
   left the simulated maps with a signal-to-noise ratio of ~350 at their drawn resolution, a
   thousand times a real map's.)

``realistic`` draws (``prepare-data --degradation realistic``, the default) add what deposited
maps have and steps 1–5 lack, as measured by ``benchmarks/simulation_realism.py`` (real maps
are sharpened, low-passed, mostly masked, and their resolution varies across the molecule
and with direction):

6. local resolution: atoms further from the model's centre are blurred more, by up to
   ``b_periphery`` (0–150 Å²) at the rim, growing with the squared distance; in half of the
   maps the density also fades towards the rim, to ``rim_occupancy`` (0.3–1) of its strength
   at the furthest atom (partial occupancy: subunits or domains present in only part of the
   particles), while the target keeps every atom at full strength;
7. anisotropy (half of the maps): an extra B of 0–150 Å² along one random direction, as a
   preferred orientation leaves;
8. post-processing: 70 % of the maps sharpened by 50–100 % of their fitted B and low-passed
   with a cosine edge from 0.75/R to 1/R (as depositors' FSC weighting does), the rest
   low-passed so or left raw;
9. masking (75 % of the maps): a soft mask 3–8 Å beyond the atoms, zero outside.

The target is eq. 1 without the B-factors, on the same 1 Å grid, at 2 Å (the paper) or at
the map's drawn resolution (``prepare-data --target-resolution input``).
(Real maps brought to a lower resolution: :mod:`cryosamu_cli.data.real_degradation`.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from cryosamu_cli import mapio
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.metrics import SNR_AT_FSC_THRESHOLD
from cryosamu_cli.model.config import TRAINED_RESOLUTION_RANGE_A
from cryosamu_cli.grid import band_limit, bfactor_sharpen, fitted_b_factor, shell_index, soft_mask
from cryosamu_cli.data.map_statistics import radial_power_spectrum
from cryosamu_cli.simulate import simulate_density
from cryosamu_cli.structure import Atoms

MARGIN_A = 12.0
DEGRADATION_KINDS = ("realistic", "basic")
# The low-pass of simulated post-processing: a cosine from 0.75/R to 1/R, the roll-off that
# FSC weighting gives a deposited map towards its resolution.
POST_PROCESS_EDGE = (0.75, 1.0)


@dataclass(frozen=True)
class Degradation:
    """The random draw behind one simulated map (recorded in the manifest)."""

    resolution_A: float
    b_global: float
    shift_A: tuple[float, float, float]
    blobs: int
    snr: float
    # realistic draws only (zero/False: not applied)
    b_periphery: float = 0.0
    b_anisotropic: float = 0.0
    anisotropy_direction_xyz: tuple[float, float, float] = (0.0, 0.0, 1.0)
    sharpen_fraction: float = 0.0
    low_pass: bool = False
    mask_radius_A: float = 0.0
    snr_b: float = 0.0  # the noise of step 5, realistic: the B (Å²) of the SNR's rise
    rim_occupancy: float = 1.0  # step 6: the density's strength at the furthest atom

    def to_dict(self) -> dict:
        return {k: ([round(x, 4) for x in v] if isinstance(v, tuple)
                    else round(v, 4) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}


def shaped_noise(shape_zyx: tuple[int, int, int], voxel_A: float, reference: tuple,
                 rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise whose radial power spectrum follows ``reference`` (frequency,
    power); beyond the reference's highest frequency its last value is used."""
    return shaped_noise_on(shape_zyx, (voxel_A,) * 3, reference, rng)


SNR_AT_RESOLUTION = SNR_AT_FSC_THRESHOLD  # the SNR a degraded map has in its resolution's shell
# realistic noise: the SNR rises as exp(B (1/R² − s²)) below 1/R, B = k R² with k drawn here:
# from 1/R to 1/(1.5 R) a half-map FSC then rises from 0.143 to 0.6-0.97, as real curves do
SNR_RISE_RANGE = (4.0, 12.0)
MAX_SNR = 1000.0  # ... up to this (a half-map FSC of 0.998), so no shell is noise-free
RIM_OCCUPANCY_RANGE = (0.3, 1.0)  # realistic step 6: the density's strength at the rim


def shaped_noise_on(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                    reference: tuple, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise with the ``reference`` radial power spectrum on any grid."""
    white = np.fft.rfftn(rng.standard_normal(shape_zyx))
    shells, width = shell_index(shape_zyx, voxel_size_zyx)
    frequency, power = reference
    noise = np.fft.irfftn(white * np.sqrt(np.interp(shells * width, frequency, power)),
                          s=shape_zyx, axes=(0, 1, 2))
    return (noise / noise.std()).astype(np.float32)


def shell_power(volume: np.ndarray, voxel_size_zyx: tuple[float, ...],
                resolution_A: float) -> float:
    """Mean Fourier power of ``volume`` in the shell at 1 / ``resolution_A``."""
    frequency, power = radial_power_spectrum(volume, voxel_size_zyx)
    return float(np.interp(1.0 / resolution_A, frequency, power))


def check_kind(kind: str) -> str:
    """``kind`` if it names a degradation model.

    Raises:
        ConfigError: It does not.
    """
    if kind not in DEGRADATION_KINDS:
        raise ConfigError(f"unknown degradation {kind!r}: use one of {', '.join(DEGRADATION_KINDS)}")
    return kind


def draw(rng: np.random.Generator, kind: str = "basic") -> Degradation:
    """One random degradation: steps 1–5 (``basic``), or 1–9 (``realistic``)."""
    basic = dict(resolution_A=float(rng.uniform(*TRAINED_RESOLUTION_RANGE_A)),
                 b_global=float(rng.uniform(20.0, 120.0)),
                 shift_A=tuple(float(x) for x in rng.uniform(0.0, 1.0, 3)),
                 blobs=int(rng.integers(0, 4)), snr=float(rng.uniform(0.7, 3.0)))
    if check_kind(kind) == "basic":
        return Degradation(**basic)
    direction = rng.standard_normal(3)
    sharpen = rng.random() < 0.7
    return Degradation(
        **basic, b_periphery=float(rng.uniform(0.0, 150.0)),
        b_anisotropic=float(rng.uniform(0.0, 150.0)) if rng.random() < 0.5 else 0.0,
        anisotropy_direction_xyz=tuple(float(x) for x in direction / np.linalg.norm(direction)),
        sharpen_fraction=float(rng.uniform(0.5, 1.0)) if sharpen else 0.0,
        low_pass=bool(sharpen or rng.random() < 0.5),
        mask_radius_A=float(rng.uniform(3.0, 8.0)) if rng.random() < 0.75 else 0.0,
        snr_b=float(rng.uniform(*SNR_RISE_RANGE)) * basic["resolution_A"] ** 2,
        rim_occupancy=float(rng.uniform(*RIM_OCCUPANCY_RANGE)) if rng.random() < 0.5 else 1.0)


def simulated_pair(atoms: Atoms, reference: tuple | None, rng: np.random.Generator,
                   target_resolution_A: float | None = 2.0, kind: str = "basic",
                   ) -> tuple[np.ndarray, np.ndarray, mapio.GridInfo, Degradation]:
    """An experimental-like map and its eq. 1 target for one model, on a 1 Å grid; the target
    is at ``target_resolution_A`` (None: the map's own drawn resolution), without B-factors.
    ``kind``: the degradation model, ``basic`` (steps 1–5; its noise follows ``reference``)
    or ``realistic`` (1–9).

    Returns:
        ``(map, target, grid, degradation)``; both volumes are raw (not normalised).
    """
    signal, noise, low, params = simulated_parts(atoms, reference, rng, kind)
    experimental = post_processed(signal + noise, atoms.xyz - low, params)
    target = simulate_density(atoms.xyz, atoms.atomic_number, signal.shape, (1.0, 1.0, 1.0),
                              tuple(low), target_resolution_A or params.resolution_A)
    return experimental.astype(np.float32), target, _grid_of(signal.shape, low), params


def simulated_parts(atoms: Atoms, reference: tuple | None, rng: np.random.Generator,
                    kind: str = "basic",
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Degradation]:
    """Steps 1–6 of one draw, before post-processing, with the signal (density, blobs, solvent
    background) and the noise apart, on a 1 Å grid whose first voxel lies at ``low`` (xyz,
    Å): their sum is what :func:`simulated_pair` post-processes; apart they give the map's
    true signal-to-noise ratio per shell (``benchmarks/simulation_realism.py``).

    Returns:
        ``(signal, noise, low, degradation)``.
    """
    params = draw(rng, kind)
    low = atoms.xyz.min(axis=0) - MARGIN_A - np.asarray(params.shift_A)
    shape_xyz = np.ceil(atoms.xyz.max(axis=0) + MARGIN_A - low).astype(int) + 1
    shape = tuple(int(n) for n in shape_xyz[::-1])
    residue_factor = rng.lognormal(0.0, 0.5, len(atoms.residues))
    extra_b = (params.b_global * residue_factor[atoms.residue_index]
               + params.b_periphery * _squared_rim_distance(atoms.xyz))
    occupancy = 1.0 - (1.0 - params.rim_occupancy) * _squared_rim_distance(atoms.xyz)
    clean = simulate_density(atoms.xyz, atoms.atomic_number * occupancy, shape, (1.0, 1.0, 1.0),
                             tuple(low), params.resolution_A, extra_b=extra_b)
    signal = clean + _blobs(atoms, low, shape, clean.max(), params.blobs, rng)
    signal += 0.03 * clean.max() * _smooth_unit_noise(shape, 6.0, rng)
    noise = (resolution_calibrated_noise(signal, params.resolution_A, params.snr_b, rng)
             if params.snr_b > 0 else
             clean.std() / params.snr * shaped_noise(shape, 1.0, reference, rng))
    return signal, noise, low, params


def resolution_calibrated_noise(signal: np.ndarray, resolution_A: float, snr_b: float,
                                rng: np.random.Generator) -> np.ndarray:
    """Noise for a 1 Å ``signal`` whose shell-by-shell signal-to-noise ratio is that of an
    FSC = 0.143 shell at ``resolution_A`` and ``exp(snr_b · (1/R² − s²))`` times it elsewhere
    (at most :data:`MAX_SNR`) below it; beyond it the noise power stays at its level at 1/R
    (as a reconstruction's noise does, while the signal fades): the information ends at the
    map's resolution, whatever the signal's own spectrum."""
    frequency, power = radial_power_spectrum(signal, (1.0, 1.0, 1.0))
    rise = np.minimum(snr_b * (1.0 / resolution_A ** 2 - frequency ** 2),
                      np.log(MAX_SNR / SNR_AT_RESOLUTION))
    noise_power = power / np.exp(rise)
    beyond = frequency > 1.0 / resolution_A
    noise_power[beyond] = np.interp(1.0 / resolution_A, frequency, noise_power)
    noise = shaped_noise_on(signal.shape, (1.0, 1.0, 1.0), (frequency, noise_power), rng)
    signal_power_at_r = float(np.interp(1.0 / resolution_A, frequency, power))
    noise_sd = np.sqrt(signal_power_at_r / (shell_power(noise, (1.0, 1.0, 1.0), resolution_A)
                                            * SNR_AT_RESOLUTION))
    return (noise_sd * noise).astype(np.float32)


def _squared_rim_distance(xyz: np.ndarray) -> np.ndarray:
    """Per atom, the squared distance from the model's centre over the furthest atom's: 0 at
    the centre, 1 at the rim (how local resolution and occupancy fall in step 6)."""
    distance2 = ((xyz - xyz.mean(axis=0)) ** 2).sum(axis=1)
    return distance2 / max(float(distance2.max()), 1e-12)


def post_processed(volume: np.ndarray, local_xyz: np.ndarray,
                   params: Degradation) -> np.ndarray:
    """Steps 7–9 on a 1 Å map whose first voxel is at the origin of ``local_xyz``."""
    if params.b_anisotropic > 0:
        volume = anisotropic_blur(volume, params.b_anisotropic, params.anisotropy_direction_xyz)
    b_sharpen = (params.sharpen_fraction * fitted_b_factor(volume, (1.0, 1.0, 1.0),
                                                          params.resolution_A)
                 if params.sharpen_fraction > 0 else 0.0)  # no FFT for unsharpened maps
    if params.low_pass:
        volume = band_limit(volume, (1.0, 1.0, 1.0), params.resolution_A, POST_PROCESS_EDGE)
    if b_sharpen > 0:  # after the low-pass (always drawn with sharpening): nothing beyond R
        volume, _ = bfactor_sharpen(volume, (1.0, 1.0, 1.0), params.resolution_A, b_sharpen)
    if params.mask_radius_A > 0:
        volume = volume * molecular_envelope(local_xyz, volume.shape, params.mask_radius_A)
    return volume.astype(np.float32)


def anisotropic_blur(volume: np.ndarray, b_factor: float,
                     direction_xyz: tuple[float, float, float]) -> np.ndarray:
    """Blur a 1 Å map by ``exp(-B (s·n)² / 4)``: B-factor ``b_factor`` along the unit vector
    ``direction_xyz`` only (resolution worse along one direction)."""
    nz, ny, nx = volume.shape
    fz = np.fft.fftfreq(nz)[:, None, None]
    fy = np.fft.fftfreq(ny)[None, :, None]
    fx = np.fft.rfftfreq(nx)[None, None, :]
    dx, dy, dz = direction_xyz
    along = fx * dx + fy * dy + fz * dz
    spectrum = np.fft.rfftn(volume) * np.exp(-b_factor * along ** 2 / 4.0)
    return np.fft.irfftn(spectrum, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def molecular_envelope(local_xyz: np.ndarray, shape_zyx: tuple[int, ...], radius_A: float,
                       edge_voxels: float = 3.0) -> np.ndarray:
    """A soft mask (1 Å grid) within ``radius_A`` of any atom, falling to 0 over
    ``edge_voxels``: the mask depositors apply to a map."""
    occupied = np.zeros(shape_zyx, bool)
    index = np.clip(np.round(local_xyz[:, ::-1]).astype(int), 0, np.array(shape_zyx) - 1)
    occupied[tuple(index.T)] = True
    near = ndimage.distance_transform_edt(~occupied) <= radius_A
    return soft_mask(near, edge_voxels=edge_voxels)


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
