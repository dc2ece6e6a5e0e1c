"""Checkpoints side by side on the validation maps: what chooses whether a model ships.

The ``val`` pairs of a split CSV (never ``eval`` pairs), degraded in the four kinds of
:mod:`cryosamu_cli.training.validation` (post-processed, raw, deposited-like: resolution falling
to the rim, low-passed and masked; weak-rim: density fading to half at the rim, raw) at
4.5–8 Å; each map enhanced by each checkpoint exactly as
``enhance --resolution R`` does, and scored against its model map: CC_box, CC_mask, CC_volume,
CC_peaks (phenix.map_model_cc definitions), the map–model FSC = 0.5 resolution, and CC_mask
within three shells from the box centre to its rim (``cc_centre``, ``cc_middle``, ``cc_rim``:
``real_degradation.box_rim_weight`` 0–0.4, 0.4–0.7, 0.7–1, where deposited-like maps lose
resolution and weak-rim maps density) and the rim shell's level against the model's
(``rim_level``). The degraded map and that map low-passed at R are scored beside them. Means per
kind, over the first three kinds (the 15 maps that chose checkpoints until weak-rim was added)
and over all maps.

    python benchmarks/compare_weights.py training/pairs-v2.csv \\
        --weights weights/cryosamu-light-v2.pt --weights runs/v3/best.pt    # ~12 min, 2 cores
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from cryosamu_cli import grid, metrics
from cryosamu_cli.data import real_degradation
from cryosamu_cli.enhance import predictor
from cryosamu_cli.training import validation

DEGRADATIONS = ((4.5, "post-processed"), (6.0, "raw"), (8.0, "post-processed"),
                (5.0, "deposited-like"), (6.5, "deposited-like"), (6.5, "weak-rim"))
EARLIER_KINDS = ("post-processed", "raw", "deposited-like")  # the 15 maps of earlier notes
RIM_SHELLS = {"cc_centre": (0.0, 0.4), "cc_middle": (0.4, 0.7), "cc_rim": (0.7, 1.0)}
METRICS = ("cc_box", "cc_mask", "cc_volume", "cc_peaks", "fsc05") + tuple(RIM_SHELLS) + (
    "rim_level",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_csv")
    parser.add_argument("--weights", action="append", required=True)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    from cryosamu_cli.data.pairs import read_pairs

    pairs = [p for p in read_pairs(args.split_csv) if p.split == "val"]
    maps = validation.validation_maps(pairs, DEGRADATIONS)
    predictors = {w: validation_predictor(w, args.precision) for w in args.weights}
    rows: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for vmap in maps:
        candidates = {"degraded map": vmap.data,
                      "degraded map low-passed at R": grid.band_limit(
                          vmap.data, vmap.grid.voxel_size_zyx, vmap.resolution_A)}
        for weights, predict in predictors.items():
            candidates[weights] = validation.enhanced_like_enhance(predict, vmap)
        shells = rim_shells(vmap)
        for label, data in candidates.items():
            scores = {**vmap.scores(data, with_fsc=True), **rim_shell_scores(vmap, shells, data)}
            kind = validation.kind_of(vmap.name)
            rows[label][kind].append(scores)
            if kind in EARLIER_KINDS:
                rows[label]["first three kinds"].append(scores)
            rows[label]["all"].append(scores)
            print(f"  {vmap.name:24s} {label:40s} " + "  ".join(
                f"{m} {scores[m]:.3f}" for m in METRICS), flush=True)
    for kind in validation.VALIDATION_KINDS + ("first three kinds", "all"):
        print(f"\n{kind}:\n| map | maps | " + " | ".join(METRICS) + " |\n|---|---|"
              + "---|" * len(METRICS))
        for label, by_kind in rows.items():
            mean = validation.mean_scores(by_kind[kind])
            print(f"| {label} | {len(by_kind[kind])} | "
                  + " | ".join(f"{mean[m]:.3f}" for m in METRICS) + " |")


def rim_shells(vmap: validation.ValidationMap) -> dict[str, np.ndarray]:
    """The mask's voxels in each shell of :data:`RIM_SHELLS` (the rim shell includes the
    voxels beyond ``box_rim_weight``'s 1)."""
    rim = real_degradation.box_rim_weight(vmap.data.shape, vmap.grid.voxel_size_zyx)
    shells = {}
    for name, (low, high) in RIM_SHELLS.items():
        shells[name] = vmap.inside & (rim >= low)
        if high < 1.0:
            shells[name] &= rim < high
    return shells


def rim_shell_scores(vmap: validation.ValidationMap, shells: dict[str, np.ndarray],
                     data: np.ndarray) -> dict[str, float]:
    """CC_mask of ``data`` against the model map within each of :func:`rim_shells`, and
    ``rim_level``: how far the rim shell's mean lies below (negative) or above the model map's,
    both measured from their mask's mean in their mask's standard deviations (a weak periphery
    pushed towards the solvent reads negative; it costs CC_mask even where the shape inside each
    shell is right)."""
    scores = {name: metrics.pearson(data[shell], vmap.model_map[shell])
              for name, shell in shells.items()}
    outer = shells["cc_rim"]
    scores["rim_level"] = (_level(data, outer, vmap.inside)
                           - _level(vmap.model_map, outer, vmap.inside))
    return scores


def _level(volume: np.ndarray, shell: np.ndarray, inside: np.ndarray) -> float:
    """The mean of ``volume`` in ``shell`` less its mean in ``inside``, in s.d.s of ``inside``."""
    return float((volume[shell].mean() - volume[inside].mean()) / volume[inside].std())


def validation_predictor(weights: str, precision: str):
    """The network of ``weights`` as the validation runs it (no TTA)."""
    enhancer = predictor.load_enhancer(weights=weights, device="cpu", precision=precision)
    return predictor.NetworkPredictor(enhancer.model, enhancer.device, 0, enhancer.precision)


if __name__ == "__main__":
    main()
