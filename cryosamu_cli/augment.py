"""Training-time augmentation (§3.4): the same random crop and flips of input and target
cubes, and TorchIO noise, anisotropy and blur of the input only."""

from __future__ import annotations

import torch


def crop_and_flip(inputs: torch.Tensor, targets: torch.Tensor, crop_size: int | None,
                  flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``crop_size``³ window and (with ``flip``) the same random axis flips and
    transposition of input and target cubes ``(B, 1, n, n, n)``; densities have no handedness
    to protect at the resolution of a cube's contents, so mirror images are valid examples."""
    if crop_size is not None and crop_size < inputs.shape[-1]:
        starts = torch.randint(0, inputs.shape[-1] - crop_size + 1, (3,)).tolist()
        window = (...,) + tuple(slice(s, s + crop_size) for s in starts)
        inputs, targets = inputs[window], targets[window]
    if flip:
        axes = [2 + a for a in range(3) if torch.rand(()) < 0.5]
        order = (0, 1, *(2 + p for p in torch.randperm(3).tolist()))
        inputs, targets = (t.flip(axes).permute(order) if axes else t.permute(order)
                           for t in (inputs, targets))
    return inputs.contiguous(), targets.contiguous()


def input_augmenter(augment: bool = True):
    """TorchIO noise, anisotropy and blur for the input cubes (None without ``augment``).
    The blur reaches σ = 1.5 Å so that the 3.2–3.8 Å real pairs are also seen degraded to
    the 4–8 Å range the model is for."""
    if not augment:
        return None
    import torchio as tio

    return tio.Compose([tio.RandomNoise(std=(0.0, 0.05), p=0.5),
                        tio.RandomAnisotropy(downsampling=(1.5, 3.0), p=0.3),
                        tio.RandomBlur(std=(0.0, 1.5), p=0.5)])


def augment_inputs(inputs: torch.Tensor, augmenter) -> torch.Tensor:
    """Apply the augmentation to each input cube of a batch (targets stay untouched)."""
    if augmenter is None:
        return inputs
    import torchio as tio

    return torch.stack([augmenter(tio.ScalarImage(tensor=cube)).data for cube in inputs])
