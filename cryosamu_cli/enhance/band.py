"""The band limit of the network's 1 Å output: one band at the map's resolution, or each
region at its own (``enhance --band-limit``; the local values come from
:mod:`cryosamu_cli.enhance.local_resolution`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from cryosamu_cli import grid as grid_ops
from cryosamu_cli import mapio
from cryosamu_cli.enhance import local_resolution as local_resolution_ops
from cryosamu_cli.enhance import resolution as resolution_ops

# The band limit's edge, as (pass, stop) multiples of 1/R (grid.low_pass_weights): a raised
# cosine from 0.9/R to 1.1/R (weight 0.5 at R), chosen for the shipped model on degraded real
# validation maps with benchmarks/band_limit.py (docs/MODEL_CARD.md): best mean CC_box/CC_mask
# of the edges tried, and a soft edge rings less than a hard truncation.
BAND_EDGE = (0.9, 1.1)
# How the band limit follows the resolution: each region at its own (the default: it beat one
# global band on the 33 validation maps of benchmarks/local_resolution_shrink.py, mean CC_box
# +0.008, CC_mask +0.0024), or one band for the whole map.
BAND_LIMITS = ("local", "global")


def limited(volume_1A: np.ndarray, limit: resolution_ops.ResolutionChoice,
            edge: tuple[float, float], local_A: np.ndarray | None = None,
            grid: mapio.GridInfo | None = None) -> np.ndarray:
    """The network's 1 Å output low-passed at the chosen resolution (unchanged without one),
    or, where ``limit.band`` is ``local``, at each region's own resolution (``local_A``, on
    the input's ``grid``): done before resampling back, so nothing beyond it can alias onto
    the input's grid."""
    if limit.resolution_A is None:
        return volume_1A
    if limit.band == "local":
        local_1A = grid_ops.resample_to_spacing(local_A, grid.voxel_size_zyx)
        return local_resolution_ops.locally_limited(volume_1A, local_1A, limit.resolution_A,
                                                    edge)
    return grid_ops.band_limit(volume_1A, (grid_ops.NETWORK_VOXEL_SIZE_A,) * 3,
                               limit.resolution_A, edge)


def with_band(limit: resolution_ops.ResolutionChoice, band_limit: str,
              local_A: np.ndarray | None) -> resolution_ops.ResolutionChoice:
    """The choice with how its band limit is applied: ``local`` only where there are local
    values that differ (a map without solvent noise has none: one global band)."""
    local = (band_limit == "local" and local_A is not None
             and not local_resolution_ops.is_uniform(local_A))
    return dataclasses.replace(limit, band="local" if local else "global")


def local_resolution_of(data: np.ndarray, grid: mapio.GridInfo,
                        limit: resolution_ops.ResolutionChoice,
                        halves: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
    """The local resolution on the input's grid: the half maps' local FSC when there are
    half maps, else from the map itself (None without a global resolution to start from, or
    when the map's own resolution could not be estimated)."""
    if limit.resolution_A is None or limit.source == resolution_ops.NOT_ESTIMABLE:
        return None
    if halves is not None:
        return local_resolution_ops.local_resolution(halves[0], grid.voxel_size_zyx,
                                                     limit.resolution_A, halves[1])
    return local_resolution_ops.local_resolution(data, grid.voxel_size_zyx, limit.resolution_A)
