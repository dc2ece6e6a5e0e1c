"""How much simulated training maps look like real maps: amplitude fall-off and histogram.

    python benchmarks/simulation_realism.py                  # ~1 min on 2 cores
    python benchmarks/simulation_realism.py --models 24 --json realism.json

Prints the figures of :mod:`cryosamu_cli.data.map_statistics` for every real map in
``../shared/data`` (pairs at their stated resolution, the unpaired maps, and the training
pairs degraded to 6 Å as ``prepare-data --degrade-real`` does, basic and realistic), and for
maps simulated from ``--models`` structures by the ``basic`` and ``realistic`` degradation
models with the same seeds. The summary gives each family's median per figure and how far the
simulated medians are from the real maps' (eval pairs are listed for reference and kept out of
the real median: the simulation is not tuned on them). Last, the simulated maps' true
signal-to-noise ratio at their drawn resolution and at 1.5 times it (their signal and noise
apart), beside a real map's at its resolution (that of an FSC = 0.143 shell).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cryosamu_cli import mapio
from cryosamu_cli.data import degrade, real_degradation
from cryosamu_cli.data import pair_shards
from cryosamu_cli.data.map_statistics import MapStatistics, map_statistics
from cryosamu_cli.data.pairs import read_pairs
from cryosamu_cli.structure import read_atoms

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNPAIRED = (("emd_6824.mrc", 5.8), ("emd_2513.mrc", None))  # 2513: resolution not known
FIGURES = tuple(MapStatistics.__dataclass_fields__)


Row = tuple[str, str, "float | None", MapStatistics]


def real_rows(shared: Path) -> list[Row]:
    """``(family, name, resolution, statistics)`` of every real map and of the training pairs at 6 Å."""
    rows = []
    for pair in read_pairs(shared / "pairs.csv"):
        role = pair.columns.get("role", pair.split)
        if role == "io-only" or pair.resolution_A is None:
            continue
        data, info = mapio.read_map(pair.map_path)
        family = "real (eval, reference only)" if role == "eval" else "real"
        rows.append((family, pair.name, pair.resolution_A,
                     map_statistics(data, info.voxel_size_zyx, pair.resolution_A)))
        if role == "train":
            for kind, keep_mask in (("basic", False), ("realistic", True)):
                degraded, _ = real_degradation.degraded_real_map(
                    data, info.voxel_size_zyx, 6.0, seed=0, keep_mask=keep_mask)
                rows.append((f"real degraded to 6 Å, {kind}", pair.name, 6.0,
                             map_statistics(degraded, info.voxel_size_zyx, 6.0)))
    for name, resolution in UNPAIRED:
        data, info = mapio.read_map(shared / "unpaired" / name)
        stats = map_statistics(data, info.voxel_size_zyx, resolution or 6.0)
        if resolution is None:
            stats = MapStatistics(*([float("nan")] * 3), *list(stats.to_dict().values())[3:])
        rows.append(("real", name, resolution, stats))
    return rows


def simulated_rows(shared: Path, count: int, seed: int) -> tuple[list[Row], dict]:
    """``(family, name, resolution, statistics)`` of ``count`` models simulated both ways, same
    seeds; and per family the signal-to-noise ratios at the drawn R and at 1.5 R (the signal
    and the noise apart, before post-processing, which scales both alike)."""
    data, info = mapio.read_map(shared / "unpaired" / "emd_6824.mrc")
    reference = degrade.radial_power_spectrum(data, info.voxel_size_zyx)
    models = sorted((shared / "structures").iterdir()) + sorted(
        (shared / "structures-bm5").iterdir())
    chosen = [models[i] for i in np.linspace(0, len(models) - 1, count).astype(int)]
    rows, snr = [], {}
    for number, path in enumerate(chosen):
        atoms = pair_shards.heavy_atoms(read_atoms(path))
        for kind in degrade.DEGRADATION_KINDS:
            signal, noise, low, params = degrade.simulated_parts(
                atoms, reference, np.random.default_rng(seed + number), kind)
            raw = degrade.post_processed(signal + noise, atoms.xyz - low, params)
            rows.append((f"simulated, {kind}", path.name.split(".")[0], params.resolution_A,
                         map_statistics(raw, (1.0, 1.0, 1.0), params.resolution_A)))
            snr.setdefault(f"simulated, {kind}", []).append(
                snr_at(signal, noise, params.resolution_A))
    return rows, snr


def snr_at(signal: np.ndarray, noise: np.ndarray, resolution_A: float) -> tuple[float, float]:
    """The signal-to-noise power ratio of the shells at 1/R and 1/(1.5 R) (a real map has
    that of an FSC = 0.143 shell at its resolution, and mostly 10-1000 at 1.5 R)."""
    frequency, signal_power = degrade.radial_power_spectrum(signal, (1.0, 1.0, 1.0))
    _, noise_power = degrade.radial_power_spectrum(noise, (1.0, 1.0, 1.0))
    ratio = signal_power / np.maximum(noise_power, 1e-30)
    return tuple(float(np.interp(1.0 / r, frequency, ratio)) for r in (resolution_A,
                                                                         1.5 * resolution_A))


SPECTRAL = FIGURES[:3]
INTERMEDIATE_A = (4.5, 8.0)


def medians(rows) -> dict[str, dict[str, float]]:
    """Median of every figure per family (NaNs left out). For the real maps' amplitude
    fall-off only the maps at an intermediate resolution count (the others are 3.2–3.9 Å)."""
    families: dict[str, list] = {}
    for family, _, resolution, stats in rows:
        figures = stats.to_dict()
        if family == "real" and not INTERMEDIATE_A[0] <= (resolution or 0) <= INTERMEDIATE_A[1]:
            figures.update({f: float("nan") for f in SPECTRAL})
        families.setdefault(family, []).append(figures)
    return {family: {f: _median([r[f] for r in values]) for f in FIGURES}
            for family, values in families.items()}


def _median(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    simulated, snr = simulated_rows(args.shared, args.models, args.seed)
    rows = real_rows(args.shared) + simulated
    header = "".join(f"{f[:16]:>17}" for f in FIGURES)
    print(f"{'family':<36}{'map':<22}{'R (Å)':>6}{header}")
    for family, name, resolution, stats in rows:
        print(f"{family:<36}{name[:21]:<22}{resolution or float('nan'):>6.1f}"
              + "".join(f"{v:>17.3f}" for v in stats.to_dict().values()))
    summary = medians(rows)
    print("\nmedians per family")
    for family, values in summary.items():
        print(f"{family:<64}" + "".join(f"{values[f]:>17.3f}" for f in FIGURES))
    print("\n|simulated median - real median| (real: not eval; fall-off from the real maps at "
          "4.5-8 Å only)")
    for family in (f"simulated, {kind}" for kind in degrade.DEGRADATION_KINDS):
        gaps = [abs(summary[family][f] - summary["real"][f]) for f in FIGURES]
        print(f"{family:<64}" + "".join(f"{g:>17.3f}" for g in gaps))
    print(f"\nsignal-to-noise ratio, median (min-max) over the maps (a real map: "
          f"{degrade.SNR_AT_RESOLUTION:.3f} at R, by the FSC = 0.143 definition)")
    for family, values in snr.items():
        at_r, at_15 = np.array(values).T
        print(f"{family:<36} at R {np.median(at_r):9.3f} ({at_r.min():.3f}-{at_r.max():.3f})"
              f"   at 1.5 R {np.median(at_15):9.2f} ({at_15.min():.2f}-{at_15.max():.2f})")
    if args.json:
        args.json.write_text(json.dumps({"rows": [(f, n, r, s.to_dict()) for f, n, r, s in rows],
                                         "medians": summary, "snr_at_R_and_1.5R": snr},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
