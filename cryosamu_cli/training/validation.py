"""Real validation maps: training pairs degraded to 4–8 Å, scored as the benchmark scores.

Choosing a recipe, a band-limit edge or a checkpoint by the loss on simulated cubes does not
track what users measure (the model-quality issue: 0.41 → 0.58 on simulated cubes while every
real map got worse). Here the real ``train`` pairs of a pairs CSV, held out by map, are brought
to a lower resolution by :func:`cryosamu_cli.data.real_degradation.degraded_real_map` and any
candidate map is scored by CC_box and CC_mask (phenix.map_model_cc's definitions,
:mod:`cryosamu_cli.metrics`) against the model map at that resolution. The ``eval`` pairs are
never used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from cryosamu_cli import mapio, metrics
from cryosamu_cli.data import real_degradation
from cryosamu_cli.data.dataset import CubePairDataset
from cryosamu_cli.enhance import tiling
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.data.pairs import Pair
from cryosamu_cli.structure import read_atoms

# (resolution in Å, kind): post-processed, low-passed at it as deposited maps are; raw, with
# the noise beyond it as reconstructions have; deposited-like, its resolution falling towards
# the rim, low-passed and softly masked (data.real_degradation.deposited_like_map); weak-rim,
# raw after its density faded to WEAK_RIM_STRENGTH at the rim (data.real_degradation.
# faded_rim_map: a periphery in only part of the particles, scored against the whole model)
VALIDATION_KINDS = ("post-processed", "raw", "deposited-like", "weak-rim")
DEFAULT_DEGRADATIONS: tuple[tuple[float, str], ...] = (
    (5.0, "post-processed"), (6.5, "raw"), (6.0, "deposited-like"))
NAME_SUFFIX = {"post-processed": "", "raw": "-raw", "deposited-like": "-deposited",
               "weak-rim": "-weak-rim"}
WEAK_RIM_STRENGTH = 0.5


def kind_of(name: str) -> str:
    """The validation kind of a :class:`ValidationMap` from its name (its suffix)."""
    for kind, suffix in NAME_SUFFIX.items():
        if suffix and name.endswith(suffix):
            return kind
    return "post-processed"


@dataclass(frozen=True)
class ValidationMap:
    """One degraded real map with what it is scored against.

    Attributes:
        name: ``<pair>@<resolution>A``, ``-raw`` or ``-deposited`` appended for those kinds.
        data: The degraded map ``[z, y, x]`` on the pair's own grid.
        grid: That grid.
        resolution_A: The resolution it was degraded to and is scored at.
        model_map: The model's map at ``resolution_A`` on the same grid.
        inside: The molecular mask of CC_mask.
        degradation: How it was made.
        atoms: The model (for the map–model FSC).
    """

    name: str
    data: np.ndarray
    grid: mapio.GridInfo
    resolution_A: float
    model_map: np.ndarray
    inside: np.ndarray
    degradation: real_degradation.RealDegradation
    atoms: object = None

    def scores(self, candidate: np.ndarray, with_fsc: bool = False) -> dict[str, float]:
        """CC_box, CC_mask, CC_volume and CC_peaks of ``candidate`` (a map on this grid)
        against the model map (phenix.map_model_cc's definitions), and with ``with_fsc`` the
        map–model FSC = 0.5 resolution (phenix.mtriage's)."""
        count = int(self.inside.sum())
        top_model = metrics.highest_voxels(self.model_map, count)
        peaks = top_model | metrics.highest_voxels(candidate, count)
        scores = {"cc_box": metrics.pearson(candidate, self.model_map),
                  "cc_mask": metrics.pearson(candidate[self.inside], self.model_map[self.inside]),
                  "cc_volume": metrics.pearson(candidate[top_model], self.model_map[top_model]),
                  "cc_peaks": metrics.pearson(candidate[peaks], self.model_map[peaks])}
        if with_fsc:
            curve = metrics.model_fsc(candidate, self.grid, self.atoms)
            scores["fsc05"] = metrics.fsc_crossing(curve, 0.5)
        return scores


def validation_maps(pairs: Sequence[Pair],
                    degradations: Sequence[tuple[float, str]] = DEFAULT_DEGRADATIONS,
                    seed: int = 0) -> list[ValidationMap]:
    """Every pair degraded by each of ``degradations``, ``(resolution, kind)`` with a kind of
    :data:`VALIDATION_KINDS` (deterministic for a ``seed``).

    Pairs with an ``eval`` role are refused so that nothing is ever chosen on them.

    Raises:
        ConfigError: An ``eval`` pair was passed, or an unknown kind.
    """
    unknown = sorted({kind for _, kind in degradations} - set(VALIDATION_KINDS))
    if unknown:
        raise ConfigError(f"unknown validation kind {unknown[0]!r}: use one of "
                          f"{', '.join(VALIDATION_KINDS)}")
    maps = []
    for index, pair in enumerate(pairs):
        if "eval" in (pair.split, pair.columns.get("role")):
            raise ConfigError(f"{pair.name} is an eval pair: never validate or tune on it")
        data, grid = mapio.read_map(pair.map_path)
        atoms = read_atoms(pair.model_path)
        for number, (resolution_A, kind) in enumerate(degradations):
            map_seed = seed + 100 * index + number
            degraded, record = _degraded(data, grid.voxel_size_zyx, resolution_A, kind,
                                         map_seed)
            model_map, inside = metrics.model_map_and_mask(grid, atoms, resolution_A)
            name = f"{pair.name}@{resolution_A:g}A{NAME_SUFFIX[kind]}"
            maps.append(ValidationMap(name, degraded, grid, resolution_A, model_map, inside,
                                      record, atoms))
    return maps


def _degraded(data: np.ndarray, voxel_size_zyx: tuple[float, ...], resolution_A: float,
              kind: str, seed: int) -> tuple[np.ndarray, real_degradation.RealDegradation]:
    """A real map degraded to ``resolution_A`` in the way of validation ``kind``."""
    if kind == "deposited-like":
        return real_degradation.deposited_like_map(data, voxel_size_zyx, resolution_A, seed)
    if kind == "weak-rim":
        faded = real_degradation.faded_rim_map(data, voxel_size_zyx, WEAK_RIM_STRENGTH)
        degraded, record = real_degradation.degraded_real_map(faded, voxel_size_zyx,
                                                              resolution_A, seed, low_pass=False)
        return degraded, replace(record, rim_strength=WEAK_RIM_STRENGTH)
    return real_degradation.degraded_real_map(data, voxel_size_zyx, resolution_A, seed,
                                              low_pass=kind == "post-processed")


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each score over ``rows``."""
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def validation_maps_from_csv(pairs_csv: str, split: str = "val") -> list[ValidationMap]:
    """:func:`validation_maps` of the rows of ``pairs_csv`` whose split/role is ``split``.

    Raises:
        ConfigError: The CSV has no such row.
    """
    from cryosamu_cli.data.pairs import read_pairs

    pairs = [p for p in read_pairs(pairs_csv) if p.split == split]
    if not pairs:
        raise ConfigError(f"{pairs_csv} has no row with split '{split}' to validate on")
    return validation_maps(pairs)


def enhanced_like_enhance(predict, vmap: ValidationMap, cube_size: int = tiling.CUBE_SIZE,
                          core_size: int = tiling.CORE_SIZE, batch_size: int = 2) -> np.ndarray:
    """A validation map through ``predict`` (a :class:`cryosamu_cli.enhance.predictor.NetworkPredictor`)
    exactly as ``cryosamu enhance --resolution R --band-limit global`` does: 1 Å grid,
    normalisation, tiles, one band limit at the map's resolution, back onto the map's grid.
    One global band, not ``enhance``'s default local one: checkpoints are compared on what
    the network does, and the scores stay comparable with every run's before the local band."""
    from cryosamu_cli import grid
    from cryosamu_cli.enhance.band import BAND_EDGE

    on_1A = grid.resample_to_spacing(vmap.data, vmap.grid.voxel_size_zyx)
    normalised = grid.normalise(on_1A, grid.normalisation_of(on_1A))
    enhanced, _ = tiling.enhance_tiled(normalised, predict, cube_size=cube_size,
                                       core_size=core_size, batch_size=batch_size,
                                       skip_threshold=tiling.DEFAULT_SKIP_THRESHOLD)
    limited = grid.band_limit(enhanced, (grid.NETWORK_VOXEL_SIZE_A,) * 3, vmap.resolution_A,
                              BAND_EDGE)
    return grid.resample_to_grid(limited, grid.NETWORK_VOXEL_SIZE_A, vmap.grid.shape_zyx,
                                 vmap.grid.voxel_size_zyx)


def score_network(model, vmaps: Sequence[ValidationMap], device, precision=None) -> dict:
    """Mean scores of the network's enhanced validation maps: ``real_cc_box`` and
    ``real_cc_mask``, their mean ``real_cc`` (what a checkpoint is chosen by), and beside
    them ``real_cc_volume`` and ``real_cc_peaks``."""
    from cryosamu_cli.enhance.predictor import NetworkPredictor

    predict = NetworkPredictor(model, device, 0, precision)
    rows = [vmap.scores(enhanced_like_enhance(predict, vmap)) for vmap in vmaps]
    mean = mean_scores(rows)
    return {**{f"real_{key}": value for key, value in mean.items()},
            "real_cc": (mean["cc_box"] + mean["cc_mask"]) / 2}


@torch.inference_mode()
def validate(model: nn.Module, val_set: CubePairDataset, device: torch.device,
             batch_size: int, precision: torch.dtype | None = None,
             max_cubes: int | None = None) -> dict:
    """Validation loss and mean map correlation, without embeddings (as at inference), in
    the training's autocast ``precision``; on at most ``max_cubes`` cubes spread evenly over
    the split (the same ones every time)."""
    if len(val_set) == 0:
        return {"val_loss": None, "val_cc": None}
    model.eval()
    chosen = validation_cubes(len(val_set), max_cubes)
    losses, correlations = [], []
    for start in range(0, len(chosen), batch_size):
        items = [val_set[i] for i in chosen[start:start + batch_size]]
        inputs = torch.stack([i[0] for i in items]).to(device)
        targets = torch.stack([i[1] for i in items]).to(device)
        with torch.autocast(device.type, dtype=precision or torch.float32,
                            enabled=precision is not None):
            outputs = model(inputs).float()
        losses.append(float(nn.functional.smooth_l1_loss(outputs, targets)) * len(items))
        correlations += [float(torch.corrcoef(torch.stack([o.flatten(), t.flatten()]))[0, 1])
                         for o, t in zip(outputs, targets)]
    return {"val_loss": sum(losses) / len(chosen), "val_cc": float(np.nanmean(correlations))}


def validation_cubes(count: int, max_cubes: int | None) -> list[int]:
    """Indices of at most ``max_cubes`` of ``count`` cubes, evenly spaced (all without a cap)."""
    if max_cubes is None or max_cubes >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, max_cubes).round().astype(int).tolist()))
