"""The resolution of a map estimated from the map alone (when no value, half maps or EMDB
header says it).

Two signatures of the resolution:

1. **The post-processing edge.** A deposited map is usually low-passed at its FSC resolution
   (RELION, cryoSPARC, and the FSC weighting that rolls the amplitudes off towards it). Its
   rotationally averaged amplitude spectrum then falls by orders of magnitude within a few
   shells (less steeply, but still far more than a B-factor does, after a soft mask): the
   frequency of the steepest fall is ``1/R``.
2. **Where the signal meets the noise.** In a raw map the noise also fills the solvent. The
   power per voxel inside the molecule (signal + noise) and in the solvent (noise) give the
   spectral signal-to-noise ratio of the whole box; ``R`` is where a line fitted to its log
   against s² falls to that of an FSC = 0.143 shell, ``2 · 0.143 / (1 − 0.143)`` (as MonoRes
   compares molecule and solvent, here one global figure).

The edge is the answer when there is one, unless the measured SNR falls to the threshold
``EDGE_OVERRIDE`` times coarser than it: signal lost in the noise well before a low-pass edge
says the edge is an earlier low-pass, not the map's resolution (then 2, below the edge).
Where neither a clear edge nor the solvent gives an answer (a small masked box: few shells
spread its edge, and its solvent is masked away), a weaker edge is taken with low confidence.

A map with neither (no edge; no solvent, or no signal above the solvent's noise) has no
estimate: :class:`ResolutionUnknownError` says so and how to give the resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryosamu_cli.data.map_statistics import background_mask
from cryosamu_cli.errors import ResolutionUnknownError
from cryosamu_cli import grid as grid_ops
from cryosamu_cli.grid import shell_index
from cryosamu_cli.metrics import SNR_AT_FSC_THRESHOLD

SNR_AT_RESOLUTION = SNR_AT_FSC_THRESHOLD  # a full map's SNR where its half maps' FSC is 0.143
COARSEST_A = 12.0  # no estimate coarser than this (the model works at 4–8 Å)
MAX_EDGE_VOXELS = 256  # larger maps are estimated on their central 256³ box
EDGE_MIN_SLOPE = 4.0  # decades of amplitude per e-fold of frequency: a low-pass edge, not a B
# A weaker edge (a small masked box spreads it over few shells), still ~6x a B-factor's fall:
# taken, with low confidence, only where the signal/noise in the solvent gives nothing
WEAK_EDGE_MIN_SLOPE = 2.5
EDGE_OVERRIDE = 1.3  # the noise must meet the signal this far below an edge to overrule it
MIN_SOLVENT_FRACTION = 0.08  # of the box, for the signal-to-noise estimate
FIT_SNR_RANGE = (0.08, 1.2)  # the shells around the threshold that the line is fitted to
# The molecule, for the signal/noise estimate: above the mean + this many s.d. (a higher
# threshold leaves a large molecule's weaker parts in the "solvent", read as noise)
SNR_CORE_SD = 1.25
CONFIDENT_FIT_RESIDUAL = 0.35  # s.d. of ln SNR about the fitted line, for a confident estimate


@dataclass(frozen=True)
class ResolutionEstimate:
    """An estimated resolution, how it was found and how much to trust it.

    Attributes:
        resolution_A: The estimate.
        method: ``post-processing edge`` or ``signal/noise in the solvent``.
        confident: False when the signature was weak (then say so and how to give R).
        detail: A short figure behind it (the edge's steepness, or the fit's residual).
    """

    resolution_A: float
    method: str
    confident: bool
    detail: str


def estimate_resolution(data: np.ndarray, voxel_size_zyx: tuple[float, ...]) -> ResolutionEstimate:
    """The resolution of ``data[z, y, x]`` from the map alone.

    Raises:
        ResolutionUnknownError: Neither a post-processing edge nor signal above the solvent's
            noise shows in the map.
    """
    finest = 2.0 * max(voxel_size_zyx)
    data = central_crop(data, MAX_EDGE_VOXELS)
    frequency, amplitude = amplitude_spectrum(data, voxel_size_zyx)
    edge = post_processing_edge(frequency, amplitude, finest)
    snr = box_snr(data, voxel_size_zyx)
    if edge is None:
        solvent = solvent_noise_crossing(*snr, finest) if snr is not None else None
        if solvent is not None:
            return solvent
        edge = post_processing_edge(frequency, amplitude, finest, WEAK_EDGE_MIN_SLOPE)
    elif (snr is not None and _signal_measured(*snr)
          and _measured_crossing_A(*snr) > EDGE_OVERRIDE * edge.resolution_A):
        # the measured signal fades into the noise well before the edge: the edge is an
        # earlier low-pass (of a map later blurred or reprocessed), not what the data hold
        return solvent_noise_crossing(*snr, edge.resolution_A) or edge
    if edge is not None:
        return edge
    raise ResolutionUnknownError(
        "the map's resolution cannot be estimated (no post-processing edge in its spectrum and "
        "no signal above the noise of its solvent): give it with --resolution R")


def central_crop(data: np.ndarray, edge: int) -> np.ndarray:
    """The central ``edge``-voxel box of a larger map (the whole map when it fits): bounds the
    estimate's time and memory (about 9 s and 1 GB at 256³) on large maps."""
    starts = [max(0, (n - edge) // 2) for n in data.shape]
    return data[tuple(slice(s, s + edge) for s in starts)]


def amplitude_spectrum(data: np.ndarray,
                       voxel_size_zyx: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean Fourier amplitude per shell up to Nyquist: ``(frequency in 1/Å, amplitude)``."""
    return shell_means(np.abs(np.fft.rfftn(data - data.mean())), data.shape, voxel_size_zyx)


def shell_means(half_spectrum: np.ndarray, shape_zyx: tuple[int, ...],
                 voxel_size_zyx: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The mean of an rFFT-shaped array per Fourier shell up to Nyquist, with the shells'
    frequencies in 1/Å."""
    shells, width = shell_index(shape_zyx, voxel_size_zyx)
    n_shells = int(min(0.5 / v for v in voxel_size_zyx) / width) + 1
    flat, keep = shells.ravel(), shells.ravel() < n_shells
    total = np.bincount(flat[keep], weights=half_spectrum.ravel()[keep], minlength=n_shells)
    counts = np.bincount(flat[keep], minlength=n_shells)
    return np.arange(n_shells) * width, total / np.maximum(counts, 1)


def post_processing_edge(frequency: np.ndarray, amplitude: np.ndarray, finest_A: float,
                         min_slope: float = EDGE_MIN_SLOPE) -> ResolutionEstimate | None:
    """The low-pass edge of a post-processed map: the steepest fall of the log amplitude
    against log frequency between ``1/COARSEST_A`` and the map's finest resolution, when it
    is at least ``min_slope`` (a B-factor fall-off at R is ~0.4, a low-pass edge ≥ 5 even
    after a soft mask spreads it); ``R`` = 1 / the frequency of that fall. Confident from
    twice :data:`EDGE_MIN_SLOPE` on."""
    slope, centre = log_slopes(frequency, amplitude)
    band = (centre >= 1.0 / COARSEST_A) & (centre <= 1.0 / finest_A)
    if not band.any():
        return None
    steepest = int(np.flatnonzero(band)[np.argmin(slope[band])])
    if slope[steepest] > -min_slope:
        return None
    resolution = 1.0 / centre[steepest]
    return ResolutionEstimate(min(max(resolution, finest_A), COARSEST_A),
                              "post-processing edge", slope[steepest] <= -2 * EDGE_MIN_SLOPE,
                              f"amplitude falls {-slope[steepest]:.1f} decades per e-fold")


def log_slopes(frequency: np.ndarray,
               amplitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes of log10 amplitude against ln frequency between neighbouring shells (from the
    second shell on) and the frequency at the middle of each step."""
    keep = slice(1, None)
    log_amp = np.log10(np.maximum(amplitude[keep], 1e-30 * max(float(amplitude.max()), 1e-30)))
    log_f = np.log(frequency[keep])
    slope = np.diff(log_amp) / np.diff(log_f)
    return slope, np.exp((log_f[1:] + log_f[:-1]) / 2)


def first_crossing(frequency: np.ndarray, values: np.ndarray, level: float,
                    start: float) -> float:
    """The first frequency from ``start`` on where ``values`` falls to ``level`` (linear
    interpolation between shells)."""
    for i in np.flatnonzero(frequency >= start)[:-1]:
        if values[i] >= level > values[i + 1]:
            t = (values[i] - level) / (values[i] - values[i + 1])
            return float(frequency[i] + t * (frequency[i + 1] - frequency[i]))
        if values[i] < level:
            return float(frequency[i])
    return float(frequency[-1])


def box_snr(data: np.ndarray,
            voxel_size_zyx: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frequency, SNR)``: the box's spectral signal-to-noise ratio, from the molecule's
    power per voxel (signal + noise) against the solvent's (noise), the signal spread over
    the box; None without enough solvent or molecule. In a masked map only the solvent inside
    the mask counts (the constant outside is no noise, and would make any noise look small)."""
    molecule, solvent = molecule_and_solvent(data, voxel_size_zyx, SNR_CORE_SD)
    solvent = noisy_solvent(data, solvent)
    if solvent.mean() < MIN_SOLVENT_FRACTION or molecule.mean() < 0.01:
        return None
    centred = data - float(data[solvent > 0.5].mean())
    frequency, power_in = _power_per_voxel(centred, molecule, voxel_size_zyx)
    _, power_out = _power_per_voxel(centred, solvent, voxel_size_zyx)
    signal = (power_in - power_out) * float(molecule.mean())
    return frequency, signal / np.maximum(power_out, 1e-30)


def noisy_solvent(data: np.ndarray, solvent: np.ndarray) -> np.ndarray:
    """The part of a ``solvent`` mask that holds noise: in a masked map only the solvent inside
    the mask (its flat outside holds none, and would make any noise look small)."""
    masked = background_mask(data)
    if masked is None:
        return solvent
    return solvent * ndimage.binary_erosion(masked[0], iterations=2)


def solvent_noise_crossing(frequency: np.ndarray, snr: np.ndarray,
                           finest_A: float) -> ResolutionEstimate | None:
    """Where a line fitted to ln SNR against s² near the threshold falls to the SNR of an
    FSC = 0.143 shell (the measured curve's first crossing where the line would be far
    extrapolated); None when the signal is not above it or outlasts ``finest_A``."""
    band = _fit_band(frequency, snr) & (frequency <= 1.0 / finest_A)
    if band.sum() < 3:
        return None
    # log SNR falls about linearly in s² near the threshold (a B-factor's fall-off over a flat
    # noise ratio): a line through the shells around it, not the first noisy shell below it
    slope, intercept = np.polyfit(frequency[band] ** 2, np.log(snr[band]), 1)
    if slope >= 0 or intercept <= np.log(SNR_AT_RESOLUTION):
        return None
    crossing = float(np.sqrt((np.log(SNR_AT_RESOLUTION) - intercept) / slope))
    fitted = frequency[band]
    if not fitted[0] / 1.2 <= crossing <= fitted[-1] * 1.2:
        crossing = 1.0 / _measured_crossing_A(frequency, snr)
    if crossing > 1.0 / finest_A:
        return None  # the signal outlasts the band the map holds
    residual = float(np.std(np.log(snr[band]) - (slope * frequency[band] ** 2 + intercept)))
    return ResolutionEstimate(min(max(1.0 / crossing, finest_A), COARSEST_A),
                              "signal/noise in the solvent",
                              residual < CONFIDENT_FIT_RESIDUAL,
                              f"fit residual {residual:.2f}")


def _fit_band(frequency: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """The shells the line is fitted to: the first run, from ``1/COARSEST_A`` on, where the
    measured SNR (3-shell running median) falls through :data:`FIT_SNR_RANGE` (the later
    shells where a noisy estimate rises back into the range are not the signal's fall)."""
    smoothed = _smoothed(snr)
    band = np.zeros(frequency.shape, dtype=bool)
    start = np.flatnonzero((frequency >= 1.0 / COARSEST_A) & (smoothed < FIT_SNR_RANGE[1]))
    if start.size == 0:
        return band
    below = np.flatnonzero(smoothed[start[0]:] <= FIT_SNR_RANGE[0])
    stop = start[0] + (below[0] if below.size else len(frequency))
    band[start[0]:stop] = snr[start[0]:stop] > FIT_SNR_RANGE[0]
    return band


def _signal_measured(frequency: np.ndarray, snr: np.ndarray) -> bool:
    """Whether the measured SNR starts above the threshold at ``1/COARSEST_A``: a crossing
    needs signal to fall from (a box of noise alone, its "molecule" a noise blob, has none)."""
    start = np.flatnonzero(frequency >= 1.0 / COARSEST_A)
    return bool(start.size) and bool(_smoothed(snr)[start[0]] >= SNR_AT_RESOLUTION)


def _measured_crossing_A(frequency: np.ndarray, snr: np.ndarray) -> float:
    """The resolution where the measured SNR (3-shell running median) first falls to the
    threshold, from ``1/COARSEST_A`` on."""
    crossing = first_crossing(frequency, np.log(np.maximum(_smoothed(snr), 1e-12)),
                               np.log(SNR_AT_RESOLUTION), 1.0 / COARSEST_A)
    return 1.0 / max(crossing, 1e-6)


MASK_REACH_A = 9.0  # beyond this distance from the core both masks are constant


def molecule_and_solvent(data: np.ndarray, voxel_size_zyx: tuple[float, ...],
                         threshold_sd: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of the molecule (the map smoothed over 3 Å above its mean +
    ``threshold_sd`` s.d., grown by 3 Å) and of the solvent (further than 6 Å from the
    molecule), 0–1."""
    sigma = [3.0 / v for v in voxel_size_zyx]
    smoothed = ndimage.gaussian_filter(data.astype(np.float32, copy=False), sigma)
    mean, sd = _mean_and_sd(smoothed)
    core = smoothed > mean + threshold_sd * sd
    del smoothed
    molecule = np.zeros(data.shape, np.float32)
    solvent = np.ones(data.shape, np.float32)
    for (start, stop), (low, high) in _slabs_with_margin(data.shape, voxel_size_zyx[0]):
        if core[low:high].any():
            distance = ndimage.distance_transform_edt(~core[low:high], sampling=voxel_size_zyx)
            distance = distance[start - low:stop - low]
            # molecule: 1 within 3 Å, 0 beyond 6 Å; solvent: 0 within 6 Å, 1 beyond 9 Å
            molecule[start:stop] = np.clip((6.0 - distance) / 3.0, 0.0, 1.0)
            solvent[start:stop] = np.clip((distance - 6.0) / 3.0, 0.0, 1.0)
    return molecule, solvent


def _mean_and_sd(volume: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a volume, summed a z-plane at a time in double
    precision (no full-size temporary)."""
    total = sum(float(plane.sum(dtype=np.float64)) for plane in volume)
    mean = total / volume.size
    squares = sum(float(np.square(plane - mean, dtype=np.float64).sum()) for plane in volume)
    return mean, float(np.sqrt(squares / volume.size))


def _slabs_with_margin(shape_zyx: tuple[int, ...], voxel_z_A: float):
    """``((start, stop), (low, high))`` z-slabs of about ``grid.RESAMPLE_BLOCK_VOXELS`` voxels
    and the same slabs grown by :data:`MASK_REACH_A`: a voxel's distance to the core, where it
    is within that reach, is found inside its grown slab, so the distance transform (whose
    working arrays take some 60 bytes a voxel) runs a slab at a time."""
    planes = max(1, grid_ops.RESAMPLE_BLOCK_VOXELS // max(1, shape_zyx[1] * shape_zyx[2]))
    margin = int(np.ceil(MASK_REACH_A / voxel_z_A)) + 1
    for start in range(0, shape_zyx[0], planes):
        stop = min(shape_zyx[0], start + planes)
        yield (start, stop), (max(0, start - margin), min(shape_zyx[0], stop + margin))


def _power_per_voxel(data: np.ndarray, weight: np.ndarray,
                     voxel_size_zyx: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Shell power of ``data · weight`` per unit of ``weight²`` (a region's power per voxel)."""
    frequency, power = shell_means(np.abs(np.fft.rfftn(data * weight)) ** 2, data.shape,
                                    voxel_size_zyx)
    return frequency, power / max(float((weight ** 2).sum()), 1e-12)


def _smoothed(values: np.ndarray) -> np.ndarray:
    """A 3-shell running median (single noisy shells do not make a crossing)."""
    return ndimage.median_filter(values, size=3, mode="nearest")
