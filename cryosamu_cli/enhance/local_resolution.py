"""Local resolution: how far the data reach in each region of a map, and a band limit that
follows it (``enhance --local-resolution``).

The local resolution is measured in cosine-tapered windows of ``WINDOW_A`` on a grid of
centres ``STRIDE_A`` apart: with half maps, where their local FSC falls to 0.143 (as blocres
and ResMap do); with one map, where the window's power per voxel over the solvent's noise
power falls to the signal-to-noise ratio of an FSC = 0.143 shell. Either way the values are
then scaled so that their median over the molecule is the map's global resolution: a window
this small smears its spectrum by about 2 / ``WINDOW_A`` (a 9 Å edge reads about 6 Å in
32 Å windows), so the windows say where the map is better or worse, the global figure how
good it is. Values
are kept between ``FINEST_FACTOR`` and ``COARSEST_FACTOR`` times the global resolution. The
centres' values are spread to every voxel (nearest centre, averaged over a stride).

The band limit then blends, voxel by voxel, copies of the network's 1 Å output limited at a
ladder of resolutions (:data:`LADDER` times the global one), linearly in the local resolution.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cryosamu_cli import grid as grid_ops
from cryosamu_cli.enhance import resolution_estimate
from cryosamu_cli.metrics import FSC_THRESHOLD

WINDOW_A = 32.0  # edge of the window a local spectrum is measured in
STRIDE_A = 8.0  # spacing of the window centres
FINEST_FACTOR = 0.6  # local resolutions are kept within [0.6 R, 2 R] of the global R
COARSEST_FACTOR = 2.0
LADDER = (0.6, 0.75, 0.9, 1.0, 1.2, 1.45, 1.7, 2.0)  # the band limits blended (× global R)


def local_resolution(data: np.ndarray, voxel_size_zyx: tuple[float, ...], global_A: float,
                     half2: np.ndarray | None = None) -> np.ndarray:
    """The local resolution in Å of every voxel of ``data[z, y, x]`` (half map 1 when
    ``half2`` is given), between ``FINEST_FACTOR`` (and the map's Nyquist limit) and
    ``COARSEST_FACTOR`` times ``global_A``; the global value everywhere when the map gives no
    local measure (no solvent noise to compare with)."""
    molecule, solvent = resolution_estimate.molecule_and_solvent(
        data if half2 is None else (data + half2) / 2, voxel_size_zyx)
    centres = _window_centres(data.shape, voxel_size_zyx, molecule)
    if half2 is not None:
        values = [_local_fsc_crossing(data, half2, c, voxel_size_zyx) for c in centres]
    else:
        noise = _noise_power(data, solvent, voxel_size_zyx)
        if noise is None:
            return np.full(data.shape, global_A, np.float32)
        values = [_local_snr_crossing(data, c, voxel_size_zyx, noise) for c in centres]
    values = _scaled_to_global(values, global_A)
    finest = max(FINEST_FACTOR * global_A, 2.0 * max(voxel_size_zyx))
    values = np.clip(np.nan_to_num(np.asarray(values, float), nan=COARSEST_FACTOR * global_A),
                     finest, COARSEST_FACTOR * global_A)
    stride_voxels = max(1, round(STRIDE_A / min(voxel_size_zyx)))
    return _to_every_voxel(centres, values, data.shape, global_A, stride_voxels)


def _window_centres(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                    molecule: np.ndarray) -> list[tuple[int, int, int]]:
    """Voxel indices of the window centres: a grid ``STRIDE_A`` apart, inside the molecule."""
    axes = [np.arange(0, n, max(1, round(STRIDE_A / v))) for n, v in zip(shape_zyx, voxel_size_zyx)]
    return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]
            if molecule[z, y, x] > 0.5]


def _window(data: np.ndarray, centre: tuple[int, int, int],
            voxel_size_zyx: tuple[float, ...]) -> np.ndarray:
    """The cosine-tapered ``WINDOW_A`` box of ``data`` around ``centre`` (zero beyond the map)."""
    half = [max(2, round(WINDOW_A / v / 2)) for v in voxel_size_zyx]
    box = np.zeros([2 * h for h in half], np.float32)
    source = tuple(slice(max(0, c - h), min(n, c + h)) for c, h, n in zip(centre, half, data.shape))
    target = tuple(slice(s.start - (c - h), s.stop - (c - h))
                   for s, c, h in zip(source, centre, half))
    box[target] = data[source]
    taper = 1.0
    for axis, h in enumerate(half):
        shape = [1, 1, 1]
        shape[axis] = 2 * h
        taper = taper * np.sin(np.pi * (np.arange(2 * h) + 0.5) / (2 * h)).reshape(shape) ** 2
    return box * taper


def _shell_power(volume: np.ndarray, voxel_size_zyx: tuple[float, ...]):
    """``(frequency, power per shell)`` of a window (its mean removed)."""
    spectrum = np.abs(np.fft.rfftn(volume - volume.mean())) ** 2
    return resolution_estimate.shell_means(spectrum, volume.shape, voxel_size_zyx)


def _noise_power(data: np.ndarray, solvent: np.ndarray,
                 voxel_size_zyx: tuple[float, ...]) -> np.ndarray | None:
    """The solvent's noise power per voxel on a window's shells, or None without solvent
    noise (a masked map whose mask leaves too little solvent inside it)."""
    solvent = resolution_estimate.noisy_solvent(data, solvent)
    if solvent.mean() < resolution_estimate.MIN_SOLVENT_FRACTION:
        return None
    values = data[solvent > 0.5]
    inside = np.argwhere(solvent > 0.99)
    if values.std() == 0 or len(inside) == 0:
        return None
    # the noise is coloured: its spectrum is measured in windows centred in the solvent (16,
    # drawn with a fixed seed so that a map always gets the same answer)
    picks = inside[np.random.default_rng(0).choice(len(inside), size=min(16, len(inside)),
                                                   replace=False)]
    spectra = [_shell_power(_window(data - values.mean(), tuple(p), voxel_size_zyx),
                            voxel_size_zyx)[1] for p in picks]
    return np.mean(spectra, axis=0)


def _local_snr_crossing(data: np.ndarray, centre: tuple[int, int, int],
                        voxel_size_zyx: tuple[float, ...], noise: np.ndarray) -> float:
    """Where the window's power over the noise power falls to an FSC = 0.143 shell's SNR."""
    frequency, power = _shell_power(_window(data, centre, voxel_size_zyx), voxel_size_zyx)
    snr = (power - noise) / np.maximum(noise, 1e-30)
    return _crossing_A(frequency, snr, resolution_estimate.SNR_AT_RESOLUTION)


def _local_fsc_crossing(half1: np.ndarray, half2: np.ndarray, centre: tuple[int, int, int],
                        voxel_size_zyx: tuple[float, ...]) -> float:
    """Where the two half maps' FSC in the window falls to 0.143."""
    a = np.fft.rfftn(_window(half1, centre, voxel_size_zyx))
    b = np.fft.rfftn(_window(half2, centre, voxel_size_zyx))
    shape = tuple(2 * max(2, round(WINDOW_A / v / 2)) for v in voxel_size_zyx)
    frequency, cross = resolution_estimate.shell_means((a * b.conj()).real, shape, voxel_size_zyx)
    _, power_a = resolution_estimate.shell_means(np.abs(a) ** 2, shape, voxel_size_zyx)
    _, power_b = resolution_estimate.shell_means(np.abs(b) ** 2, shape, voxel_size_zyx)
    fsc = cross / np.sqrt(np.maximum(power_a * power_b, 1e-30))
    return _crossing_A(frequency, fsc, FSC_THRESHOLD)


def _crossing_A(frequency: np.ndarray, curve: np.ndarray, level: float) -> float:
    """1 / the first frequency (after the two lowest shells) where ``curve`` falls to
    ``level``; NaN where it starts below it."""
    if curve[2] < level:
        return float("nan")
    return 1.0 / resolution_estimate.first_crossing(frequency, curve, level, frequency[2])


def _scaled_to_global(values: list[float], global_A: float) -> list[float]:
    """The single-map values scaled so that their median is the global resolution."""
    found = np.asarray([v for v in values if np.isfinite(v)])
    if len(found) == 0:
        return [global_A] * len(values)
    factor = global_A / float(np.median(found))
    return [v * factor for v in values]


def _to_every_voxel(centres: list[tuple[int, int, int]], values: np.ndarray,
                    shape_zyx: tuple[int, ...], global_A: float,
                    stride_voxels: int) -> np.ndarray:
    """Each voxel gets its nearest centre's value, averaged over a stride (the global value
    without any centre)."""
    if len(centres) == 0:
        return np.full(shape_zyx, global_A, np.float32)
    seeds = np.zeros(shape_zyx, bool)
    sparse = np.zeros(shape_zyx, np.float32)
    for (z, y, x), value in zip(centres, values):
        seeds[z, y, x], sparse[z, y, x] = True, value
    _, nearest = ndimage.distance_transform_edt(~seeds, return_indices=True)
    filled = sparse[tuple(nearest)]
    return ndimage.uniform_filter(filled, size=stride_voxels).astype(np.float32)


def locally_limited(volume_1A: np.ndarray, local_A_1A: np.ndarray, global_A: float,
                    edge: tuple[float, float]) -> np.ndarray:
    """The network's 1 Å output with each voxel limited at its local resolution: a blend of
    copies limited at :data:`LADDER` times ``global_A``, linear in the local resolution
    (``local_A_1A`` on the same 1 Å grid)."""
    steps = [factor * global_A for factor in LADDER]
    position = np.interp(local_A_1A, steps, np.arange(len(steps)))
    out = np.zeros_like(volume_1A)
    for index, resolution in enumerate(steps):
        weight = np.clip(1.0 - np.abs(position - index), 0.0, 1.0)
        if weight.any():
            limited = grid_ops.band_limit(volume_1A, (grid_ops.NETWORK_VOXEL_SIZE_A,) * 3,
                                          resolution, edge)
            out += weight * limited
    return out
