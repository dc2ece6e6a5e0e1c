"""Resampling to 1 Å and back, and normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from cryosamu_cli import grid
from cryosamu_cli.errors import InvalidMapError
from tests.conftest import smooth_volume


@pytest.mark.parametrize("voxel_zyx", [(1.742, 1.742, 1.742), (0.737, 0.723, 0.747),
                                       (2.4, 1.3, 0.8), (1.0, 1.0, 1.0)])
def test_round_trip_is_within_interpolation_error(voxel_zyx):
    volume = smooth_volume((31, 26, 37), sigma=3.0)
    on_1A = grid.resample_to_spacing(volume, voxel_zyx)
    back = grid.resample_to_grid(on_1A, 1.0, volume.shape, voxel_zyx)
    assert back.shape == volume.shape
    assert np.abs(back - volume).max() < 0.03 * np.abs(volume).max()
    assert np.corrcoef(back.ravel(), volume.ravel())[0, 1] > 0.999


def test_resampled_grid_covers_the_map_at_one_angstrom():
    volume = smooth_volume((10, 20, 30))
    on_1A = grid.resample_to_spacing(volume, (2.0, 1.5, 0.5))
    # (n - 1) * v + 1 voxels: 19, 29.5 -> 30, 15.5 -> 16
    assert on_1A.shape == (19, 30, 16)


def test_resampling_puts_values_at_their_physical_positions():
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (24, 28, 30)), indexing="ij")
    voxel = (2.0, 1.5, 1.25)
    linear = (0.3 * z * voxel[0] + 0.2 * y * voxel[1] - 0.1 * x * voxel[2]).astype(np.float32)
    on_1A = grid.resample_to_spacing(linear, voxel)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in on_1A.shape), indexing="ij")
    expected = 0.3 * zz + 0.2 * yy - 0.1 * xx
    inner = (slice(12, -12),) * 3  # away from the spline's boundary handling
    assert np.allclose(on_1A[inner], expected[inner], atol=1e-3)


def test_normalisation_uses_the_positive_999th_percentile():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(40, 40, 40)).astype(np.float32)
    norm = grid.normalisation_of(volume)
    assert norm.scale == pytest.approx(np.percentile(volume[volume > 0], 99.9))
    out = grid.normalise(volume, norm)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(out[volume <= 0], 0.0)
    kept = (volume > 0) & (volume < norm.scale)
    assert np.allclose(out[kept], volume[kept] / norm.scale)


@pytest.mark.parametrize("volume, message", [
    (np.full((8, 8, 8), 3.0, np.float32), "constant"),
    (-np.abs(smooth_volume((8, 8, 8))) - 0.1, "no positive density"),
])
def test_unusable_maps_are_refused(volume, message):
    with pytest.raises(InvalidMapError, match=message):
        grid.normalisation_of(volume)


@pytest.mark.parametrize("step", [(1 / 1.1,) * 3, (1.3, 0.8, 1.0), (0.5, 1.0, 1.0)])
def test_block_wise_resampling_equals_one_pass_over_the_whole_map(step):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((60, 40, 30)).astype(np.float32)
    step = np.asarray(step)
    shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(data.shape, step))
    whole = grid._affine_resample(data, step, shape, block_voxels=1 << 40)
    one_row_per_block = grid._affine_resample(data, step, shape, block_voxels=1)
    assert one_row_per_block.shape == shape and one_row_per_block.dtype == np.float32
    np.testing.assert_allclose(one_row_per_block, whole, rtol=0, atol=1e-6)


def test_block_wise_resampling_keeps_peak_memory_to_the_output_and_one_slab():
    import tracemalloc

    data = np.random.default_rng(1).standard_normal((400, 48, 48)).astype(np.float32)
    step = np.full(3, 1 / 1.1)
    shape = grid.resampled_shape(data.shape, (1.1,) * 3)
    output_bytes = int(np.prod(shape)) * 4
    transient = {}
    tracemalloc.start()
    try:
        for name, block_voxels in (("whole", 1 << 40), ("blocks", 1 << 14)):
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            grid._affine_resample(data, step, shape, block_voxels=block_voxels)
            transient[name] = tracemalloc.get_traced_memory()[1] - start - output_bytes
    finally:
        tracemalloc.stop()
    # one pass holds the spline prefilter's float64 copies of the whole map (> 2 × 8 bytes per
    # input voxel); by blocks, of a few rows plus the margins
    assert transient["whole"] > 2 * data.size * 8
    assert transient["blocks"] < 0.25 * transient["whole"]
