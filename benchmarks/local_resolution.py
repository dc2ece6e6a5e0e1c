"""Local resolution (``enhance``'s default band limit): does a band limit that follows each
region beat one global band limit (``--band-limit global``), on maps whose resolution falls
from centre to rim?

Validation maps only (the ``val`` pairs of a split CSV, never ``eval``): each degraded twice
by :func:`cryosamu_cli.data.real_degradation.degraded_real_map`, at R_centre and R_rim, and
blended by the distance from the box centre (the centre's copy inside, the rim's copy from 60 %
of the way out), as raw maps and post-processed ones (then low-passed at R_centre). The shipped
network enhances each once; its output is limited at the global estimate (``--band-limit
global``) or locally around it (the default: the local values followed
:data:`cryosamu_cli.enhance.local_resolution.FOLLOW` of the way), and scored by CC_box /
CC_mask against the model map at R_centre. Also printed: the local resolution's median in the
centre and at the rim.

    python benchmarks/local_resolution.py training/pairs-v2.csv               # ~5 min
"""

from __future__ import annotations

import argparse

import numpy as np

from cryosamu_cli import grid, mapio, metrics
from cryosamu_cli.data import real_degradation
from cryosamu_cli.data.pairs import read_pairs
from cryosamu_cli.enhance import local_resolution, predictor
from cryosamu_cli.enhance.band import BAND_EDGE
from cryosamu_cli.enhance.resolution_estimate import estimate_resolution
from cryosamu_cli.structure import read_atoms
from cryosamu_cli.training import validation

GRADIENTS = ((5.0, 8.0), (4.5, 6.5))  # (centre, rim) resolutions in Å


def gradient_map(data: np.ndarray, voxel: tuple, centre_A: float, rim_A: float, seed: int,
                 low_pass: bool) -> tuple[np.ndarray, np.ndarray]:
    """``data`` at ``centre_A`` in the middle and ``rim_A`` towards the rim; and the blend
    weight of the rim copy per voxel."""
    inner, _ = real_degradation.degraded_real_map(data, voxel, centre_A, seed=seed,
                                                  low_pass=False)
    outer, _ = real_degradation.degraded_real_map(data, voxel, rim_A, seed=seed + 1,
                                                  low_pass=False)
    weight = real_degradation.box_rim_weight(data.shape, voxel)
    blended = (1 - weight) * inner + weight * outer
    if low_pass:
        blended = grid.band_limit(blended, voxel, centre_A)
    return blended.astype(np.float32), weight


def enhanced_gradient_maps(split_csv: str, weights: str | None):
    """Each gradient map of the ``val`` pairs with what scoring it needs: a label, the rim
    copy's weight per voxel, the model map and its mask at R_centre, the global estimate, the
    local resolution, the network's full-band 1 Å output and the arguments that resample it
    back."""
    pairs = [p for p in read_pairs(split_csv) if p.split == "val"]
    enhancer = predictor.load_enhancer(weights=weights, device="cpu", precision="fp32")
    for index, pair in enumerate(pairs):
        data, info = mapio.read_map(pair.map_path)
        voxel, atoms = info.voxel_size_zyx, read_atoms(pair.model_path)
        for number, ((centre_A, rim_A), low_pass) in enumerate(
                [(g, lp) for g in GRADIENTS for lp in (False, True)]):
            degraded, weight = gradient_map(data, voxel, centre_A, rim_A,
                                            seed=100 * index + number, low_pass=low_pass)
            model_map, inside = metrics.model_map_and_mask(info, atoms, centre_A)
            global_A = estimate_resolution(degraded, voxel).resolution_A
            local_A = local_resolution.local_resolution(degraded, voxel, global_A)
            on_1A = grid.resample_to_spacing(degraded, voxel)
            full = enhancer.run(grid.normalise(on_1A, grid.normalisation_of(on_1A)))[0]
            back = (grid.NETWORK_VOXEL_SIZE_A, info.shape_zyx, voxel)
            label = f"{pair.name} {centre_A:g}->{rim_A:g} A {'post' if low_pass else 'raw'}"
            yield label, weight, model_map, inside, global_A, local_A, full, back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_csv")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"global": [], "local": []}
    for (label, weight, model_map, inside, global_A, local_A, full,
         back) in enhanced_gradient_maps(args.split_csv, args.weights):
        voxel = back[2]
        maps = {"global": grid.band_limit(full, (1.0,) * 3, global_A, BAND_EDGE),
                "local": local_resolution.locally_limited(
                    full, grid.resample_to_spacing(local_A, voxel), global_A, BAND_EDGE)}
        centre, rim = inside & (weight < 0.3), inside & (weight > 0.9)
        print(f"\n{label}: global estimate {global_A:.2f} A; local median centre "
              f"{np.median(local_A[centre]):.2f}, rim {np.median(local_A[rim]):.2f}")
        for name, limited in maps.items():
            on_grid = grid.resample_to_grid(limited, *back)
            scores = {"cc_box": metrics.pearson(on_grid, model_map),
                      "cc_mask": metrics.pearson(on_grid[inside], model_map[inside])}
            rows[name].append(scores)
            print(f"  {name:14s} CC_box {scores['cc_box']:.3f}  CC_mask {scores['cc_mask']:.3f}")
    print("\n| band limit | maps | CC_box | CC_mask |\n|---|---|---|---|")
    for name, scored in rows.items():
        mean = validation.mean_scores(scored)
        print(f"| {name} | {len(scored)} | {mean['cc_box']:.3f} | {mean['cc_mask']:.3f} |")


if __name__ == "__main__":
    main()
