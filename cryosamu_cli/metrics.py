"""Map quality measures. For now: the Fourier shell correlation of two maps (half maps).

Arrays are ``[z, y, x]`` with voxel sizes in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FSCCurve:
    """FSC per Fourier shell.

    Attributes:
        frequency_per_A: Shell centre frequency in 1/Å (shell 0 is the origin).
        fsc: Correlation in each shell.
        voxel_count: Fourier voxels in each shell (of the half-space rFFT).
    """

    frequency_per_A: np.ndarray
    fsc: np.ndarray
    voxel_count: np.ndarray

    @property
    def resolution_A(self) -> np.ndarray:
        """Shell resolution in Å (``inf`` for shell 0)."""
        with np.errstate(divide="ignore"):
            return 1.0 / self.frequency_per_A

    def resolution_at(self, threshold: float) -> float:
        """Resolution in Å where the FSC first falls below ``threshold`` (linear in frequency).

        Returns the Nyquist resolution when the curve never falls below it.
        """
        below = np.nonzero(self.fsc[1:] < threshold)[0]
        if below.size == 0:
            return float(1.0 / self.frequency_per_A[-1])
        i = int(below[0]) + 1
        f0, f1 = self.frequency_per_A[i - 1], self.frequency_per_A[i]
        c0, c1 = self.fsc[i - 1], self.fsc[i]
        frequency = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
        return float(1.0 / frequency)

    def to_dict(self, threshold: float) -> dict:
        """JSON-ready form: the curve and the resolution at ``threshold``."""
        return {"threshold": threshold, "resolution_A": round(self.resolution_at(threshold), 3),
                "curve": [{"frequency_per_A": round(float(f), 6),
                           "resolution_A": round(float(1 / f), 3) if f > 0 else None,
                           "fsc": round(float(c), 5)}
                          for f, c in zip(self.frequency_per_A, self.fsc)]}


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


def fsc(map1: np.ndarray, map2: np.ndarray, voxel_size_zyx: tuple[float, ...]) -> FSCCurve:
    """Fourier shell correlation of two maps on the same grid, up to Nyquist.

    Raises:
        ValueError: The maps differ in shape.
    """
    if map1.shape != map2.shape:
        raise ValueError(f"maps differ in shape: {map1.shape} and {map2.shape}")
    f1 = np.fft.rfftn(map1.astype(np.float64))
    f2 = np.fft.rfftn(map2.astype(np.float64))
    shells, width = shell_index(map1.shape, voxel_size_zyx)
    n_shells = int(np.floor(min(0.5 / v for v in voxel_size_zyx) / width)) + 1
    flat = shells.ravel()
    keep = flat < n_shells
    def per_shell(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat[keep], weights=values.ravel()[keep], minlength=n_shells)

    cross = per_shell(np.real(f1 * np.conj(f2)))
    power = per_shell(np.abs(f1) ** 2) * per_shell(np.abs(f2) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(power > 0, cross / np.sqrt(power), 0.0)
    counts = np.bincount(flat[keep], minlength=n_shells)
    return FSCCurve(np.arange(n_shells) * width, correlation, counts)
