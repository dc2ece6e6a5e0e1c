"""How well the bare ``enhance`` finds a map's resolution, and what that does to the map.

Part 1, the estimator (:mod:`cryosamu_cli.enhance.resolution_estimate`) against known
resolutions: every ``train`` pair of a pairs CSV degraded to 4.5, 6 and 8 Å in three kinds (raw:
blur + noise; post-processed: then low-passed at R; post-processed + masked: the input's mask
kept, or a soft molecular mask), and every real map at its own listed resolution. Median and
worst relative error per kind. Then realistic simulated maps (``--simulated N`` structures of
``../shared/data/structures*``, the ``realistic`` degradation of ``prepare-data``: a random
4–8 Å, resolution falling towards the rim, half of them post-processed and masked).

Part 2, map quality on the validation maps (the ``train`` pairs of the validation split, never
``eval``), degraded to 4.5–8 Å raw and post-processed: the shipped network enhanced once, then
band-limited at the known R (``enhance --resolution R``) and at the estimated R (the bare
command), each locally around that R (the default) and with one global band
(``--band-limit global``), against the degraded map and that map low-passed at R. CC_box /
CC_mask as the model card's validation scores them (:mod:`cryosamu_cli.training.validation`).

Part 3, the band to write when nothing gives a resolution: the same maps, the output limited
at fixed resolutions (and the full band) whatever their true R, against the true R.

    python benchmarks/resolution_estimate.py ../shared/data/pairs.csv         # ~10 min, 2 cores
    python benchmarks/resolution_estimate.py ../shared/data/pairs.csv --part 1
    python benchmarks/resolution_estimate.py ../shared/data/pairs.csv --part 3   # no estimate
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from cryosamu_cli import grid, mapio
from cryosamu_cli.data import degrade, map_statistics, pair_shards, real_degradation
from cryosamu_cli.data.pairs import read_pairs
from cryosamu_cli.enhance import local_resolution, predictor
from cryosamu_cli.enhance.band import BAND_EDGE
from cryosamu_cli.enhance.resolution_estimate import estimate_resolution, molecule_and_solvent
from cryosamu_cli.errors import ResolutionUnknownError
from cryosamu_cli.structure import read_atoms
from cryosamu_cli.training import validation

KINDS = ("raw", "post-processed", "post-processed + masked")
RESOLUTIONS_A = (4.5, 6.0, 8.0)
VALIDATION_PAIRS = ("emd-1461", "emd-1461-96o", "emd-2566")  # training/pairs-v2.csv's val split
VALIDATION_DEGRADATIONS = ((4.5, "post-processed"), (5.0, "post-processed"), (6.0, "raw"),
                           (6.5, "raw"), (8.0, "post-processed"), (5.0, "deposited-like"),
                           (6.5, "deposited-like"))


def degraded(data: np.ndarray, voxel: tuple, resolution_A: float, kind: str,
             seed: int) -> np.ndarray:
    """``data`` brought to ``resolution_A`` as ``kind`` says."""
    masked = kind.endswith("masked")
    out, _ = real_degradation.degraded_real_map(data, voxel, resolution_A, seed=seed,
                                                low_pass=kind != "raw", keep_mask=masked)
    if masked and map_statistics.background_mask(data) is None:
        molecule, _ = molecule_and_solvent(data, voxel)
        out = out * grid.soft_mask(molecule > 0.5, edge_voxels=3.0)
    return out


def estimated(data: np.ndarray, voxel: tuple) -> tuple[float, str]:
    """(estimate in Å or NaN, method)."""
    try:
        estimate = estimate_resolution(data, voxel)
    except ResolutionUnknownError:
        return float("nan"), "none"
    return estimate.resolution_A, estimate.method + ("" if estimate.confident else ", weak")


def estimator_accuracy(pairs_csv: str) -> None:
    """Part 1: the table of relative errors per kind, and the real maps at their own R."""
    errors: dict[str, list[float]] = defaultdict(list)
    train_pairs = read_pairs(pairs_csv, role="train")
    for index, pair in enumerate(train_pairs):
        data, info = mapio.read_map(pair.map_path)
        voxel = info.voxel_size_zyx
        for kind in KINDS:
            for resolution_A in RESOLUTIONS_A:
                value, method = estimated(degraded(data, voxel, resolution_A, kind,
                                                   seed=index * 10 + int(resolution_A)), voxel)
                errors[kind].append((value - resolution_A) / resolution_A)
                print(f"  {pair.name:16s} {kind:24s} R {resolution_A:4.1f}  estimate "
                      f"{value:5.2f} ({100 * errors[kind][-1]:+5.1f} %, {method})")
    print("\n| kind | maps | median |error| | worst |error| | no estimate |\n|---|---|---|---|---|")
    for kind, values in errors.items():
        found = np.abs([v for v in values if np.isfinite(v)])
        print(f"| {kind} | {len(values)} | {100 * np.median(found):.1f} % | "
              f"{100 * found.max():.1f} % | {sum(not np.isfinite(v) for v in values)} |")
    print("\n| map | listed R | estimate | method |\n|---|---|---|---|")
    for pair in read_pairs(pairs_csv):
        if pair.resolution_A is None:
            continue
        data, info = mapio.read_map(pair.map_path)
        value, method = estimated(data, info.voxel_size_zyx)
        print(f"| {pair.name} | {pair.resolution_A:g} | {value:.2f} | {method} |")


def simulated_accuracy(shared: Path, count: int, seed: int = 0) -> None:
    """Part 1, realistic simulated maps: ``count`` structures spread over the structure
    folders, each simulated once (``prepare-data --simulate-from``'s realistic degradation,
    noise shaped like emd_6824's), estimate against the drawn resolution."""
    data, info = mapio.read_map(shared / "unpaired" / "emd_6824.mrc")
    reference = degrade.radial_power_spectrum(data, info.voxel_size_zyx)
    models = sorted((shared / "structures").iterdir()) + sorted(
        (shared / "structures-bm5").iterdir())
    chosen = [models[i] for i in np.linspace(0, len(models) - 1, count).astype(int)]
    errors: dict[str, list[float]] = defaultdict(list)
    for number, path in enumerate(chosen):
        atoms = pair_shards.heavy_atoms(read_atoms(path))
        raw, _, _, params = degrade.simulated_pair(
            atoms, reference, np.random.default_rng(seed + number), None, "realistic")
        value, method = estimated(raw, (1.0, 1.0, 1.0))
        kind = ("post-processed" if params.low_pass else "raw") + (
            " + masked" if params.mask_radius_A > 0 else "")
        error = (value - params.resolution_A) / params.resolution_A
        errors["all"].append(error)
        errors[kind].append(error)
        print(f"  {path.name.split('.')[0]:16s} {kind:24s} R {params.resolution_A:4.2f}  "
              f"periphery B {params.b_periphery:5.1f}  estimate {value:5.2f} "
              f"({100 * error:+5.1f} %, {method})")
    print("\n| realistic simulated | maps | median |error| | worst |error| | no estimate |"
          "\n|---|---|---|---|---|")
    for kind, values in sorted(errors.items()):
        found = np.abs([v for v in values if np.isfinite(v)])
        median, worst = ((100 * np.median(found), 100 * found.max()) if found.size
                         else (float("nan"),) * 2)
        print(f"| {kind} | {len(values)} | {median:.1f} % | {worst:.1f} % | "
              f"{sum(not np.isfinite(v) for v in values)} |")


def enhanced_validation_maps(pairs_csv: str, weights: str | None):
    """The validation maps (:data:`VALIDATION_PAIRS` degraded by :data:`VALIDATION_DEGRADATIONS`),
    each with the network's full-band 1 Å output and the arguments that resample it back."""
    pairs = [p for p in read_pairs(pairs_csv, role="train") if p.name in VALIDATION_PAIRS]
    enhancer = predictor.load_enhancer(weights=weights, device="cpu", precision="fp32")
    for vmap in validation.validation_maps(pairs, VALIDATION_DEGRADATIONS):
        on_1A = grid.resample_to_spacing(vmap.data, vmap.grid.voxel_size_zyx)
        full = enhancer.run(grid.normalise(on_1A, grid.normalisation_of(on_1A)))[0]
        yield vmap, full, (grid.NETWORK_VOXEL_SIZE_A, vmap.grid.shape_zyx,
                           vmap.grid.voxel_size_zyx)


def print_means(first_column: str, rows: dict[str, list[tuple[str, dict]]]) -> None:
    """A Markdown table of mean CC_box and CC_mask per label (rows: ``(map name, scores)``),
    over all maps and per validation kind."""
    print(f"\n| {first_column} | maps | CC_box | CC_mask |\n|---|---|---|---|")
    for kind in ("all",) + validation.VALIDATION_KINDS:
        for label, scored in rows.items():
            chosen = [s for name, s in scored if kind in ("all", validation.kind_of(name))]
            if chosen:
                mean = validation.mean_scores(chosen)
                print(f"| {label}{'' if kind == 'all' else f' ({kind})'} | {len(chosen)} | "
                      f"{mean['cc_box']:.4f} | {mean['cc_mask']:.4f} |")


def map_quality(pairs_csv: str, weights: str | None) -> None:
    """Part 2: bare (estimated R) against --resolution R on the validation maps."""
    rows: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for vmap, full, back in enhanced_validation_maps(pairs_csv, weights):
        voxel = vmap.grid.voxel_size_zyx
        guess, method = estimated(vmap.data, voxel)
        maps = {"degraded map": vmap.data,
                "degraded map low-passed at R": grid.band_limit(vmap.data, voxel,
                                                                vmap.resolution_A)}
        limits = {"--resolution R": vmap.resolution_A}
        if np.isfinite(guess):
            limits["(bare: estimated R)"] = guess
        for words, resolution_A in limits.items():
            maps[f"enhance {words} --band-limit global"] = grid.resample_to_grid(
                grid.band_limit(full, (1.0,) * 3, resolution_A, BAND_EDGE), *back)
            local_A = local_resolution.local_resolution(vmap.data, voxel, resolution_A)
            maps[f"enhance {words}"] = grid.resample_to_grid(
                local_resolution.locally_limited(full, grid.resample_to_spacing(local_A, voxel),
                                                 resolution_A, BAND_EDGE), *back)
        print(f"\n{vmap.name}: estimate {guess:.2f} Å ({method})")
        for label, data in maps.items():
            scores = vmap.scores(data)
            rows[label].append((vmap.name, scores))
            print(f"  {label:45s} CC_box {scores['cc_box']:.3f}  CC_mask {scores['cc_mask']:.3f}")
    print_means("how it was run", rows)


FALLBACKS_A = (None, 5.0, 6.0, 7.0, 8.0)  # None: the full band


def fallback_band(pairs_csv: str, weights: str | None) -> None:
    """Part 3: which band limit to write when nothing gives the resolution: on the validation
    maps, the network's output limited at each of :data:`FALLBACKS_A` whatever the map's true
    R, against the true R."""
    rows: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for vmap, full, back in enhanced_validation_maps(pairs_csv, weights):
        for label, limit in (("true R", vmap.resolution_A),
                             *((f"{r:g} Å" if r else "full band", r) for r in FALLBACKS_A)):
            limited = full if limit is None else grid.band_limit(full, (1.0,) * 3, limit,
                                                                  BAND_EDGE)
            scores = vmap.scores(grid.resample_to_grid(limited, *back))
            rows[label].append((vmap.name, scores))
            print(f"  {vmap.name:24s} {label:10s} CC_box {scores['cc_box']:.3f}  "
                  f"CC_mask {scores['cc_mask']:.3f}", flush=True)
    print_means("band limit", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs_csv")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--part", type=int, choices=(1, 2, 3), default=None)
    parser.add_argument("--simulated", type=int, default=24,
                        help="realistic simulated maps in part 1 (0: none)")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    if args.part in (None, 1):
        estimator_accuracy(args.pairs_csv)
        if args.simulated:
            simulated_accuracy(args.shared, args.simulated)
    if args.part in (None, 2):
        map_quality(args.pairs_csv, args.weights)
    if args.part in (None, 3):
        fallback_band(args.pairs_csv, args.weights)


if __name__ == "__main__":
    main()
