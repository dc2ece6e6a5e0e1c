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

The band limit then follows the local values half-way (in log resolution, :data:`FOLLOW`)
and blends, voxel by voxel, copies of the network's 1 Å output limited at a ladder of
resolutions (:data:`LADDER` times the global one), linearly in the followed resolution.
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
# How far the band limit follows the local values: R·(local / R)^FOLLOW. Chosen on the 33
# validation maps of benchmarks/local_resolution_shrink.py (mean CC_mask: 0 (global band) 0.7001,
# 0.5 0.7025, 1 0.7022; on raw maps of uniform resolution 0.5 loses least to the global band).
FOLLOW = 0.5


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
    return _to_every_voxel(centres, values, data.shape, global_A, voxel_size_zyx)


def _window_centres(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                    molecule: np.ndarray) -> list[tuple[int, int, int]]:
    """Voxel indices of the window centres: a grid ``STRIDE_A`` apart, inside the molecule."""
    axes = [np.arange(0, n, s) for n, s in zip(shape_zyx, _strides(voxel_size_zyx))]
    return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]
            if molecule[z, y, x] > 0.5]


def _strides(voxel_size_zyx: tuple[float, ...]) -> tuple[int, ...]:
    """The window centres' spacing in voxels along z, y, x (about ``STRIDE_A``)."""
    return tuple(max(1, round(STRIDE_A / v)) for v in voxel_size_zyx)


def _window(data: np.ndarray, centre: tuple[int, int, int],
            voxel_size_zyx: tuple[float, ...], offset: float = 0.0) -> np.ndarray:
    """The cosine-tapered ``WINDOW_A`` box of ``data - offset`` around ``centre`` (zero beyond
    the map)."""
    half = [max(2, round(WINDOW_A / v / 2)) for v in voxel_size_zyx]
    box = np.zeros([2 * h for h in half], np.float32)
    source = tuple(slice(max(0, c - h), min(n, c + h)) for c, h, n in zip(centre, half, data.shape))
    target = tuple(slice(s.start - (c - h), s.stop - (c - h))
                   for s, c, h in zip(source, centre, half))
    box[target] = data[source] - np.float32(offset)
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
    deep = solvent > 0.99
    if values.std() == 0 or not deep.any():
        return None
    # the noise is coloured: its spectrum is measured in windows centred in the solvent (16,
    # drawn with a fixed seed so that a map always gets the same answer)
    picks, mean = _some_voxels(deep, 16, np.random.default_rng(0)), float(values.mean())
    spectra = [_shell_power(_window(data, p, voxel_size_zyx, offset=mean), voxel_size_zyx)[1]
               for p in picks]
    return np.mean(spectra, axis=0)


def _some_voxels(where: np.ndarray, count: int,
                 rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """``count`` voxels of a boolean map drawn without replacement (all of them when fewer):
    the k-th True voxel in C order for each k drawn, found plane by plane (no list of every
    True voxel's indices)."""
    per_plane = np.cumsum(where.reshape(where.shape[0], -1).sum(axis=1))
    drawn = rng.choice(int(per_plane[-1]), size=min(count, int(per_plane[-1])), replace=False)
    voxels = []
    for k in drawn:
        plane = int(np.searchsorted(per_plane, k, side="right"))
        before = int(per_plane[plane - 1]) if plane else 0
        flat = int(np.flatnonzero(where[plane])[k - before])
        voxels.append((plane, *np.unravel_index(flat, where.shape[1:])))
    return voxels


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
                    voxel_size_zyx: tuple[float, ...]) -> np.ndarray:
    """Each voxel gets its nearest centre's value (centres outside the molecule take their
    nearest measured neighbour's), averaged over a stride; the global value without any
    centre. Made on the grid of centres and indexed out, so the full grid holds only the
    result and its smoothed copy."""
    if len(centres) == 0:
        return np.full(shape_zyx, global_A, np.float32)
    strides = _strides(voxel_size_zyx)
    coarse_shape = tuple(-(-n // s) for n, s in zip(shape_zyx, strides))
    coarse, measured = np.zeros(coarse_shape, np.float32), np.zeros(coarse_shape, bool)
    for centre, value in zip(centres, values):
        node = tuple(c // s for c, s in zip(centre, strides))
        coarse[node], measured[node] = value, True
    _, nearest = ndimage.distance_transform_edt(~measured, sampling=strides, return_indices=True)
    coarse = coarse[tuple(nearest)]
    node_of_voxel = [np.minimum(np.rint(np.arange(n) / s).astype(np.intp), m - 1)
                     for n, s, m in zip(shape_zyx, strides, coarse_shape)]
    filled = coarse[np.ix_(*node_of_voxel)]
    return ndimage.uniform_filter(filled, size=max(1, round(STRIDE_A / min(voxel_size_zyx))))


def is_uniform(local_A: np.ndarray) -> bool:
    """Whether a local resolution map holds one value (no local measure: a masked map without
    solvent noise, or no window inside the molecule)."""
    return bool(local_A.size == 0 or np.ptp(local_A) == 0)


def locally_limited(volume_1A: np.ndarray, local_A_1A: np.ndarray, global_A: float,
                    edge: tuple[float, float], follow: float = FOLLOW) -> np.ndarray:
    """The network's 1 Å output with each voxel limited at its local resolution followed
    ``follow`` of the way from ``global_A`` (``R·(local / R)^follow``; 0: the global band, 1:
    the local values themselves): a blend of copies limited at :data:`LADDER` times
    ``global_A``, linear in the followed resolution (``local_A_1A`` on the same 1 Å grid).

    Memory: the volume's half spectrum is taken once and each rung is weighted into one
    reused buffer; the blend weights are made a z-plane at a time. Besides the volume and the
    local values, the spectrum, the buffer, one limited copy, the ladder positions and the
    result: 20 bytes per voxel.
    """
    steps = [factor * global_A for factor in LADDER]
    position = _ladder_position(local_A_1A, global_A, follow, steps)
    spectrum = grid_ops.half_spectrum(volume_1A)
    buffer = np.empty_like(spectrum)
    out = np.zeros(volume_1A.shape, np.float32)
    for index in _rungs_used(position):
        limited = grid_ops.band_limited_spectrum(spectrum, volume_1A.shape,
                                                 (grid_ops.NETWORK_VOXEL_SIZE_A,) * 3,
                                                 steps[index], edge, buffer=buffer)
        for plane in range(out.shape[0]):
            weight = np.clip(1.0 - np.abs(position[plane] - np.float32(index)), 0.0, 1.0)
            out[plane] += weight * limited[plane]
    return out


def _ladder_position(local_A_1A: np.ndarray, global_A: float, follow: float,
                     steps: list[float]) -> np.ndarray:
    """Each voxel's place on the ladder (fractional rung index) for its followed resolution,
    computed a z-plane at a time (no double-precision copy of the whole grid)."""
    rungs = np.arange(len(steps), dtype=np.float64)
    position = np.empty(local_A_1A.shape, np.float32)
    for plane in range(local_A_1A.shape[0]):
        followed = global_A * (local_A_1A[plane].astype(np.float64) / global_A) ** follow
        position[plane] = np.interp(followed, steps, rungs)
    return position


def _rungs_used(position: np.ndarray) -> range:
    """The rungs from the lowest to the highest position (a voxel weights the two either side
    of its own; a rung between that no voxel touches only adds zeros)."""
    return range(int(np.floor(position.min())), int(np.ceil(position.max())) + 1)
