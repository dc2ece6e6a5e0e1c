"""Cube plan, stitching with stand-in networks, empty-cube skipping and streaming."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from cryosamu_cli import grid
from cryosamu_cli.enhance import tiling
from cryosamu_cli.errors import ConfigError
from tests.conftest import smooth_volume


def identity(batch):
    return batch.copy()


@pytest.mark.parametrize("shape", [(17, 33, 70), (5, 7, 3), (64, 64, 64), (101, 51, 49)])
def test_identity_network_returns_the_input_exactly(shape):
    volume = np.abs(smooth_volume(shape))
    out, stats = tiling.enhance_tiled(volume, identity, batch_size=3)
    assert out.shape == volume.shape
    assert np.array_equal(out, volume)
    assert stats.cubes_total == np.prod([-(-n // 50) for n in shape])


def test_constant_network_fills_every_voxel():
    volume = np.abs(smooth_volume((23, 57, 101))) + 0.1
    out, _ = tiling.enhance_tiled(volume, lambda b: np.full_like(b, 7.0), cube_size=32,
                                  core_size=20)
    assert np.all(out == 7.0)


def test_each_voxel_comes_from_the_centre_of_its_cube():
    # A stand-in that writes each voxel's distance from the cube border: the kept core must never
    # come from the outer margin.
    def border_distance(batch):
        n = batch.shape[-1]
        idx = np.arange(n)
        d = np.minimum(idx, n - 1 - idx)
        dist = np.minimum(np.minimum(d[:, None, None], d[None, :, None]), d[None, None, :])
        return np.broadcast_to(dist, batch.shape).astype(np.float32)

    out, _ = tiling.enhance_tiled(np.ones((120, 75, 60), np.float32), border_distance)
    assert out.min() >= 7


def test_identity_with_resampling_is_within_interpolation_error():
    volume = np.abs(smooth_volume((45, 38, 52), sigma=3.0))
    voxel = (1.6, 1.2, 0.9)
    on_1A = grid.resample_to_spacing(volume, voxel)
    out, _ = tiling.enhance_tiled(on_1A, identity)
    back = grid.resample_to_grid(out, 1.0, volume.shape, voxel)
    assert np.corrcoef(back.ravel(), volume.ravel())[0, 1] > 0.999


def test_skipping_empty_cubes_gives_the_same_output_as_not_skipping():
    volume = np.zeros((150, 120, 100), np.float32)
    volume[10:40, 20:50, 30:60] = np.abs(smooth_volume((30, 30, 30)))
    skipped, s1 = tiling.enhance_tiled(volume, identity, skip_threshold=0.0)
    full, s2 = tiling.enhance_tiled(volume, identity, skip_threshold=-1.0)
    assert np.array_equal(skipped, full)
    assert s2.cubes_skipped == 0 and s2.cubes_run == s2.cubes_total == 3 * 3 * 2
    assert s1.cubes_skipped > 0 and s1.cubes_run + s1.cubes_skipped == s1.cubes_total


def test_cubes_are_streamed_in_batches_after_one_timed_cube():
    seen = []

    def record(batch):
        seen.append(batch.shape[0])
        return batch

    volume = np.abs(smooth_volume((130, 110, 60))) + 0.01
    progress, estimates = [], []
    tiling.enhance_tiled(volume, record, batch_size=4,
                         progress=lambda done, total: progress.append((done, total)),
                         on_estimate=lambda total, seconds: estimates.append((total, seconds)))
    assert seen == [1, 4, 4, 4, 4, 1]  # 18 cubes: one measured alone, then batches of 4
    assert progress[0] == (0, 18) and progress[-1] == (18, 18) and len(progress) == 7
    assert len(estimates) == 1 and estimates[0][0] == 18 and estimates[0][1] >= 0



def test_the_next_batch_runs_while_the_previous_one_is_stitched():
    # progress is reported by the stitching, which must not hold the network up
    started = [threading.Event() for _ in range(6)]  # 18 cubes: batches of 1, 4, 4, 4, 4, 1
    calls = itertools.count()

    def network(batch):
        started[next(calls)].set()
        return batch

    stitched, next_was_running = itertools.count(), []

    def progress(done, total):
        if 0 < done < total:  # batch k is stitched; batch k + 1 must be running already
            k = next(stitched)
            next_was_running.append(started[k + 1].wait(timeout=10))

    volume = np.abs(smooth_volume((130, 110, 60))) + 0.01
    out, _ = tiling.enhance_tiled(volume, network, batch_size=4, progress=progress)
    assert next_was_running == [True] * 5 and np.array_equal(out, volume)


def test_several_outputs_per_cube_are_stitched_alike():
    volume = np.abs(smooth_volume((70, 30, 55)))
    out, _ = tiling.enhance_tiled(volume, lambda b: np.stack([b, 2 * b], axis=1))
    assert out.shape == (2, 70, 30, 55)
    assert np.array_equal(out[0], volume) and np.array_equal(out[1], 2 * volume)


def test_run_mask_limits_the_cubes_run():
    volume = np.abs(smooth_volume((150, 60, 60))) + 0.01
    run_mask = np.zeros(volume.shape, bool)
    run_mask[120:125, 10:12, 5:7] = True
    out, stats = tiling.enhance_tiled(volume, identity, run_mask=run_mask)
    assert stats.cubes_run == 1 and stats.cubes_total == 3 * 2 * 2
    assert np.array_equal(out[100:150, :50, :50], volume[100:150, :50, :50])
    assert not out[:100].any()


@pytest.mark.parametrize("cube, core", [(64, 51), (64, 70), (64, 0)])
def test_bad_cube_sizes_are_refused(cube, core):
    with pytest.raises(ConfigError):
        tiling.CubePlan((10, 10, 10), cube, core)
