"""Less work in enhance: empty-cube skipping on real maps, and the core size against a
whole-map run.

1. For every map in ``../shared/data`` (pairs, unpaired, edge cases): cubes in the plan and the
   fraction skipped at each ``--thresholds`` value (a cube is skipped when its normalised 1 Å
   input never exceeds the threshold). With a model (the shipped one, or ``--weights``), on
   the maps named by ``--network-maps``: the output's correlation with the no-skip output,
   over the whole map and over the molecule (voxels where the no-skip output is above 10 % of
   its maximum), and the network seconds.
2. Core sizes (``--cores``) against one forward pass of the whole padded map, on the maps of
   ``--core-maps``: correlation of the stitched output with the whole-map output (whole box
   and molecule), cubes run and network seconds.

    python benchmarks/skip_and_core.py
    python benchmarks/skip_and_core.py --thresholds 0,0.1,0.2 --cores 40,50 --weights my.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUFFIXES = (".mrc", ".map", ".ccp4")


def usable_volumes() -> dict[str, np.ndarray]:
    """Every map under ``../shared/data`` that enhance accepts, read once, as the network sees
    it: resampled to 1 Å and normalised."""
    from cryosamu_cli import grid, mapio
    from cryosamu_cli.errors import CryosamuError

    volumes = {}
    for path in sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in SUFFIXES):
        try:
            data, info = mapio.read_map(path)
        except CryosamuError as exc:
            print(f"left out: {exc}")
            continue
        on_1A = grid.resample_to_spacing(data, info.voxel_size_zyx)
        volumes[path.name] = grid.normalise(on_1A, grid.normalisation_of(on_1A))
    return volumes


def skipped_fraction(volume: np.ndarray, threshold: float, core_size: int = 50) -> tuple[int, float]:
    """Cubes in the plan and the fraction whose input never exceeds ``threshold``."""
    from cryosamu_cli.enhance.tiling import CubePlan

    plan = CubePlan(tuple(volume.shape), 64, core_size)
    padded = plan.pad(volume)
    maxima = [float(padded[plan.cube_slices(i)].max()) for i in plan.cube_indices()]
    return plan.n_cubes, float(np.mean([m <= threshold for m in maxima]))


def correlations(output: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Correlation with the reference over the whole box and over the molecule."""
    molecule = reference > 0.1 * reference.max()
    whole = np.corrcoef(output.ravel(), reference.ravel())[0, 1]
    inside = np.corrcoef(output[molecule], reference[molecule])[0, 1]
    return float(whole), float(inside)


def tiled(enhancer, volume: np.ndarray, core_size: int, threshold: float):
    """Stitched output and stats for one core size and skip threshold."""
    from cryosamu_cli.enhance import tiling

    return tiling.enhance_tiled(volume, enhancer._predict, cube_size=64, core_size=core_size,
                                batch_size=enhancer.batch_size, skip_threshold=threshold)


def whole_map(enhancer, volume: np.ndarray) -> tuple[np.ndarray, float]:
    """One forward pass of the whole map, zero-padded to a multiple of 8 plus the cubes'
    7-voxel context on each side; returns the output cropped back and its seconds."""
    pad = [(7, 7 + (-(n + 14)) % 8) for n in volume.shape]
    padded = np.pad(volume, pad)
    started = time.perf_counter()
    out = enhancer._predict(padded[None])[0]
    seconds = time.perf_counter() - started
    return out[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, volume.shape))], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None)
    parser.add_argument("--thresholds", default="0,0.05,0.1,0.2")
    parser.add_argument("--network-maps", default="emd_1461.mrc,emd_5168.map,emd_6824.mrc")
    parser.add_argument("--cores", default="32,40,50,56")
    parser.add_argument("--core-maps", default="emd_5168_monomer.mrc,emd_1461.mrc")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs {SHARED}")
    from cryosamu_cli.enhance.predictor import load_enhancer

    thresholds = [float(t) for t in args.thresholds.split(",")]
    volumes = usable_volumes()
    print("skipped fraction of cubes (core 50) by threshold:")
    print(f"{'map':>32} {'1 Å shape':>16} {'cubes':>6} " + " ".join(f"{t:>6}" for t in thresholds))
    for name, volume in volumes.items():
        fractions = [skipped_fraction(volume, t) for t in thresholds]
        print(f"{name:>32} {str(volume.shape):>16} {fractions[0][0]:>6} "
              + " ".join(f"{f:>6.2f}" for _, f in fractions), flush=True)
    enhancer = load_enhancer(weights=args.weights, device="cpu", precision="fp32")
    print(f"\nnetwork: {enhancer.weights_path}")
    print(f"{'map':>24} {'threshold':>9} {'run':>4} {'skip':>4} {'network s':>9} "
          f"{'cc box':>8} {'cc molecule':>11}")
    for name in args.network_maps.split(","):
        reference, _ = tiled(enhancer, volumes[name], 50, -1.0)
        for threshold in thresholds:
            output, stats = tiled(enhancer, volumes[name], 50, threshold)
            box, molecule = correlations(output, reference)
            print(f"{name:>24} {threshold:>9} {stats.cubes_run:>4} {stats.cubes_skipped:>4} "
                  f"{stats.network_seconds:>9.1f} {box:>8.5f} {molecule:>11.5f}", flush=True)
    print(f"\n{'map':>24} {'core':>5} {'run':>4} {'network s':>9} {'cc box':>8} "
          f"{'cc molecule':>11}  (against one whole-map pass)")
    for name in args.core_maps.split(","):
        reference, seconds = whole_map(enhancer, volumes[name])
        print(f"{name:>24} {'whole':>5} {1:>4} {seconds:>9.1f} {1:>8.5f} {1:>11.5f}")
        for core in (int(c) for c in args.cores.split(",")):
            output, stats = tiled(enhancer, volumes[name], core, -1.0)
            box, molecule = correlations(output, reference)
            print(f"{name:>24} {core:>5} {stats.cubes_run:>4} {stats.network_seconds:>9.1f} "
                  f"{box:>8.5f} {molecule:>11.5f}", flush=True)


if __name__ == "__main__":
    main()
