"""What a density map looks like, in a few numbers: its radial amplitude fall-off and its
density histogram. Used to compare simulated training maps with real deposited ones
(``benchmarks/simulation_realism.py``).

Amplitudes are taken relative to the mean amplitude of the shell at 1/15 Å, so maps at any
scale compare; frequencies are given as multiples of the map's resolution ``1/R``, so maps at
different resolutions compare. The histogram is of the map in units of its standard deviation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from cryosamu_cli import grid

REFERENCE_SHELL_A = 15.0
# Frequencies, as multiples of 1/R, at which the relative amplitude is reported.
FALL_OFF_POINTS = (0.5, 1.0, 1.25)
# A map whose most frequent value covers at least this fraction of its voxels is masked.
MASKED_FRACTION = 0.2


@dataclass(frozen=True)
class MapStatistics:
    """The spectral and histogram figures of one map (NaN where a frequency is beyond Nyquist)."""

    amplitude_half_R: float
    amplitude_at_R: float
    amplitude_beyond_R: float
    flat_fraction: float
    skewness: float
    kurtosis: float
    below_minus_1sd: float
    above_2sd: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def map_statistics(data: np.ndarray, voxel_size_zyx: tuple[float, ...],
                   resolution_A: float) -> MapStatistics:
    """The :class:`MapStatistics` of ``data[z, y, x]`` at its resolution ``resolution_A``.

    ``flat_fraction`` is the fraction of voxels holding the map's most frequent value (the
    constant outside a mask; about 0 for an unmasked map); the histogram figures are of all
    voxels, as a viewer shows them.
    """
    amplitudes = relative_amplitudes(data, voxel_size_zyx,
                                     [k / resolution_A for k in FALL_OFF_POINTS])
    z_scores = ((data - data.mean()) / max(float(data.std()), 1e-12)).ravel()
    return MapStatistics(*amplitudes, flat_fraction=flat_fraction(data),
                         skewness=float(stats.skew(z_scores)),
                         kurtosis=float(stats.kurtosis(z_scores)),
                         below_minus_1sd=float(np.mean(z_scores < -1.0)),
                         above_2sd=float(np.mean(z_scores > 2.0)))


def radial_power_spectrum(volume: np.ndarray,
                          voxel_size_zyx: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean power per Fourier shell: ``(frequency in 1/Å, power)``, up to Nyquist."""
    shells, width = grid.shell_index(volume.shape, voxel_size_zyx)
    spectrum = np.abs(np.fft.rfftn(volume - volume.mean())) ** 2
    n_shells = int(min(0.5 / v for v in voxel_size_zyx) / width) + 1
    flat, keep = shells.ravel(), shells.ravel() < n_shells
    power = np.bincount(flat[keep], weights=spectrum.ravel()[keep], minlength=n_shells)
    counts = np.bincount(flat[keep], minlength=n_shells)
    return np.arange(n_shells) * width, power / np.maximum(counts, 1)


def relative_amplitudes(data: np.ndarray, voxel_size_zyx: tuple[float, ...],
                        frequencies_per_A: list[float]) -> list[float]:
    """Mean shell amplitude at each frequency over that at 1/15 Å (NaN beyond Nyquist)."""
    frequency, power = radial_power_spectrum(data, voxel_size_zyx)
    amplitude = np.sqrt(power)
    reference = float(np.interp(1.0 / REFERENCE_SHELL_A, frequency, amplitude))
    return [float(np.interp(f, frequency, amplitude)) / max(reference, 1e-30)
            if f <= frequency[-1] else float("nan") for f in frequencies_per_A]


def flat_fraction(data: np.ndarray) -> float:
    """The fraction of voxels equal to the map's most frequent value."""
    _, counts = np.unique(data, return_counts=True)
    return float(counts.max() / data.size)


def background_mask(data: np.ndarray) -> tuple[np.ndarray, float] | None:
    """``(inside, background value)`` of a masked map (the most frequent value covers at least
    :data:`MASKED_FRACTION` of it), or None for an unmasked map."""
    values, counts = np.unique(data, return_counts=True)
    if counts.max() < MASKED_FRACTION * data.size:
        return None
    background = float(values[counts.argmax()])
    return data != background, background


def spectral_distance(a: MapStatistics, b: MapStatistics) -> float:
    """Mean |log10| ratio of two maps' relative amplitudes (the points both have)."""
    pairs = [(x, y) for x, y in zip((a.amplitude_half_R, a.amplitude_at_R, a.amplitude_beyond_R),
                                    (b.amplitude_half_R, b.amplitude_at_R, b.amplitude_beyond_R))
             if np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0]
    if not pairs:
        return float("nan")
    return float(np.mean([abs(np.log10(x / y)) for x, y in pairs]))
