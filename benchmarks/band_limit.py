"""Which band limit serves the enhanced map: measured on degraded real training maps.

For every ``train`` pair of a pairs CSV (never the ``eval`` ones), each degradation of
:data:`cryosamu_cli.training.validation.DEFAULT_DEGRADATIONS` is enhanced once with the network's full
band, then limited at the map's resolution with each candidate edge (as ``enhance`` does: on
the 1 Å grid, then resampled back), and scored by CC_box / CC_mask against the model map at
that resolution. The deposited (degraded) map and its hard truncation are the references.

    python benchmarks/band_limit.py ../shared/data/pairs.csv            # ~5 min on 2 cores
    python benchmarks/band_limit.py ../shared/data/pairs.csv --weights runs/x/best.pt
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cryosamu_cli import grid
from cryosamu_cli.enhance import predictor
from cryosamu_cli.training import validation
from cryosamu_cli.data.pairs import read_pairs

# (label, (pass, stop) multiples of 1/R); see cryosamu_cli.grid.low_pass_weights
EDGES = {"hard": (1.0, 1.0), "cosine 1.0-1.2": (1.0, 1.2), "cosine 0.9-1.1": (0.9, 1.1),
         "cosine 0.8-1.0": (0.8, 1.0)}


def enhanced_1A(enhancer: predictor.Enhancer, vmap: validation.ValidationMap) -> np.ndarray:
    """The network's full-band output on the 1 Å grid, as ``enhance_map`` computes it."""
    on_1A = grid.resample_to_spacing(vmap.data, vmap.grid.voxel_size_zyx)
    normalised = grid.normalise(on_1A, grid.normalisation_of(on_1A))
    return enhancer.run(normalised)[0]


def candidates(enhancer: predictor.Enhancer, vmap: validation.ValidationMap) -> dict:
    """Label → map on the validation map's grid, for every variant compared."""
    voxel = vmap.grid.voxel_size_zyx
    maps = {"deposited": vmap.data,
            "deposited, truncated": grid.band_limit(vmap.data, voxel, vmap.resolution_A)}
    full = enhanced_1A(enhancer, vmap)
    back = (grid.NETWORK_VOXEL_SIZE_A, vmap.grid.shape_zyx, voxel)
    maps["network, full band"] = grid.resample_to_grid(full, *back)
    for label, edge in EDGES.items():
        limited = grid.band_limit(full, (1.0, 1.0, 1.0), vmap.resolution_A, edge)
        maps[f"network, {label}"] = grid.resample_to_grid(limited, *back)
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs_csv")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--pairs", default="emd-1461,emd-1461-96o,emd-2566",
                        help="train pairs to use (comma-separated names; default: the validation pairs of training/pairs-v2.csv)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = args.pairs.split(",")
    pairs = [p for p in read_pairs(args.pairs_csv, role="train") if p.name in names]
    enhancer = predictor.load_enhancer(weights=args.weights, device="cpu", precision="fp32")
    table: dict[str, list[dict]] = {}
    for vmap in validation.validation_maps(pairs):
        print(f"\n{vmap.name} ({vmap.degradation.to_dict()})")
        for label, data in candidates(enhancer, vmap).items():
            scores = vmap.scores(data)
            table.setdefault(label, []).append({"map": vmap.name, **scores})
            print(f"  {label:24s} CC_box {scores['cc_box']:.3f}  CC_mask {scores['cc_mask']:.3f}")
    print(f"\nmean over {len(next(iter(table.values())))} maps ({enhancer.weights_path.name})")
    for label, rows in table.items():
        mean = validation.mean_scores([{k: r[k] for k in ("cc_box", "cc_mask")} for r in rows])
        print(f"  {label:24s} CC_box {mean['cc_box']:.3f}  CC_mask {mean['cc_mask']:.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(table, handle, indent=1)


if __name__ == "__main__":
    main()
