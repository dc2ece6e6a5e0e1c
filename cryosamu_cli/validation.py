"""Real validation maps: training pairs degraded to 4–8 Å, scored as the benchmark scores.

Choosing a recipe, a band-limit edge or a checkpoint by the loss on simulated cubes does not
track what users measure (the model-quality issue: 0.41 → 0.58 on simulated cubes while every
real map got worse). Here the real ``train`` pairs of a pairs CSV, held out by map, are brought
to a lower resolution by :func:`cryosamu_cli.degrade.degraded_real_map` and any candidate map
is scored by CC_box and CC_mask (phenix.map_model_cc's definitions, :mod:`cryosamu_cli.metrics`)
against the model map at that resolution. The ``eval`` pairs are never used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cryosamu_cli import degrade, mapio, metrics
from cryosamu_cli.pairs import Pair
from cryosamu_cli.structure import read_atoms

# (resolution in Å, low-passed at it as deposited post-processed maps are, or left with the
# noise beyond it as raw reconstructions are)
DEFAULT_DEGRADATIONS: tuple[tuple[float, bool], ...] = ((5.0, True), (6.5, False))


@dataclass(frozen=True)
class ValidationMap:
    """One degraded real map with what it is scored against.

    Attributes:
        name: ``<pair>@<resolution>A`` (``raw`` appended when not low-passed).
        data: The degraded map ``[z, y, x]`` on the pair's own grid.
        grid: That grid.
        resolution_A: The resolution it was degraded to and is scored at.
        model_map: The model's map at ``resolution_A`` on the same grid.
        inside: The molecular mask of CC_mask.
        degradation: How it was made.
    """

    name: str
    data: np.ndarray
    grid: mapio.GridInfo
    resolution_A: float
    model_map: np.ndarray
    inside: np.ndarray
    degradation: degrade.RealDegradation

    def scores(self, candidate: np.ndarray) -> dict[str, float]:
        """CC_box and CC_mask of ``candidate`` (a map on this grid) against the model."""
        return {"cc_box": metrics.pearson(candidate, self.model_map),
                "cc_mask": metrics.pearson(candidate[self.inside], self.model_map[self.inside])}


def validation_maps(pairs: Sequence[Pair],
                    degradations: Sequence[tuple[float, bool]] = DEFAULT_DEGRADATIONS,
                    seed: int = 0) -> list[ValidationMap]:
    """Every pair degraded by each of ``degradations`` (deterministic for a ``seed``).

    Pairs with an ``eval`` role are refused so that nothing is ever chosen on them.

    Raises:
        ValueError: An ``eval`` pair was passed.
    """
    maps = []
    for index, pair in enumerate(pairs):
        if "eval" in (pair.split, pair.columns.get("role")):
            raise ValueError(f"{pair.name} is an eval pair: never validate on it")
        data, grid = mapio.read_map(pair.map_path)
        atoms = read_atoms(pair.model_path)
        for number, (resolution_A, low_pass) in enumerate(degradations):
            degraded, record = degrade.degraded_real_map(
                data, grid.voxel_size_zyx, resolution_A, seed=seed + 100 * index + number,
                low_pass=low_pass)
            model_map, inside = metrics.model_map_and_mask(grid, atoms, resolution_A)
            name = f"{pair.name}@{resolution_A:g}A" + ("" if low_pass else "-raw")
            maps.append(ValidationMap(name, degraded, grid, resolution_A, model_map, inside,
                                      record))
    return maps


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each score over ``rows``."""
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
