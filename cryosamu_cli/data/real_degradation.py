"""Real maps brought to a lower resolution: validation maps and degraded training pairs
(``prepare-data --degrade-real``) that keep everything a real map has (solvent, masking,
unmodelled density, local resolution).

:func:`degraded_real_map` brings a real map at 3–4 Å to a chosen 4–8 Å: a B-factor blur, noise
with the map's own radial power spectrum scaled so that the signal-to-noise ratio of the shell
at the new resolution is that of a map whose half-map FSC crosses 0.143 there, the low-pass at
that resolution that depositors' post-processing applies, and (``keep_mask``) the input's own
mask put back. :func:`deposited_like_map` adds a resolution falling towards the rim and a soft
mask; :func:`faded_rim_map` a density fading towards the rim.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from cryosamu_cli.data.degrade import SNR_AT_RESOLUTION, shaped_noise_on, shell_power
from cryosamu_cli.data.map_statistics import background_mask, radial_power_spectrum
from cryosamu_cli.grid import band_limit, bfactor_sharpen, soft_mask


@dataclass(frozen=True)
class RealDegradation:
    """How a real map was brought to a lower resolution (recorded with the pair)."""

    resolution_A: float
    b_blur: float
    noise_sd: float
    low_pass: bool
    seed: int
    masked: bool = False
    rim_resolution_A: float | None = None  # deposited-like maps: the resolution at the rim
    rim_strength: float = 1.0  # weak-rim maps: the density's strength at the rim

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def degraded_real_map(data: np.ndarray, voxel_size_zyx: tuple[float, ...], resolution_A: float,
                      seed: int, b_blur: float | None = None, low_pass: bool = True,
                      keep_mask: bool = False) -> tuple[np.ndarray, RealDegradation]:
    """A real map ``data[z, y, x]`` brought to ``resolution_A``: blurred by ``b_blur`` (default
    ``2 R²`` Å², the amplitude at 1/R falls to e^-0.5), plus noise shaped like the map's own
    radial power spectrum at the SNR of an FSC = 0.143 shell at 1/R, (``low_pass``)
    truncated at R as post-processed deposited maps are, and (``keep_mask``) set back to the
    input's constant outside the input's mask (a soft edge of 2 voxels) when it is masked.

    Returns:
        ``(degraded map, record)``; the map keeps the input's shape and units.
    """
    rng = np.random.default_rng(seed)
    b_blur = 2.0 * resolution_A ** 2 if b_blur is None else b_blur
    blurred, _ = bfactor_sharpen(data, voxel_size_zyx, 1.0, b_factor=-b_blur)
    reference = radial_power_spectrum(data, voxel_size_zyx)
    noise = shaped_noise_on(data.shape, voxel_size_zyx, reference, rng)
    signal_power = shell_power(blurred, voxel_size_zyx, resolution_A)
    noise_power = shell_power(noise, voxel_size_zyx, resolution_A)
    noise_sd = float(np.sqrt(signal_power / (noise_power * SNR_AT_RESOLUTION)))
    degraded = blurred + noise_sd * noise
    if low_pass:
        degraded = band_limit(degraded, voxel_size_zyx, resolution_A)
    mask = background_mask(data) if keep_mask else None
    if mask is not None:
        inside, background = mask
        degraded = background + (degraded - background) * soft_mask(inside, edge_voxels=2.0)
    return degraded.astype(np.float32), RealDegradation(resolution_A, float(b_blur), noise_sd,
                                                        low_pass, seed, mask is not None)


RIM_FACTOR = 1.5  # deposited-like maps: the rim's resolution over the centre's


def deposited_like_map(data: np.ndarray, voxel_size_zyx: tuple[float, ...], resolution_A: float,
                       seed: int, rim_factor: float = RIM_FACTOR,
                       ) -> tuple[np.ndarray, RealDegradation]:
    """A real map ``data[z, y, x]`` made like a deposited one: ``resolution_A`` at the centre
    falling to ``rim_factor`` times it at the rim (two :func:`degraded_real_map` copies
    blended by :func:`box_rim_weight`), low-passed at ``resolution_A`` as post-processing
    does, and masked softly around the molecule (the input's own mask when it has one, else
    the map's molecular envelope with a 3-voxel soft edge)."""
    from cryosamu_cli.enhance.resolution_estimate import molecule_and_solvent

    inner, record = degraded_real_map(data, voxel_size_zyx, resolution_A, seed, low_pass=False)
    outer, _ = degraded_real_map(data, voxel_size_zyx, rim_factor * resolution_A, seed + 1,
                                 low_pass=False)
    rim_weight = box_rim_weight(data.shape, voxel_size_zyx)
    blended = band_limit((1 - rim_weight) * inner + rim_weight * outer, voxel_size_zyx,
                         resolution_A)
    mask = background_mask(data)
    if mask is not None:
        inside, background = mask
        blended = background + (blended - background) * soft_mask(inside, edge_voxels=2.0)
    else:
        molecule, _ = molecule_and_solvent(data, voxel_size_zyx)
        blended = blended * soft_mask(molecule > 0.5, edge_voxels=3.0)
    return blended.astype(np.float32), replace(record, low_pass=True, masked=True,
                                               rim_resolution_A=rim_factor * resolution_A)


RIM_START = 0.6  # the rim begins at this fraction of the box's largest centre distance


def box_rim_weight(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...]) -> np.ndarray:
    """Per voxel, 0 at the box centre rising linearly with the distance from it to 1 at
    :data:`RIM_START` of the largest distance (the corners), and 1 beyond: where a map's rim
    is, for the real-map degradations."""
    index = np.indices(shape_zyx, dtype=np.float32)
    radius = np.sqrt(sum(((index[a] - (n - 1) / 2) * voxel_size_zyx[a]) ** 2
                         for a, n in enumerate(shape_zyx)))
    return np.clip(radius / (RIM_START * radius.max()), 0.0, 1.0)


def faded_rim_map(data: np.ndarray, voxel_size_zyx: tuple[float, ...],
                  rim_strength: float) -> np.ndarray:
    """A real map ``data[z, y, x]`` whose density above the solvent fades from full strength
    at the box centre to ``rim_strength`` of it at the rim (:func:`box_rim_weight`): a
    periphery present in only part of the particles. The solvent level is the median of the
    rim's voxels."""
    rim_weight = box_rim_weight(data.shape, voxel_size_zyx)
    solvent = float(np.median(data[rim_weight >= 1.0]))
    strength = 1.0 - (1.0 - rim_strength) * rim_weight
    return (solvent + (data - solvent) * strength).astype(np.float32)
