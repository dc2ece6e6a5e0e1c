"""Training-time augmentation (§3.4): the same random crop and flips of input and target
cubes, and noise, anisotropy and blur of the input only.

Two implementations of the input augmentation draw from the same distributions: TorchIO's,
one cube at a time (the CPU path), and :class:`BatchAugmenter`, whole batches as tensor
operations on the batch's device (the CUDA path, where a per-cube CPU round trip would starve
the GPU). Both are callables from a batch ``(B, 1, n, n, n)`` to an augmented batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The augmentation's distributions (TorchIO's parameters; the blur reaches σ = 1.5 Å so that
# the 3.2–3.8 Å real pairs are also seen degraded to the 4–8 Å range the model is for).
NOISE_STD = (0.0, 0.05)
NOISE_P = 0.5
ANISOTROPY_DOWNSAMPLING = (1.5, 3.0)
ANISOTROPY_P = 0.3
BLUR_STD_VOXELS = (0.0, 1.5)
BLUR_P = 0.5


def crop_and_flip(inputs: torch.Tensor, targets: torch.Tensor, crop_size: int | None,
                  flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``crop_size``³ window and (with ``flip``) the same random axis flips and
    transposition of input and target cubes ``(B, 1, n, n, n)``; densities have no handedness
    to protect at the resolution of a cube's contents, so mirror images are valid examples.
    Works on the tensors' device."""
    if crop_size is not None and crop_size < inputs.shape[-1]:
        starts = torch.randint(0, inputs.shape[-1] - crop_size + 1, (3,)).tolist()
        window = (...,) + tuple(slice(s, s + crop_size) for s in starts)
        inputs, targets = inputs[window], targets[window]
    if flip:
        axes = tuple(a for a in range(3) if torch.rand(()) < 0.5)
        order = tuple(torch.randperm(3).tolist())
        inputs, targets = (flipped_and_transposed(t, axes, order) for t in (inputs, targets))
    return inputs.contiguous(), targets.contiguous()


def flipped_and_transposed(cubes: torch.Tensor, axes: tuple[int, ...],
                           order: tuple[int, int, int]) -> torch.Tensor:
    """``cubes (B, C, z, y, x)`` mirrored along the spatial ``axes`` (0 = z) and then with their
    spatial axes in ``order`` (a permutation of 0, 1, 2)."""
    flipped = cubes.flip([2 + a for a in axes]) if axes else cubes
    return flipped.permute(0, 1, *(2 + a for a in order))


def input_augmenter(augment: bool = True, device: torch.device | None = None):
    """The input augmentation for training on ``device`` (None without ``augment``): TorchIO
    on a CPU where it is installed (``cryosamu[train]``), else :class:`BatchAugmenter`, which
    draws from the same distributions and needs nothing beyond torch (always on CUDA)."""
    if not augment:
        return None
    if device is not None and device.type == "cuda":
        return BatchAugmenter()
    try:
        return TorchioAugmenter()
    except ImportError:
        return BatchAugmenter()


class TorchioAugmenter:
    """TorchIO noise, anisotropy and blur, one cube of the batch at a time (on the CPU)."""

    def __init__(self) -> None:
        import torchio as tio

        self._tio = tio
        self.transform = tio.Compose([
            tio.RandomNoise(std=NOISE_STD, p=NOISE_P),
            tio.RandomAnisotropy(downsampling=ANISOTROPY_DOWNSAMPLING, p=ANISOTROPY_P),
            tio.RandomBlur(std=BLUR_STD_VOXELS, p=BLUR_P)])

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        cubes = [self.transform(self._tio.ScalarImage(tensor=cube)).data for cube in inputs.cpu()]
        return torch.stack(cubes).to(inputs.device)


class BatchAugmenter:
    """TorchIO's noise → anisotropy → blur, drawn per cube as TorchIO draws them, applied to
    the whole batch with tensor operations on its device. The parameters are drawn from torch's
    global generator on the CPU (seeded by ``train``)."""

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        count = inputs.shape[0]
        noisy = _chosen(count, NOISE_P)
        stds = torch.where(noisy, _uniform(count, NOISE_STD), torch.zeros(count))
        out = add_noise(inputs, stds) if bool(noisy.any()) else inputs
        resampled = torch.nonzero(_chosen(count, ANISOTROPY_P)).flatten().tolist()
        if resampled:
            out = out.clone()  # one copy for the batch, then the chosen cubes in place
        for index in resampled:
            axis = int(torch.randint(0, 3, ()))
            factor = float(_uniform(1, ANISOTROPY_DOWNSAMPLING))
            out[index:index + 1] = anisotropic(out[index:index + 1], axis, factor)
        blurred = _chosen(count, BLUR_P)
        if bool(blurred.any()):
            sigmas = _uniform(count * 3, BLUR_STD_VOXELS).reshape(count, 3) * blurred[:, None]
            out = gaussian_blur(out, sigmas)
        return out


def _chosen(count: int, probability: float) -> torch.Tensor:
    """Which of ``count`` cubes a transform with this ``probability`` applies to."""
    return torch.rand(count) < probability


def _uniform(count: int, bounds: tuple[float, float]) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(count)


def add_noise(cubes: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Gaussian noise of standard deviation ``stds[i]`` added to cube ``i``."""
    scale = stds.to(cubes.device, cubes.dtype).reshape(-1, *(1,) * (cubes.dim() - 1))
    return cubes + torch.randn(cubes.shape, device=cubes.device, dtype=cubes.dtype) * scale


def anisotropic(cubes: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """Cubes ``(B, C, z, y, x)`` as if sampled ``factor`` times more coarsely along the spatial
    ``axis`` and brought back to their grid, as TorchIO's RandomAnisotropy does: ``n // factor``
    coarse samples spaced ``factor`` voxels apart, centred on the cube, each the nearest voxel;
    then linear interpolation back at every voxel (beyond the outermost coarse samples the
    nearest one is kept, where TorchIO writes zeros)."""
    n = cubes.shape[2 + axis]
    count = max(1, int(n // factor))
    positions = (n - 1) / 2 + (torch.arange(count, dtype=torch.float64) - (count - 1) / 2) * factor
    nearest = (positions + 0.5).floor().clamp(0, n - 1).long().to(cubes.device)
    coarse = cubes.index_select(2 + axis, nearest)
    if count == 1:
        return coarse.expand_as(cubes).contiguous()
    u = ((torch.arange(n, dtype=torch.float64) - positions[0]) / factor).clamp(0, count - 1)
    below = u.floor().long().clamp(max=count - 2)
    shape = [1] * cubes.dim()
    shape[2 + axis] = n
    weight = (u - below).to(cubes.device, cubes.dtype).reshape(shape)
    below = below.to(cubes.device)
    return (coarse.index_select(2 + axis, below) * (1 - weight)
            + coarse.index_select(2 + axis, below + 1) * weight)


def gaussian_blur(cubes: torch.Tensor, sigmas_zyx: torch.Tensor) -> torch.Tensor:
    """Each cube ``i`` of ``(B, C, z, y, x)`` blurred by a Gaussian of standard deviations
    ``sigmas_zyx[i]`` (voxels) as TorchIO blurs, that is as ``scipy.ndimage.gaussian_filter``
    does by default: one sampled, normalised kernel per axis reaching ``GAUSSIAN_TRUNCATE``
    σ, mirrored edges (σ = 0 leaves an axis as is). One grouped convolution per axis for the
    whole batch."""
    dtype = torch.promote_types(cubes.dtype, torch.float32)
    out = cubes.to(dtype)
    count, channels = cubes.shape[:2]
    for axis in range(3):
        kernels = gaussian_kernels(sigmas_zyx[:, axis].cpu().to(dtype)).to(cubes.device)
        radius = (kernels.shape[1] - 1) // 2
        if radius == 0:
            continue
        shape = [count * channels, 1, 1, 1, 1]
        shape[2 + axis] = kernels.shape[1]
        weight = kernels.repeat_interleave(channels, dim=0).reshape(shape)
        padded = _mirrored(out, 2 + axis, radius).reshape(1, count * channels,
                                                           *_mirrored_shape(out, axis, radius))
        out = F.conv3d(padded, weight, groups=count * channels).reshape(out.shape)
    return out.to(cubes.dtype)


GAUSSIAN_TRUNCATE = 4.0


def gaussian_kernels(sigmas: torch.Tensor) -> torch.Tensor:
    """``(M, 2R + 1)``: sampled Gaussians of ``sigmas (M,)`` normalised to sum 1, each zero
    beyond its own radius ``int(GAUSSIAN_TRUNCATE σ + 0.5)`` (scipy's); R is the largest."""
    radii = (GAUSSIAN_TRUNCATE * sigmas + 0.5).floor()
    radius = int(radii.max()) if len(sigmas) else 0
    offsets = torch.arange(-radius, radius + 1, dtype=sigmas.dtype)
    safe = sigmas.clamp_min(1e-12)[:, None]
    kernels = torch.exp(-0.5 * (offsets / safe) ** 2) * (offsets.abs() <= radii[:, None])
    return kernels / kernels.sum(dim=1, keepdim=True)


def _mirrored(volume: torch.Tensor, dim: int, radius: int) -> torch.Tensor:
    """``volume`` extended by ``radius`` voxels at both ends of ``dim`` by mirroring about the
    edge (``d c b a | a b c d | d c b a``: scipy's ``reflect``)."""
    head = volume.narrow(dim, 0, radius).flip(dim)
    tail = volume.narrow(dim, volume.shape[dim] - radius, radius).flip(dim)
    return torch.cat([head, volume, tail], dim=dim)


def _mirrored_shape(volume: torch.Tensor, axis: int, radius: int) -> list[int]:
    shape = list(volume.shape[2:])
    shape[axis] += 2 * radius
    return shape
