"""Test-time augmentation (``enhance --tta N``): map quality and seconds for N = 1, 2, 4, 8.

On the validation maps (the ``val`` pairs of a split CSV, degraded as the model card's
validation degrades them; never ``eval`` pairs), each map enhanced as ``enhance --resolution
R --tta N`` computes it, scored by CC_box / CC_mask against its model map.

    python benchmarks/tta.py training/pairs-v2.csv                    # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import time

from cryosamu_cli import grid
from cryosamu_cli.enhance import predictor
from cryosamu_cli.enhance.band import BAND_EDGE
from cryosamu_cli.training import validation

COUNTS = (1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_csv")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    maps = validation.validation_maps_from_csv(args.split_csv)
    print("| --tta N | maps | CC_box | CC_mask | network seconds (all maps) |\n|---|---|---|---|---|")
    for count in COUNTS:
        enhancer = predictor.load_enhancer(weights=args.weights, device="cpu",
                                           precision=args.precision, tta=count)
        scores, seconds = [], 0.0
        for vmap in maps:
            voxel = vmap.grid.voxel_size_zyx
            on_1A = grid.resample_to_spacing(vmap.data, voxel)
            started = time.perf_counter()
            full = enhancer.run(grid.normalise(on_1A, grid.normalisation_of(on_1A)))[0]
            seconds += time.perf_counter() - started
            limited = grid.band_limit(full, (1.0,) * 3, vmap.resolution_A, BAND_EDGE)
            back = grid.resample_to_grid(limited, grid.NETWORK_VOXEL_SIZE_A,
                                         vmap.grid.shape_zyx, voxel)
            scores.append(vmap.scores(back))
        mean = validation.mean_scores(scores)
        print(f"| {count} | {len(maps)} | {mean['cc_box']:.4f} | {mean['cc_mask']:.4f} | "
              f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
