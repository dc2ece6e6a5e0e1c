"""Peak memory of enhancing a large map, and what the block-wise resampling saves.

A synthetic N³ map (default 400³) with 1.1 Å voxels, so that both resamplings (to the network's
1 Å grid, 440³ for the default, and back) do real work, is enhanced by ``enhance_map`` in a
fresh process per run with a small random network. By default every cube is skipped (a skip
threshold above the normalised maximum: the skipped cubes get the network's empty-cube output),
so the run takes a minute on a CPU and measures the arrays that grow with the map: the 1 Å
grid, its normalised copy, the stitched output, the band limit, the resamplings; the network's
activations are the fixed part (``--run-network`` runs every cube too). Runs:

* ``blocks``: the shipped code (resampling by slabs of ``grid.RESAMPLE_BLOCK_VOXELS`` output
  voxels, the band limit's weights one Fourier plane at a time);
* ``whole``: the same with the resampling done in one call over the whole map (the code before
  the block-wise resampling; the band limit stays per plane);
* ``local``: the shipped code on the same map with noise in its solvent, so that the local
  resolution is measured and the default band limit blends its ladder of band-limited copies
  (on the masked map of ``blocks`` the local values are uniform and one global band is used).

Printed per run: peak RSS, the peak above the RSS just before ``enhance_map`` (map read, network
loaded), that excess per voxel of the 1 Å grid, and ``cryosamu_cli.enhance.memory``'s estimate (what a
run is checked against before it starts), plus seconds end to end.

    python benchmarks/large_map_memory.py                  # 400³, blocks and whole
    python benchmarks/large_map_memory.py --runs blocks,local
    python benchmarks/large_map_memory.py --edge 256 --runs blocks
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_checkpoint  # noqa: E402

VOXEL_SIZE_A = 1.1


def rss_MiB() -> float:
    """This process's current resident memory."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2 ** 20


def peak_rss_MiB() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_synthetic_map(path: Path, edge: int, solvent_noise: float = 0.0) -> None:
    """Smooth density in a centred sphere (like a masked map), 1.1 Å voxels; with
    ``solvent_noise``, white noise of that standard deviation outside it (like a raw map)."""
    from scipy import ndimage

    from cryosamu_cli.mapio import GridInfo, write_map

    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.standard_normal((edge,) * 3, dtype=np.float32), 2.0)
    z, y, x = np.ogrid[:edge, :edge, :edge]
    centre = (edge - 1) / 2
    outside = (z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 > (0.4 * edge) ** 2
    volume[outside] = 0
    if solvent_noise:
        volume += np.where(outside, solvent_noise * rng.standard_normal(volume.shape,
                                                                        dtype=np.float32), 0)
    cell = float(edge * VOXEL_SIZE_A)
    grid = GridInfo((edge,) * 3, (VOXEL_SIZE_A,) * 3, (0.0,) * 3, (0, 0, 0), (cell,) * 3,
                    (90.0,) * 3, (edge,) * 3, (1, 2, 3), 1)
    write_map(path, volume, grid)


def run_one(mode: str, source: Path, weights: Path, output: Path, run_network: bool) -> dict:
    """Enhance ``source`` in this process and measure its memory."""
    from cryosamu_cli import grid
    from cryosamu_cli.enhance import memory
    from cryosamu_cli.enhance.pipeline import enhance_map
    from cryosamu_cli.mapio import read_map
    from cryosamu_cli.enhance.predictor import load_enhancer

    if mode == "whole":
        grid.RESAMPLE_BLOCK_VOXELS = 1 << 62
    data, info = read_map(source)
    enhancer = load_enhancer(weights=weights, device="cpu", precision="fp32",
                             skip_threshold=-1.0 if run_network else 2.0)
    del data
    before = rss_MiB()
    started = time.perf_counter()
    result = enhance_map(input_path=source, output_path=output, force=True, enhancer=enhancer,
                         resolution=6.0)
    seconds = time.perf_counter() - started
    shape_1A = grid.resampled_shape(info.shape_zyx, info.voxel_size_zyx)
    voxels_1A = int(np.prod(shape_1A))
    peak = peak_rss_MiB()
    return {"mode": mode, "edge": info.shape_zyx[0], "grid_1A": list(shape_1A),
            "network": "every cube" if run_network else "no cube (all skipped)",
            "peak_rss_MiB": round(peak, 1), "rss_before_MiB": round(before, 1),
            "excess_MiB": round(peak - before, 1),
            "excess_bytes_per_1A_voxel": round((peak - before) * 2 ** 20 / voxels_1A, 1),
            "estimate_MiB": round(memory.enhance_bytes(info.shape_zyx, info.voxel_size_zyx,
                                                       local_band=True) / 2 ** 20, 1),
            "band_limit": result.resolution.band, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", type=int, default=400, help="Map edge in voxels.")
    parser.add_argument("--runs", default="blocks,whole", help="blocks, whole and/or local.")
    parser.add_argument("--base-channels", type=int, default=8,
                        help="Width of the random network (16: the shipped model's).")
    parser.add_argument("--run-network", action="store_true",
                        help="Run the network on every cube (slow on a CPU).")
    parser.add_argument("--single", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        mode, source, weights, run_network = args.single
        print(json.dumps(run_one(mode, Path(source), Path(weights),
                                 Path(source).with_name(f"out_{mode}.mrc"),
                                 run_network == "1")))
        return
    from cryosamu_cli.model.config import preset_config

    with tempfile.TemporaryDirectory() as folder:
        source, weights = Path(folder) / f"in_{args.edge}.mrc", Path(folder) / "net.pt"
        write_synthetic_map(source, args.edge)
        noisy = source.with_name(f"in_{args.edge}_noisy.mrc")
        if "local" in args.runs:
            write_synthetic_map(noisy, args.edge, solvent_noise=0.05)
        random_checkpoint(weights, config=preset_config("light", args.base_channels))
        print(f"map {args.edge}³ at {VOXEL_SIZE_A} Å ({args.edge ** 3 * 4 / 2 ** 20:.0f} MiB), "
              f"random light network with {args.base_channels} base channels")
        for mode in args.runs.split(","):
            done = subprocess.run([sys.executable, __file__, "--single", mode,
                                   str(noisy if mode == "local" else source),
                                   str(weights), "1" if args.run_network else "0"],
                                  capture_output=True, text=True, check=True)
            print(json.dumps(json.loads(done.stdout.strip().splitlines()[-1])), flush=True)


if __name__ == "__main__":
    main()
