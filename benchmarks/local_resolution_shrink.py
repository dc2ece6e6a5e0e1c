"""How far should the band limit follow the local resolution? The local values shrunk towards
the global one, R·(local / R)^α (``locally_limited``'s ``follow``), for α from 0 (one global
band: ``--band-limit global``) to 1 (the local values themselves; the default follows
:data:`cryosamu_cli.enhance.local_resolution.FOLLOW`, chosen with this), on every validation
map: the 21 of ``resolution_estimate.py --part 2`` and the 12 gradient maps of
``local_resolution.py``. Validation pairs only, never ``eval``. Prints mean CC_box / CC_mask
per kind and α.

    python benchmarks/local_resolution_shrink.py training/pairs-v2.csv      # ~9 min, 2 cores
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_resolution as gradient_bench  # noqa: E402
import resolution_estimate as estimate_bench  # noqa: E402

from cryosamu_cli import grid, metrics  # noqa: E402
from cryosamu_cli.enhance import local_resolution  # noqa: E402
from cryosamu_cli.enhance.band import BAND_EDGE  # noqa: E402
from cryosamu_cli.training import validation  # noqa: E402

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def scored_by_alpha(full, local_A, global_A, voxel, back, score) -> dict[float, dict]:
    """The network's 1 Å output ``full`` limited at the shrunk local resolution, per α."""
    local_1A = grid.resample_to_spacing(local_A, voxel)
    scores = {}
    for alpha in ALPHAS:
        limited = local_resolution.locally_limited(full, local_1A, global_A, BAND_EDGE,
                                                   follow=alpha)
        scores[alpha] = score(grid.resample_to_grid(limited, *back))
    return scores


def uniform_maps(split_csv: str, weights: str | None):
    """(kind, scores per α) for the validation maps of resolution_estimate.py's part 2."""
    for vmap, full, back in estimate_bench.enhanced_validation_maps(split_csv, weights):
        voxel = vmap.grid.voxel_size_zyx
        guess, _ = estimate_bench.estimated(vmap.data, voxel)
        if np.isfinite(guess):
            local_A = local_resolution.local_resolution(vmap.data, voxel, guess)
            yield validation.kind_of(vmap.name), scored_by_alpha(full, local_A, guess, voxel,
                                                                  back, vmap.scores)


def gradient_maps(split_csv: str, weights: str | None):
    """("gradient", scores per α) for the maps of local_resolution.py."""
    for (_, _, model_map, inside, global_A, local_A, full,
         back) in gradient_bench.enhanced_gradient_maps(split_csv, weights):

        def score(volume, model_map=model_map, inside=inside):
            return {"cc_box": metrics.pearson(volume, model_map),
                    "cc_mask": metrics.pearson(volume[inside], model_map[inside])}

        yield "gradient", scored_by_alpha(full, local_A, global_A, back[2], back, score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_csv")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    rows: dict[str, list[dict[float, dict]]] = defaultdict(list)
    for source in (uniform_maps, gradient_maps):
        for kind, by_alpha in source(args.split_csv, args.weights):
            rows[kind].append(by_alpha)
            rows["all"].append(by_alpha)
            print(f"  {kind:15s} " + "  ".join(f"α {a:g}: {s['cc_box']:.3f}/{s['cc_mask']:.3f}"
                                                for a, s in by_alpha.items()),
                  file=sys.stderr, flush=True)
    print("\n| kind | maps | " + " | ".join(f"α = {a:g}" for a in ALPHAS) + " |")
    print("|---|---|" + "---|" * len(ALPHAS))
    for kind, maps in rows.items():
        means = [np.mean([[m[a]["cc_box"], m[a]["cc_mask"]] for m in maps], axis=0)
                 for a in ALPHAS]
        print(f"| {kind} | {len(maps)} | "
              + " | ".join(f"{box:.4f} / {mask:.4f}" for box, mask in means) + " |")


if __name__ == "__main__":
    main()
