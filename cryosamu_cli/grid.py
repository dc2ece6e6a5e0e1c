"""Resampling between a map's own grid and the network's 1 Å grid, and normalisation (§3.2).

All arrays are ``[z, y, x]``; voxel sizes passed here are in the same (z, y, x) order. The 1 Å
grid starts at the map's first voxel and covers the whole map, so resampling back lands on
exactly the input's voxel positions and the written map keeps the input's origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryosamu_cli.errors import InvalidMapError

NETWORK_VOXEL_SIZE_A = 1.0
NORMALISATION_PERCENTILE = 99.9
_SPLINE_ORDER = 3
# Resampling works on slabs of about this many output voxels (16 MiB of float32) ...
RESAMPLE_BLOCK_VOXELS = 1 << 22
# ... each with this many input rows either side: a cubic spline's prefilter decays as
# 0.268^n, so 16 rows leave slab edges 1e-9 of the density away from a whole-map resampling.
SPLINE_MARGIN = 16


@dataclass(frozen=True)
class Normalisation:
    """How a map was scaled to [0, 1]: ``normalised = clip(density / scale, 0, 1)``.

    Attributes:
        scale: The 99.9th percentile of the positive density of the resampled map.
        percentile: The percentile used.
    """

    scale: float
    percentile: float = NORMALISATION_PERCENTILE


def resampled_shape(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                    target_A: float = NETWORK_VOXEL_SIZE_A) -> tuple[int, int, int]:
    """Shape of the ``target_A`` grid that covers a map from its first to its last voxel."""
    return tuple(int(math.ceil((n - 1) * v / target_A - 1e-6)) + 1
                 for n, v in zip(shape_zyx, voxel_size_zyx))


def resample_to_spacing(data: np.ndarray, voxel_size_zyx: tuple[float, ...],
                        target_A: float = NETWORK_VOXEL_SIZE_A) -> np.ndarray:
    """Resample ``data[z, y, x]`` with voxel size ``voxel_size_zyx`` onto a ``target_A`` grid.

    Cubic B-spline interpolation; anisotropic voxel sizes are handled per axis. Output voxel
    ``i`` lies at ``i * target_A`` Å from the first input voxel.
    """
    shape = resampled_shape(data.shape, voxel_size_zyx, target_A)
    step = np.array([target_A / v for v in voxel_size_zyx])
    return _affine_resample(data, step, shape)


def resample_to_grid(data: np.ndarray, data_voxel_A: float, shape_zyx: tuple[int, ...],
                     voxel_size_zyx: tuple[float, ...]) -> np.ndarray:
    """Resample a ``data_voxel_A`` grid back onto a grid of ``shape_zyx`` and ``voxel_size_zyx``.

    The inverse of :func:`resample_to_spacing`: output voxel ``i`` along an axis is read at
    ``i * voxel_size / data_voxel_A`` on the input grid.
    """
    step = np.array([v / data_voxel_A for v in voxel_size_zyx])
    return _affine_resample(data, step, tuple(shape_zyx))


def _affine_resample(data: np.ndarray, step: np.ndarray, shape: tuple[int, ...],
                     block_voxels: int | None = None) -> np.ndarray:
    """Sample ``data`` at ``index * step`` for every index of an output of ``shape``.

    By slabs of about ``block_voxels`` (default :data:`RESAMPLE_BLOCK_VOXELS`) output voxels
    along z, each interpolated from the input
    rows it needs plus :data:`SPLINE_MARGIN` rows either side, so that the spline prefilter's
    float64 copy is of a slab, never of the whole map (a map that fits in one block is done in
    one call, exactly as before).
    """
    if np.allclose(step, 1.0) and tuple(shape) == data.shape:
        return data.astype(np.float32, copy=True)
    data = data.astype(np.float32, copy=False)
    output = np.empty(tuple(shape), dtype=np.float32)
    rows = max(1, (block_voxels or RESAMPLE_BLOCK_VOXELS) // max(1, shape[1] * shape[2]))
    for start in range(0, shape[0], rows):
        stop = min(shape[0], start + rows)
        first = max(0, math.floor(start * step[0]) - SPLINE_MARGIN)
        last = min(data.shape[0], math.ceil((stop - 1) * step[0]) + 1 + SPLINE_MARGIN)
        ndimage.affine_transform(data[first:last], step, offset=(start * step[0] - first, 0, 0),
                                 output_shape=(stop - start, *shape[1:]), order=_SPLINE_ORDER,
                                 mode="nearest", output=output[start:stop])
    return output


def normalisation_of(data: np.ndarray,
                     percentile: float = NORMALISATION_PERCENTILE) -> Normalisation:
    """Measure the normalisation scale of a map: the given percentile of its positive voxels.

    Raises:
        InvalidMapError: The map is constant or has no positive density.
    """
    if float(data.max()) == float(data.min()):
        raise InvalidMapError(f"the map is constant (every voxel is {float(data.min()):g})")
    positive = data[data > 0]
    if positive.size == 0:
        raise InvalidMapError("the map has no positive density to enhance")
    scale = float(np.percentile(positive, percentile, overwrite_input=True))  # no 2nd copy
    if scale <= 0:
        raise InvalidMapError("the map has no positive density to enhance")
    return Normalisation(scale=scale, percentile=percentile)


def normalise(data: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Scale ``data`` by ``norm.scale`` and clip to [0, 1] (float32, new array)."""
    out = data.astype(np.float32, copy=True)
    out /= np.float32(norm.scale)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def soft_mask(mask: np.ndarray, edge_voxels: float = 3.0, threshold: float = 0.5) -> np.ndarray:
    """A mask with a cosine fall-off: 1 inside, 0 beyond ``edge_voxels`` outside.

    Voxels above ``threshold`` are inside. Outside, the weight falls as
    ``0.5 * (1 + cos(pi * d / edge_voxels))`` with ``d`` the distance (in voxels) to the nearest
    inside voxel, so blending through it leaves no seam.

    Raises:
        InvalidMapError: The mask has no voxel above ``threshold``.
    """
    inside = mask > threshold
    if not inside.any():
        raise InvalidMapError(f"the mask has no voxel above {threshold}")
    distance = ndimage.distance_transform_edt(~inside)
    weights = np.where(distance < edge_voxels,
                       0.5 * (1.0 + np.cos(np.pi * np.minimum(distance / edge_voxels, 1.0))), 0.0)
    return weights.astype(np.float32)


def blend(primary: np.ndarray, secondary: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """``weight * primary + (1 - weight) * secondary`` as float32."""
    return (weight * primary + (1.0 - weight) * secondary).astype(np.float32)


def low_pass_weights(frequency_per_A: np.ndarray, resolution_A: float,
                     edge: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The band limit's transfer function at spatial frequencies ``frequency_per_A`` (1/Å).

    With ``edge = (pass_factor, stop_factor)`` the weight is 1 up to ``pass_factor / R``, 0 from
    ``stop_factor / R`` on, and a raised cosine between (``R = resolution_A``); equal factors
    make a hard truncation, whose weight at exactly ``factor / R`` is 1.
    """
    pass_until, stop_from = edge[0] / resolution_A, edge[1] / resolution_A
    s = np.asarray(frequency_per_A, dtype=np.float64)
    if stop_from <= pass_until:
        return (s <= pass_until).astype(np.float64)
    t = np.clip((s - pass_until) / (stop_from - pass_until), 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * t)


def band_limit(data: np.ndarray, voxel_size_zyx: tuple[float, ...], resolution_A: float,
               edge: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Low-pass ``data[z, y, x]`` at ``resolution_A`` with :func:`low_pass_weights`.

    Single-precision FFTs (scipy.fft): the volume, its half spectrum and one weight per
    Fourier voxel are the memory it takes.
    """
    return _weighted_back(half_spectrum(data), data.shape, voxel_size_zyx, resolution_A, edge)


def half_spectrum(data: np.ndarray) -> np.ndarray:
    """The single-precision half spectrum (scipy.fft ``rfftn``) of ``data[z, y, x]``."""
    from scipy import fft

    return fft.rfftn(data.astype(np.float32, copy=False), workers=-1)


def band_limited_spectrum(spectrum: np.ndarray, shape_zyx: tuple[int, ...],
                          voxel_size_zyx: tuple[float, ...], resolution_A: float,
                          edge: tuple[float, float] = (1.0, 1.0),
                          buffer: np.ndarray | None = None) -> np.ndarray:
    """:func:`band_limit` of the volume whose :func:`half_spectrum` is ``spectrum`` (left
    unchanged, so one spectrum serves several band limits; ``buffer``, shaped like it, is
    written over instead of a new copy)."""
    return _weighted_back(spectrum, shape_zyx, voxel_size_zyx, resolution_A, edge,
                          out=np.empty_like(spectrum) if buffer is None else buffer)


def _weighted_back(spectrum: np.ndarray, shape_zyx: tuple[int, ...],
                   voxel_size_zyx: tuple[float, ...], resolution_A: float,
                   edge: tuple[float, float], out: np.ndarray | None = None) -> np.ndarray:
    """The half spectrum weighted by :func:`low_pass_weights` (in place, or into ``out``),
    back in real space."""
    from scipy import fft

    out = spectrum if out is None else out
    for plane in range(spectrum.shape[0]):  # weights one z-plane at a time: no full-size temporaries
        np.multiply(spectrum[plane:plane + 1], low_pass_weights(
            _frequency_radius(shape_zyx, voxel_size_zyx, plane), resolution_A,
            edge).astype(np.float32), out=out[plane:plane + 1])
    return fft.irfftn(out, s=shape_zyx, workers=-1, overwrite_x=True).astype(
        np.float32, copy=False)


def shell_index(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """Shell number of every rFFT voxel, and the shell width in 1/Å.

    Shells are as wide as the coarsest Fourier sampling, ``1 / max(n * voxel)``.
    """
    nz, ny, nx = shape_zyx
    vz, vy, vx = voxel_size_zyx
    fz = np.fft.fftfreq(nz, d=vz)[:, None, None]
    fy = np.fft.fftfreq(ny, d=vy)[None, :, None]
    fx = np.fft.rfftfreq(nx, d=vx)[None, None, :]
    width = 1.0 / max(n * v for n, v in zip(shape_zyx, voxel_size_zyx))
    radius = np.sqrt(fz ** 2 + fy ** 2 + fx ** 2)
    return np.rint(radius / width).astype(np.int64), width


def _frequency_radius(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                      plane: int | None = None) -> np.ndarray:
    """|s| in 1/Å of every voxel of an rFFT half spectrum of ``shape_zyx`` (of its z-plane
    ``plane`` alone, shape ``(1, ny, nx // 2 + 1)``, when given)."""
    nz, ny, nx = shape_zyx
    vz, vy, vx = voxel_size_zyx
    fz = np.fft.fftfreq(nz, d=vz).astype(np.float32)[:, None, None]
    if plane is not None:
        fz = fz[plane:plane + 1]
    fy = np.fft.fftfreq(ny, d=vy).astype(np.float32)[None, :, None]
    fx = np.fft.rfftfreq(nx, d=vx).astype(np.float32)[None, None, :]
    return np.sqrt(fz ** 2 + fy ** 2 + fx ** 2)


def bfactor_sharpen(data: np.ndarray, voxel_size_zyx: tuple[float, ...], resolution_A: float,
                    b_factor: float | None = None, fit_low_A: float = 10.0) -> tuple[np.ndarray, float]:
    """Global B-factor sharpening, the plain baseline of map post-processing.

    The amplitude fall-off between ``fit_low_A`` and ``resolution_A`` is fitted as
    ``ln <|F|^2> = c - B s^2 / 2`` (s = 1/d) unless ``b_factor`` is given; the map is then
    multiplied by ``exp(B s^2 / 4)`` in Fourier space and low-passed at ``resolution_A`` with a
    cosine edge one Fourier shell wide.

    Returns:
        ``(sharpened map, B)`` with B in Å² (positive B sharpens).
    """
    spectrum = np.fft.rfftn(data.astype(np.float64))
    shells, width = shell_index(data.shape, voxel_size_zyx)
    s = shells * width
    if b_factor is None:
        b_factor = _fitted_b(spectrum, shells, width, resolution_A, fit_low_A)
    cutoff = 1.0 / resolution_A
    taper = np.clip((cutoff + width - s) / width, 0.0, 1.0)
    taper = 0.5 - 0.5 * np.cos(np.pi * taper)
    sharpened = np.fft.irfftn(spectrum * np.exp(b_factor * s ** 2 / 4.0) * taper, s=data.shape,
                             axes=(0, 1, 2))
    return sharpened.astype(np.float32), float(b_factor)


def fitted_b_factor(data: np.ndarray, voxel_size_zyx: tuple[float, ...], resolution_A: float,
                    fit_low_A: float = 10.0) -> float:
    """The B (Å², ≥ 0) that :func:`bfactor_sharpen` would fit to ``data``'s amplitude fall-off."""
    shells, width = shell_index(data.shape, voxel_size_zyx)
    return _fitted_b(np.fft.rfftn(data.astype(np.float64)), shells, width, resolution_A,
                     fit_low_A)


def _fitted_b(spectrum: np.ndarray, shells: np.ndarray, width: float, resolution_A: float,
              fit_low_A: float) -> float:
    """B from the slope of ln(mean power) against s² between ``fit_low_A`` and the resolution."""
    power = np.bincount(shells.ravel(), weights=(np.abs(spectrum) ** 2).ravel())
    counts = np.bincount(shells.ravel())
    s = np.arange(len(power)) * width
    use = (s >= 1.0 / fit_low_A) & (s <= 1.0 / resolution_A) & (counts > 0) & (power > 0)
    if use.sum() < 3:
        return 0.0
    slope = np.polyfit(s[use] ** 2, np.log(power[use] / counts[use]), 1)[0]
    return float(max(-2.0 * slope, 0.0))
