"""``enhance_map`` end to end: geometry of the written map, values, refusals, no partial files."""

from __future__ import annotations

import platform
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import torch

from cryosamu_cli import grid, mapio
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.enhance.predictor import (CPU_BATCH_SIZE, MAX_AUTO_BATCH, NetworkPredictor,
                                     batch_size_for_memory, load_enhancer)
from cryosamu_cli.errors import (ConfigError, DeviceError, InvalidMapError, MapReadError,
                                 OutputError, WeightsError)
from cryosamu_cli.examples import write_example_map
from tests.conftest import SHARED_MAPS, smooth_volume, write_mrc


@pytest.fixture
def pass_through(monkeypatch):
    """Replace the network (only) by an identity stand-in."""
    import cryosamu_cli.enhance.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "NetworkPredictor",
                        lambda model, device, passes, precision, tta=1: lambda batch: batch.copy())


def _header(path):
    with mrcfile.open(path, permissive=True) as mrc:
        h = mrc.header
        return (mrc.data.shape, mrc.voxel_size.tolist(), h.origin.tolist(),
                (int(h.nxstart), int(h.nystart), int(h.nzstart)), h.cella.tolist(),
                h.cellb.tolist(), (int(h.mapc), int(h.mapr), int(h.maps)),
                (int(h.mx), int(h.my), int(h.mz)))


def _expected_normalised(path):
    data, g = mapio.read_map(path)
    on_1A = grid.resample_to_spacing(data, g.voxel_size_zyx)
    norm = grid.normalisation_of(on_1A)
    return np.clip(data / norm.scale, 0, 1)


@pytest.mark.parametrize("relative", SHARED_MAPS)
def test_pass_through_enhance_keeps_the_real_maps_grid(shared_data, tmp_path, tiny_checkpoint,
                                                       pass_through, relative):
    source = shared_data / relative
    out = tmp_path / "out.mrc"
    result = enhance.enhance_map(input_path=source, output_path=out, weights=tiny_checkpoint,
                                 device="cpu", batch_size=8, resolution="none")
    assert _header(out) == _header(source)
    written, _ = mapio.read_map(out)
    expected = _expected_normalised(source)
    assert np.corrcoef(written.ravel(), expected.ravel())[0, 1] > 0.97
    assert result.cubes_run + result.cubes_skipped == result.cubes_total


def test_pass_through_on_axis_order_312_with_anisotropic_voxels(tmp_path, tiny_checkpoint,
                                                                 pass_through):
    canonical = np.abs(smooth_volume((40, 36, 30), sigma=3.0))
    source = write_mrc(tmp_path / "zxy.mrc", np.transpose(canonical, (1, 2, 0)),
                       voxel_size=(1.3, 0.9, 1.7), axis_order=(3, 1, 2), nstart=(4, -6, 9),
                       origin=(-12.5, 40.0, 3.25))
    out = tmp_path / "out.mrc"
    # the full band: this checks the grid, not the band limit a bare run would choose
    enhance.enhance_map(input_path=source, output_path=out, weights=tiny_checkpoint,
                        resolution="none")
    assert _header(out) == _header(source)
    written, _ = mapio.read_map(out)
    assert np.corrcoef(written.ravel(), _expected_normalised(source).ravel())[0, 1] > 0.995


def test_real_network_enhances_the_example_map(tmp_path, tiny_checkpoint):
    source = write_example_map(tmp_path / "example.mrc")
    out = tmp_path / "enhanced.mrc.gz"
    seen = []
    result = enhance.enhance_map(input_path=source, output_path=out, weights=tiny_checkpoint,
                                 batch_size=4, threads=2,
                                 progress=lambda done, total: seen.append((done, total)))
    written, g = mapio.read_map(out)
    assert g.shape_zyx == (64, 56, 56) and np.isfinite(written).all() and written.std() > 0
    assert result.cubes_total == 8 and seen[-1] == (result.cubes_run, result.cubes_run)
    assert result.normalisation_scale > 0
    assert "(estimated), " in g.labels[-1]  # no --resolution given
    assert result.resolution.source == "estimated from the map"
    normalised = enhance.enhance_map(input_path=source, output_path=tmp_path / "n.mrc",
                                     weights=tiny_checkpoint, density_scale="normalised")
    label = mapio.read_map(normalised.output_path)[1].labels[-1]
    assert f"1 = {result.normalisation_scale:.4g} input units" in label


def _run(tmp_path, source, checkpoint, **overrides):
    options = dict(input_path=source, output_path=tmp_path / "out.mrc", weights=checkpoint,
                   device="cpu")
    options.update(overrides)
    return enhance.enhance_map(**options)


@pytest.mark.parametrize("volume, error, message", [
    (np.zeros((20, 20, 20), np.float32), InvalidMapError, "constant"),
    (-np.ones((20, 20, 20), np.float32) - np.eye(20, dtype=np.float32), InvalidMapError,
     "no positive"),
])
def test_unusable_maps_write_nothing(tmp_path, tiny_checkpoint, volume, error, message):
    source = write_mrc(tmp_path / "in.mrc", volume)
    with pytest.raises(error, match=message):
        _run(tmp_path, source, tiny_checkpoint)
    assert not (tmp_path / "out.mrc").exists()


@pytest.mark.parametrize("overrides, error, message", [
    ({"device": "tpu"}, DeviceError, "unknown device"),
    ({"device": "cuda:7"}, DeviceError, "cuda:7"),
    ({"core_size": 80}, ConfigError, "core size"),
    ({"cube_size": 60, "core_size": 50}, ConfigError, "divisible"),
    ({"threads": 0}, ConfigError, "threads"),
    ({"batch_size": 0}, ConfigError, "batch size"),
    ({"precision": "fp8"}, ConfigError, "unknown precision"),
])
def test_bad_options_write_nothing(tmp_path, tiny_checkpoint, overrides, error, message):
    source = write_mrc(tmp_path / "in.mrc", np.abs(smooth_volume((20, 20, 20))))
    with pytest.raises(error, match=message):
        _run(tmp_path, source, tiny_checkpoint, **overrides)
    assert not (tmp_path / "out.mrc").exists()


def test_corrupt_weights_and_missing_inputs(tmp_path, tiny_checkpoint):
    source = write_mrc(tmp_path / "in.mrc", np.abs(smooth_volume((20, 20, 20))))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError):
        _run(tmp_path, source, bad)
    with pytest.raises(MapReadError):
        _run(tmp_path, tmp_path / "absent.mrc", tiny_checkpoint)
    (tmp_path / "out.mrc").write_bytes(b"keep me")
    with pytest.raises(OutputError, match="exists"):
        _run(tmp_path, source, tiny_checkpoint)
    assert (tmp_path / "out.mrc").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "in.mrc", "out.mrc"]


def test_loaded_network_gives_the_plain_networks_output(tiny_checkpoint):
    import torch

    from cryosamu_cli.weights import load_model

    enhancer = load_enhancer(weights=tiny_checkpoint, device="cpu", precision="fp32")
    batch = np.stack([np.abs(smooth_volume((32, 32, 32), seed=s)) for s in (4, 5)])
    plain = load_model(tiny_checkpoint)
    with torch.inference_mode():
        expected = plain(torch.from_numpy(batch).unsqueeze(1)).squeeze(1).numpy()
    # channels-last changes only the order of fp32 sums
    assert np.abs(enhancer._predict(batch) - expected).max() < 1e-3 * np.abs(expected).max()


class _MemoryLimited(torch.nn.Module):
    """A real network on a device that holds at most ``limit`` cubes: larger batches raise
    the error a GPU raises when its memory is full."""

    def __init__(self, network: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.network, self.limit, self.batches = network, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(x)


def test_out_of_memory_halves_the_batch_and_keeps_the_result(tiny_checkpoint):
    from cryosamu_cli.weights import load_model

    network = load_model(tiny_checkpoint)
    batch = np.stack([np.abs(smooth_volume((32, 32, 32), seed=s)) for s in range(5)])
    expected = NetworkPredictor(network, torch.device("cpu"))(batch)
    limited = _MemoryLimited(network, limit=2)
    predictor = NetworkPredictor(limited, torch.device("cpu"))
    # batches of another size change only the order of fp32 sums
    assert np.abs(predictor(batch) - expected).max() < 1e-4 * np.abs(expected).max()
    assert limited.batches == [5, 2, 2, 1] and predictor.max_batch == 2
    limited.batches.clear()
    predictor(batch[:4])  # the smaller size is kept: no second failure
    assert limited.batches == [2, 2]
    with pytest.raises(DeviceError, match="single cube"):
        NetworkPredictor(_MemoryLimited(network, limit=0), torch.device("cpu"))(batch)


def test_the_enhancer_keeps_the_batch_size_an_out_of_memory_back_off_chose(tiny_checkpoint):
    from cryosamu_cli.enhance.predictor import Enhancer
    from cryosamu_cli.weights import load_model

    network = load_model(tiny_checkpoint)
    limited = _MemoryLimited(network, limit=2)
    limited.config = network.config
    enhancer = Enhancer(limited, torch.device("cpu"), tiny_checkpoint, batch_size=5)
    volume = np.abs(smooth_volume((40, 110, 160), seed=2)).astype(np.float32)  # 12 cubes
    enhancer.run(volume / volume.max())
    assert enhancer.batch_size == 2  # what the timing report and the next map use
    limited.batches.clear()
    enhancer.run(volume / volume.max())
    assert max(limited.batches) <= 2


def test_auto_batch_size_fits_free_memory_and_is_two_on_a_cpu(tiny_checkpoint):
    gib = 1 << 30
    assert batch_size_for_memory(10 * gib, gib) == 8  # 80 % of 10 GiB
    assert batch_size_for_memory(gib, 3 * gib) == 1  # never below one
    assert batch_size_for_memory(80 * gib, 1 << 20) == MAX_AUTO_BATCH
    enhancer = load_enhancer(weights=tiny_checkpoint, device="cpu", batch_size=None)
    assert enhancer.batch_size == CPU_BATCH_SIZE
    assert load_enhancer(weights=tiny_checkpoint, device="cpu", batch_size=5).batch_size == 5


def test_skipped_empty_cubes_get_what_the_network_gives_an_empty_cube(tiny_checkpoint):
    from cryosamu_cli.enhance import tiling
    from cryosamu_cli.weights import load_model

    predictor = NetworkPredictor(load_model(tiny_checkpoint), torch.device("cpu"))
    volume = np.zeros((70, 40, 40), np.float32)
    volume[5:30, 5:30, 5:30] = np.abs(smooth_volume((25, 25, 25), seed=3))
    # batches of one: GroupNorm of a constant input amplifies rounding by 1/sqrt(eps), so an
    # empty cube's output depends on the batch it runs in, not only on the cube
    kwargs = dict(cube_size=32, core_size=24, batch_size=1)
    skipping, stats = tiling.enhance_tiled(volume, predictor, skip_threshold=0.0, **kwargs)
    running_all, _ = tiling.enhance_tiled(volume, predictor, skip_threshold=-1.0, **kwargs)
    assert stats.cubes_skipped > 0 and stats.cubes_run > 0
    assert np.abs(running_all[40:]).min() > 0  # the untrained network answers zeros with bias
    assert np.array_equal(skipping, running_all)


_PAGE_FAULTS_OF_A_FORWARD_PASS = """
import resource, sys, torch
from cryosamu_cli.device import keep_freed_memory_for_reuse
from cryosamu_cli.weights import load_model, resolve_weights
if sys.argv[1] == "reuse":
    assert keep_freed_memory_for_reuse()
model = load_model(resolve_weights()).eval()
cube = torch.rand(1, 1, 64, 64, 64)
with torch.inference_mode():
    for _ in range(5):  # the last of five passes of the shipped network (the heap settles)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(cube)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="the malloc setting exists only in glibc (Linux)")
def test_freed_activations_are_reused_without_new_page_faults():
    def page_faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PAGE_FAULTS_OF_A_FORWARD_PASS, mode],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default = page_faults("default")
    assert default > 50_000  # fresh zero-filled pages for every large activation, every pass
    assert page_faults("reuse") < default // 10  # the freed activations are used again
