"""Map quality measures: the Fourier shell correlation of two maps (half maps), and the
map–model scores of phenix.map_model_cc (CC_box, CC_mask, CC_volume, CC_peaks, per-residue
RSCC, the model–map FSC and its 0.5 crossing), checked against cctbx in the tests.

Arrays are ``[z, y, x]`` with voxel sizes in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryosamu_cli.grid import shell_index

# The half-map FSC that defines a map's resolution, and the signal-to-noise ratio of the full
# map in a shell where its half maps correlate that much: 2 · FSC / (1 − FSC).
FSC_THRESHOLD = 0.143
SNR_AT_FSC_THRESHOLD = 2 * FSC_THRESHOLD / (1 - FSC_THRESHOLD)
from cryosamu_cli.mapio import grid_origin_xyz


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


@dataclass(frozen=True)
class MapModelScores:
    """Map–model agreement with the definitions of phenix.map_model_cc and phenix.mtriage.

    Attributes:
        cc_box: Correlation of map and model map over the whole box.
        cc_mask: Correlation inside the molecular (bulk-solvent) mask of the model.
        cc_volume: Correlation over the N highest model-map voxels (N = voxels in the mask).
        cc_peaks: Correlation over the union of the N highest voxels of either map.
        fsc05: Resolution (Å) where the map–model FSC falls below 0.5 (mtriage's
            ``d_fsc_model_05``).
        fsc_curve: The map–model FSC, binned and smoothed as mtriage does.
        rscc: Per-residue correlation ``(chain, seqid, name, cc)`` within ``atom_radius`` Å.
        atom_radius: Radius (Å) used for the per-residue correlation.
    """

    cc_box: float
    cc_mask: float
    cc_volume: float
    cc_peaks: float
    fsc05: float
    fsc_curve: FSCCurve
    rscc: tuple[tuple[str, str, str, float], ...]
    atom_radius: float

    def to_dict(self) -> dict:
        """JSON-ready form with the keys of the benchmark reports."""
        return {"cc_box": round(self.cc_box, 4), "cc_mask": round(self.cc_mask, 4),
                "cc_volume": round(self.cc_volume, 4), "cc_peaks": round(self.cc_peaks, 4),
                "fsc05": round(self.fsc05, 3), "fsc": self.fsc_curve.to_dict(0.5)["curve"],
                "atom_radius": self.atom_radius,
                "rscc": [{"chain": c, "seqid": s, "resname": n, "cc": round(v, 4)}
                         for c, s, n, v in self.rscc]}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays (0 when either is constant)."""
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def highest_voxels(volume: np.ndarray, count: int) -> np.ndarray:
    """Voxels at or above the value of the ``count``-th highest one (cctbx's convention)."""
    flat = volume.ravel()
    kth = max(flat.size - 1 - count, 0)
    return volume >= np.partition(flat, kth)[kth]


def map_model_scores(data: np.ndarray, grid, atoms, resolution_A: float,
                     with_rscc: bool = True) -> MapModelScores:
    """Score a map ``data[z, y, x]`` on ``grid`` against a model at ``resolution_A``.

    The model map is the model's structure factors to ``resolution_A`` in the map's box
    (:func:`cryosamu_cli.simulate.model_map`); for the FSC it extends to Nyquist.
    """
    model, inside = model_map_and_mask(grid, atoms, resolution_A)
    count = int(inside.sum())
    top_model = highest_voxels(model, count)
    peaks = top_model | highest_voxels(data, count)
    curve = model_fsc(data, grid, atoms)
    radius = rscc_radius(resolution_A)
    rscc = residue_correlations(data, model, grid, atoms, radius) if with_rscc else ()
    return MapModelScores(pearson(data, model), pearson(data[inside], model[inside]),
                          pearson(data[top_model], model[top_model]),
                          pearson(data[peaks], model[peaks]), fsc_crossing(curve, 0.5), curve,
                          rscc, radius)


def model_map_and_mask(grid, atoms, resolution_A: float) -> tuple[np.ndarray, np.ndarray]:
    """The model map at ``resolution_A`` and the molecular mask, both on the map's grid."""
    from cryosamu_cli import simulate

    geometry = (grid.shape_zyx, grid.voxel_size_A, grid_origin_xyz(grid))
    return (simulate.model_map(atoms, *geometry, resolution_A),
            simulate.molecular_mask(atoms, *geometry))


def cc_mask(data: np.ndarray, grid, atoms, resolution_A: float) -> float:
    """CC_mask alone (phenix.map_model_cc's definition), without the other scores."""
    model, inside = model_map_and_mask(grid, atoms, resolution_A)
    return pearson(data[inside], model[inside])


def rscc_radius(resolution_A: float) -> float:
    """Radius around atoms for per-residue correlation: the resolution, clamped to [3, 10] Å."""
    return float(max(3.0, min(10.0, resolution_A)))


def residue_correlations(data: np.ndarray, model: np.ndarray, grid, atoms,
                         radius_A: float) -> tuple[tuple[str, str, str, float], ...]:
    """Correlation of map and model map within ``radius_A`` of each residue's atoms."""
    from scipy.spatial import cKDTree

    nz, ny, nx = grid.shape_zyx
    origin = np.asarray(grid_origin_xyz(grid))
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1) * np.asarray(grid.voxel_size_A)
    tree = cKDTree(points + origin)
    flat_data, flat_model = data.ravel(), model.ravel()
    order = np.argsort(atoms.residue_index, kind="stable")
    bounds = np.searchsorted(atoms.residue_index[order], np.arange(len(atoms.residues) + 1))
    scores = []
    for index, residue in enumerate(atoms.residues):
        members = atoms.xyz[order[bounds[index]:bounds[index + 1]]]
        if len(members) == 0:
            continue
        voxels = np.unique(np.concatenate(tree.query_ball_point(members, radius_A)).astype(int))
        if voxels.size < 2:
            continue
        scores.append((*residue, pearson(flat_data[voxels], flat_model[voxels])))
    return tuple(scores)


def model_fsc(data: np.ndarray, grid, atoms) -> FSCCurve:
    """Map–model FSC as phenix.mtriage computes it (unmasked).

    All box reflections with ``|h| <= (n - 1) // 2`` per axis (one of each Friedel pair, no
    F000); the model's exact structure factors at the same indices; bins of 100, 250 or 500
    reflections for d above 10 Å, 5–10 Å and below 5 Å; a Savitzky–Golay smoothing (21 bins,
    degree 2) of the bins at d ≤ 15 Å.
    """
    from cryosamu_cli import simulate

    nz, ny, nx = grid.shape_zyx
    cell = np.array([nx, ny, nz]) * np.asarray(grid.voxel_size_A)
    limits = [(n - 1) // 2 for n in (nx, ny, nz)]
    hx = np.arange(0, limits[0] + 1)
    ky = np.arange(-limits[1], limits[1] + 1)
    lz = np.arange(-limits[2], limits[2] + 1)
    f_map = np.fft.rfftn(data.astype(np.float64))[np.ix_(lz % nz, ky % ny, hx)]
    f_model = simulate.structure_factors(atoms, cell, np.asarray(grid_origin_xyz(grid)),
                                         (hx, ky, lz))
    h, k, l = np.meshgrid(hx, ky, lz, indexing="ij")
    h, k, l = (np.transpose(a, (2, 1, 0)) for a in (h, k, l))
    unique = (h > 0) | ((h == 0) & ((k > 0) | ((k == 0) & (l > 0))))
    inv_d2 = (h / cell[0]) ** 2 + (k / cell[1]) ** 2 + (l / cell[2]) ** 2
    d = 1.0 / np.sqrt(inv_d2[unique])
    order = np.argsort(d, kind="stable")
    return _binned_fsc(d[order], f_map[unique][order], f_model[unique][order])


def _mixed_bins(d_sorted: np.ndarray) -> list[tuple[int, int]]:
    """cctbx's ``bins_mixed`` over d sorted ascending: a bin closes after 500, 250 or 100
    reflections (its first d below 5, 5–10, above 10 Å) once d has moved by more than 0.005 Å
    (else one reflection later); the bin reached when fewer than that remain takes the rest."""
    bins, size, start, count, first = [], len(d_sorted), 0, 0, 0.0
    for i, d in enumerate(d_sorted):
        count += 1
        left = size - i - 1
        if count == 1:
            first = d
        n_min = 100 if first > 10 else (250 if first > 5 else 500)
        if count < n_min and not left < n_min:
            continue
        if count > n_min or abs(first - d) > 0.005:
            stop = size if left < n_min else i + 1
            bins.append((start, stop))
            if stop == size:
                break
            start, count = stop, 0
    return bins


def _binned_fsc(d_sorted: np.ndarray, f1: np.ndarray, f2: np.ndarray) -> FSCCurve:
    """FSC per mixed bin, smoothed below 15 Å, ordered from low to high resolution."""
    d_mean, values, counts = [], [], []
    for start, stop in _mixed_bins(d_sorted):
        a, b = f1[start:stop], f2[start:stop]
        norm = np.sqrt((np.abs(a) ** 2).sum() * (np.abs(b) ** 2).sum())
        values.append(float(np.real(a * np.conj(b)).sum() / norm) if norm > 0 else 0.0)
        d_mean.append(float(d_sorted[start:stop].mean()))
        counts.append(stop - start)
    d_mean, values, counts = np.array(d_mean), np.array(values), np.array(counts)
    fine = d_mean <= 15.0
    if len(d_mean) > 10 and fine.sum() > 21:
        from scipy.signal import savgol_filter

        values[fine] = savgol_filter(values[fine], 21, 2, mode="mirror")
    order = np.argsort(1.0 / d_mean)
    return FSCCurve(1.0 / d_mean[order], values[order], counts[order])


def fsc_crossing(curve: FSCCurve, cutoff: float) -> float:
    """mtriage's ``d_min_from_fsc``: where the FSC first falls below ``cutoff``, refined by a
    quadratic fit over the 11 bins around it (the bin's own d when the fit is ill-defined or
    moves it by more than 0.25 Å). Nyquist when it never falls below."""
    below = np.nonzero(curve.fsc < cutoff)[0]
    if below.size == 0:
        return float(1.0 / curve.frequency_per_A[-1])
    i = int(below[0])
    d_mid = 1.0 / curve.frequency_per_A[i]
    lo, hi = max(i - 5, 0), min(i + 6, len(curve.fsc) - 1)
    x, y = curve.frequency_per_A[lo:hi], curve.fsc[lo:hi]
    if len(x) < 3:
        return float(d_mid)
    a, b, c = np.polyfit(x, y, 2)
    c -= cutoff
    det = b * b - 4 * a * c
    if det < 0 or a == 0:
        return float(d_mid)
    x1, x2 = (-b + np.sqrt(det)) / (2 * a), (-b - np.sqrt(det)) / (2 * a)
    if x1 * x2 < 0:
        return float(1.0 / max(x1, x2))
    if x1 > 0 and x2 > 0:
        d1, d2 = 1.0 / x1, 1.0 / x2
        d_min = d1 if abs(d1 - d_mid) < abs(d2 - d_mid) else d2
        return float(d_min if abs(d_mid - d_min) <= 0.25 else d_mid)
    return float(d_mid)
