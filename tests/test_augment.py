"""The batch augmentation that runs on the GPU, run here on CPU tensors against its
definition: flips and transpositions exact, the blur's transfer function, the noise level, the
anisotropy's resampling, and the same distributions as TorchIO's per-cube path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from cryosamu_cli.training import augment


def test_flips_and_transpositions_are_exactly_numpys():
    cube = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 1, 4, 5, 6)
    for axes in [(), (0,), (1, 2), (0, 1, 2)]:
        for order in [(0, 1, 2), (2, 0, 1), (1, 0, 2)]:
            expected = np.transpose(np.flip(cube.numpy(), [2 + a for a in axes]),
                                    (0, 1, *(2 + a for a in order)))
            out = augment.flipped_and_transposed(cube, axes, order)
            assert np.array_equal(out.numpy(), expected)


def test_blur_is_scipys_gaussian_filter_per_cube():
    """TorchIO's blur is ``scipy.ndimage.gaussian_filter`` (mirrored edges, 4σ kernels)."""
    rng = np.random.default_rng(0)
    volumes = rng.standard_normal((3, 1, 20, 18, 16))
    sigmas = torch.tensor([[1.0, 0.5, 1.5], [0.0, 0.3, 0.9], [1.5, 1.5, 0.0]],
                          dtype=torch.float64)
    ours = augment.gaussian_blur(torch.from_numpy(volumes), sigmas).numpy()
    for out, volume, sigma in zip(ours, volumes, sigmas.tolist()):
        expected = ndimage.gaussian_filter(volume[0], sigma)
        assert np.abs(out[0] - expected).max() < 1e-10


def test_blur_transfer_function_on_a_cosine():
    """Away from the edges a cosine of frequency f comes out scaled by the kernel's transfer
    function ``Σ_j k_j cos(2π f j)``."""
    frequency, sigma = 0.125, 1.2
    x = torch.arange(64, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * frequency * x).expand(1, 1, 4, 4, 64).contiguous()
    out = augment.gaussian_blur(wave, torch.tensor([[0.0, 0.0, sigma]], dtype=torch.float64))
    radius = int(4 * sigma + 0.5)
    j = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (j / sigma) ** 2)
    transfer = float((kernel * np.cos(2 * math.pi * frequency * j)).sum() / kernel.sum())
    interior = slice(radius, 64 - radius)
    assert torch.allclose(out[..., interior], transfer * wave[..., interior], atol=1e-12)
    assert 0.2 < transfer < 0.9


def test_zero_sigma_leaves_a_cube_and_each_cube_gets_its_own_sigma():
    torch.manual_seed(0)
    cubes = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    out = augment.gaussian_blur(cubes, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert torch.allclose(out[0], cubes[0], atol=1e-12)
    assert out[1].std() < 0.5 * cubes[1].std()


def test_noise_has_the_asked_level_per_cube():
    torch.manual_seed(0)
    cubes = torch.zeros(3, 1, 32, 32, 32)
    stds = torch.tensor([0.0, 0.01, 0.05])
    noise = augment.add_noise(cubes, stds) - cubes
    measured = noise.flatten(1).std(dim=1)
    assert measured[0] == 0
    assert torch.allclose(measured[1:], stds[1:], rtol=0.02)
    assert abs(float(noise[2].mean())) < 0.002


def test_anisotropy_resamples_one_axis_only():
    ramp = torch.linspace(0, 1, 32).reshape(1, 1, 1, 1, 32).expand(1, 1, 8, 8, 32).contiguous()
    along_other = augment.anisotropic(ramp, axis=0, factor=2.0)
    assert torch.allclose(along_other, ramp, atol=1e-6)  # constant along z: untouched
    coarse = augment.anisotropic(ramp, axis=2, factor=2.0)
    assert coarse.shape == ramp.shape
    assert not torch.allclose(coarse, ramp, atol=1e-3)  # detail along x was lost…
    assert float((coarse - ramp).abs().max()) < 0.05  # …but a ramp stays a ramp
    assert torch.equal(coarse[..., 0, 0, :], coarse[..., 5, 3, :])


@pytest.mark.parametrize("factor", [1.5, 2.2, 2.7, 3.0])
def test_anisotropy_is_torchios_inside_the_cube(factor):
    """TorchIO's RandomAnisotropy at a fixed axis and factor, voxel for voxel, except the
    outermost slices, which TorchIO sets to zero and we keep from the nearest coarse sample."""
    tio = pytest.importorskip("torchio")
    rng = np.random.default_rng(0)
    cube = torch.from_numpy(ndimage.gaussian_filter(rng.standard_normal((32, 6, 5)), 1.0)).float()
    theirs = tio.RandomAnisotropy(axes=(0,), downsampling=(factor, factor), p=1)(
        tio.ScalarImage(tensor=cube[None])).data[0]
    ours = augment.anisotropic(cube[None, None], axis=0, factor=factor)[0, 0]
    assert torch.allclose(ours[1:-1], theirs[1:-1], atol=1e-5)


def test_batch_augmenter_keeps_shape_is_seeded_and_changes_some_cubes():
    cubes = torch.from_numpy(ndimage.gaussian_filter(
        np.random.default_rng(0).standard_normal((8, 1, 24, 24, 24)), (0, 0, 2, 2, 2))
    ).float()
    torch.manual_seed(3)
    first = augment.BatchAugmenter()(cubes)
    torch.manual_seed(3)
    again = augment.BatchAugmenter()(cubes)
    assert first.shape == cubes.shape and first.dtype == cubes.dtype
    assert torch.equal(first, again)
    changed = [not torch.allclose(a, c) for a, c in zip(first, cubes)]
    assert 0 < sum(changed) < 8  # some cubes are augmented and some left as they were


@pytest.mark.parametrize("device_type, kind", [("cpu", augment.TorchioAugmenter),
                                               ("cuda", augment.BatchAugmenter)])
def test_the_cpu_path_is_torchio_and_the_cuda_path_the_batch_augmenter(device_type, kind):
    pytest.importorskip("torchio")
    assert isinstance(augment.input_augmenter(True, torch.device(device_type)), kind)
    assert augment.input_augmenter(False, torch.device(device_type)) is None


def test_torchio_and_batch_paths_change_a_cube_by_similar_amounts():
    """Same distributions and probabilities: over many draws the mean change of a smooth cube
    agrees (TorchIO's zeroed edge slices after anisotropy add a little on its side)."""
    pytest.importorskip("torchio")
    volume = ndimage.gaussian_filter(np.random.default_rng(1).standard_normal((24,) * 3), 1.0)
    cubes = torch.from_numpy(volume / volume.std()).float()[None, None].repeat(200, 1, 1, 1, 1)
    torch.manual_seed(0)
    changes = {}
    for name, augmenter in [("torchio", augment.TorchioAugmenter()),
                            ("batch", augment.BatchAugmenter())]:
        out = augmenter(cubes)
        changes[name] = float((out - cubes).flatten(1).std(dim=1).mean())
    assert changes["batch"] == pytest.approx(changes["torchio"], rel=0.2)


def test_training_augments_without_torchio(monkeypatch):
    """After a plain install (no torchio) the CPU path is the batch augmenter: same
    distributions, nothing extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "torchio", None)
    chosen = augment.input_augmenter(True, torch.device("cpu"))
    assert isinstance(chosen, augment.BatchAugmenter)
    torch.manual_seed(0)
    cubes = torch.rand(4, 1, 16, 16, 16)
    assert chosen(cubes).shape == cubes.shape
