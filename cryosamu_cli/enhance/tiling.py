"""Cube plan, empty-cube skipping, batched streaming and stitching (§3.4).

A volume ``[z, y, x]`` is zero-padded and cut into overlapping ``cube_size``³ cubes whose
central ``core_size``³ cores tile the volume without gaps; only the cores of the network's
outputs are stitched back. Cubes whose input has no density above ``skip_threshold`` are not
run: their core gets the network's output for one all-zero cube, computed once. That is what
running an exactly empty cube gives (the network answers solvent with a small fixed pattern,
not zeros), and close to what a nearly empty one gives. The first cube runs alone and is timed,
for an estimate of the whole run; the others go to the network ``batch_size`` at a time, while a
helper thread cuts the next batch and stitches the previous one, so memory holds the volume,
the output and three batches, whatever the number of cubes. Nothing here
knows about torch: the network is any callable from a ``(B, n, n, n)`` array to one of the
same shape.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cryosamu_cli.errors import ConfigError

# Cubes whose normalised input never exceeds 5 % of the 99.9th percentile are solvent (or
# masked out): not run; their core gets the network's output for an empty cube. Measured with
# benchmarks/skip_and_core.py: it skips 25-49 % of the cubes of masked real maps and leaves the
# output unchanged (correlation 1.00000 with the no-skip output on emd_6824, whole box and
# molecule); 0.2 changes it (0.9916 on emd_5168). See docs/performance.md.
DEFAULT_SKIP_THRESHOLD = 0.05
# The cubes enhance gives the network and the centre of each that it keeps (§3.4).
CUBE_SIZE = 64
CORE_SIZE = 50
Predictor = Callable[[np.ndarray], np.ndarray]
CubeIndex = tuple[int, int, int] | None
EMPTY_CUBE = None  # in a batch: an all-zero cube, whose output fills every skipped cube
ProgressCallback = Callable[[int, int], None]
EstimateCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class CubePlan:
    """Where the cubes of a volume lie.

    Attributes:
        shape_zyx: Shape of the volume being tiled.
        cube_size: Edge of the cubes the network sees.
        core_size: Edge of the central part of each output cube that is kept.
    """

    shape_zyx: tuple[int, int, int]
    cube_size: int = CUBE_SIZE
    core_size: int = CORE_SIZE

    def __post_init__(self) -> None:
        check_cube_sizes(self.cube_size, self.core_size)

    @property
    def margin(self) -> int:
        """Voxels discarded on each side of a cube's core."""
        return (self.cube_size - self.core_size) // 2

    @property
    def counts(self) -> tuple[int, int, int]:
        """Number of cubes along z, y, x."""
        return tuple(math.ceil(n / self.core_size) for n in self.shape_zyx)

    @property
    def n_cubes(self) -> int:
        """Total number of cubes."""
        return math.prod(self.counts)

    def cube_indices(self) -> Iterator[tuple[int, int, int]]:
        """Every cube's (iz, iy, ix) index, in C order."""
        return itertools.product(*(range(c) for c in self.counts))

    def pad(self, volume: np.ndarray) -> np.ndarray:
        """Zero-pad ``volume`` so that cube ``i`` starts at ``i * core_size`` on every axis."""
        widths = [(self.margin, c * self.core_size + self.margin - n)
                  for c, n in zip(self.counts, self.shape_zyx)]
        return np.pad(volume, widths, mode="constant")

    def cube_slices(self, index: tuple[int, int, int]) -> tuple[slice, ...]:
        """Slices of cube ``index`` in the padded volume."""
        return tuple(slice(i * self.core_size, i * self.core_size + self.cube_size) for i in index)

    def core_slices(self, index: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """``(in_volume, in_cube)`` slices of the core of cube ``index``, cropped to the volume."""
        in_volume, in_cube = [], []
        for i, n in zip(index, self.shape_zyx):
            start = i * self.core_size
            stop = min(start + self.core_size, n)
            in_volume.append(slice(start, stop))
            in_cube.append(slice(self.margin, self.margin + stop - start))
        return tuple(in_volume), tuple(in_cube)


@dataclass(frozen=True)
class TilingStats:
    """What a tiled run did: cubes in the plan, run through the network and skipped, and the
    seconds spent inside the network."""

    cubes_total: int
    cubes_run: int
    cubes_skipped: int
    network_seconds: float = 0.0


def check_cube_sizes(cube_size: int, core_size: int) -> None:
    """Refuse cube/core sizes that cannot tile.

    Raises:
        ConfigError: The core is larger than the cube, not positive, or the margin is uneven.
    """
    if cube_size < 1 or not 1 <= core_size <= cube_size:
        raise ConfigError(f"core size {core_size} must be between 1 and the cube size {cube_size}")
    if (cube_size - core_size) % 2:
        raise ConfigError(f"cube size {cube_size} minus core size {core_size} must be even")


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch of fewer than one cube.

    Raises:
        ConfigError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")


def enhance_tiled(volume: np.ndarray, predict: Predictor, *, cube_size: int = CUBE_SIZE,
                  core_size: int = CORE_SIZE, batch_size: int = 4, skip_threshold: float = 0.0,
                  run_mask: np.ndarray | None = None, progress: ProgressCallback | None = None,
                  on_estimate: EstimateCallback | None = None) -> tuple[np.ndarray, TilingStats]:
    """Run ``predict`` over ``volume[z, y, x]`` cube by cube and stitch the cores.

    Args:
        volume: Normalised input volume.
        predict: Network stand-in: ``(B, n, n, n)`` float32 in; ``(B, n, n, n)`` out, or
            ``(B, K, n, n, n)`` for K outputs per cube (e.g. mean and standard deviation).
        cube_size: Edge ``n`` of the cubes given to ``predict``.
        core_size: Edge of the kept central part of each output cube.
        batch_size: Cubes per call of ``predict``.
        skip_threshold: Cubes whose input maximum is at or below this are not run; their core
            gets the output of one all-zero cube.
        run_mask: Optional boolean volume: cubes whose core holds no true voxel are not run.
        progress: Called as ``progress(cubes_done, cubes_to_run)``, first with 0 done.
        on_estimate: Called once as ``on_estimate(cubes_to_run, seconds_per_cube)`` after the
            first cube, which runs alone as the measurement.

    Returns:
        The stitched volume (``volume.shape``, or ``(K, *volume.shape)``) and the run's
        :class:`TilingStats`.
    """
    check_batch_size(batch_size)
    plan = CubePlan(tuple(volume.shape), cube_size, core_size)
    padded = plan.pad(volume.astype(np.float32, copy=False))
    to_run = _cubes_to_run(plan, padded, skip_threshold, run_mask)
    skipped = sorted(set(plan.cube_indices()) - set(to_run))
    stitcher = _Stitcher(plan, len(to_run), skipped, progress, on_estimate)
    # the empty cube rides in the last batch, which is often not full
    _stream(padded, plan, to_run + ([EMPTY_CUBE] if skipped else []), batch_size, predict,
            stitcher)
    return stitcher.result(), TilingStats(plan.n_cubes, len(to_run), len(skipped),
                                          stitcher.network_s)


def _stream(padded: np.ndarray, plan: CubePlan, to_run: list[CubeIndex],
            batch_size: int, predict: Predictor, stitcher: _Stitcher) -> None:
    """Run the batches through ``predict`` on this thread while a helper thread cuts the next
    batch and stitches the previous one, so the device is not kept waiting by host-side
    copying. (The network stays on the calling thread: torch on a second thread measured
    about 25 % slower on CPU.)"""
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryosamu-stitch")
    try:
        batches = list(_batches(to_run, batch_size))
        next_batch = helper.submit(_cut, padded, plan, batches[0]) if batches else None
        stitched = None
        for k, indices in enumerate(batches):
            batch = next_batch.result()
            if k + 1 < len(batches):
                next_batch = helper.submit(_cut, padded, plan, batches[k + 1])
            cubes, seconds = _timed(predict, batch)
            if stitched is not None:
                stitched.result()  # raises what stitching raised
            stitched = helper.submit(stitcher.add, cubes, seconds, indices)
        if stitched is not None:
            stitched.result()
    finally:
        helper.shutdown(wait=True, cancel_futures=True)


def _cut(padded: np.ndarray, plan: CubePlan, indices: list[CubeIndex]) -> np.ndarray:
    """The input cubes at ``indices`` (zeros for :data:`EMPTY_CUBE`), stacked into one batch."""
    return np.stack([np.zeros((plan.cube_size,) * 3, dtype=np.float32) if idx is EMPTY_CUBE
                     else padded[plan.cube_slices(idx)] for idx in indices])


def _timed(predict: Predictor, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """``predict(batch)`` and the seconds it took."""
    started = time.perf_counter()
    cubes = predict(batch)
    return cubes, time.perf_counter() - started


class _Stitcher:
    """The output volume, filled with the cores of predicted batches in submission order; the
    output of :data:`EMPTY_CUBE` goes to every skipped cube."""

    def __init__(self, plan: CubePlan, cubes_to_run: int, skipped: list[tuple[int, int, int]],
                 progress: ProgressCallback | None, on_estimate: EstimateCallback | None) -> None:
        self.plan, self.cubes_to_run, self.skipped = plan, cubes_to_run, skipped
        self.progress, self.on_estimate = progress, on_estimate
        self.output: np.ndarray | None = None
        self.done, self.network_s = 0, 0.0
        if progress is not None:
            progress(0, cubes_to_run)

    def add(self, cubes: np.ndarray, seconds: float, indices: list[CubeIndex]) -> None:
        """Stitch the cores of one predicted batch and report progress. :data:`EMPTY_CUBE`
        can only be the last cube of the last batch."""
        self.network_s += seconds
        output = self._output_for(cubes)
        if indices[-1] is EMPTY_CUBE:
            empty = cubes[-1]
            _stitch(output, np.broadcast_to(empty, (len(self.skipped),) + empty.shape),
                    self.skipped, self.plan)
            cubes, indices = cubes[:-1], indices[:-1]
        if not indices:
            return
        if self.done == 0 and self.on_estimate is not None:
            self.on_estimate(self.cubes_to_run, seconds / len(cubes))
        _stitch(output, cubes, indices, self.plan)
        self.done += len(indices)
        if self.progress is not None:
            self.progress(self.done, self.cubes_to_run)

    def result(self) -> np.ndarray:
        """The stitched volume (zeros where nothing was placed)."""
        if self.output is None:
            return np.zeros(self.plan.shape_zyx, dtype=np.float32)
        return self.output

    def _output_for(self, cubes: np.ndarray) -> np.ndarray:
        if self.output is None:
            self.output = np.zeros(cubes.shape[1:-3] + self.plan.shape_zyx, dtype=np.float32)
        return self.output


def _cubes_to_run(plan: CubePlan, padded: np.ndarray, skip_threshold: float,
                  run_mask: np.ndarray | None) -> list[tuple[int, int, int]]:
    """Indices of the cubes that hold density (and, with ``run_mask``, a voxel to enhance)."""
    chosen = []
    for idx in plan.cube_indices():
        if float(padded[plan.cube_slices(idx)].max()) <= skip_threshold:
            continue
        if run_mask is not None and not run_mask[plan.core_slices(idx)[0]].any():
            continue
        chosen.append(idx)
    return chosen


def _batches(items: list, size: int) -> Iterator[list]:
    """The first item alone (the timing measurement), then chunks of at most ``size`` items."""
    if items:
        yield items[:1]
    for start in range(1, len(items), size):
        yield items[start:start + size]


def _stitch(output: np.ndarray, cubes: np.ndarray, indices: list[tuple[int, int, int]],
            plan: CubePlan) -> None:
    """Copy the core of each predicted cube into ``output``."""
    expected = (len(indices),) + output.shape[:-3] + (plan.cube_size,) * 3
    if cubes.shape != expected:
        raise ValueError(f"network returned shape {cubes.shape}, expected {expected}")
    for cube, idx in zip(cubes, indices):
        in_volume, in_cube = plan.core_slices(idx)
        output[(..., *in_volume)] = cube[(..., *in_cube)]
