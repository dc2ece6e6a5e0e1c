"""The training loss: smooth-L1 (§3.4), optionally plus a masked correlation term.

``map_model_cc`` scores a map by its correlation with the model map inside the molecule's mask;
``smooth-l1+corr`` adds that criterion to the paper's voxel loss:
``smooth_l1(output, target) + corr_weight · mean over cubes of (1 − r)``, where ``r`` is
Pearson's correlation of output and target over the voxels where the target exceeds
``MASK_LEVEL`` (the target is normalised to [0, 1], so that is inside the molecule).
torch is imported inside the functions: the CLI reads the defaults here without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryosamu_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch

LOSSES = ("smooth-l1", "smooth-l1+corr")
DEFAULT_CORR_WEIGHT = 0.01  # 1 − r of a trained network is ~0.2, its smooth-L1 ~0.002
MASK_LEVEL = 0.05  # target density (0–1 normalised) above which a voxel is in the molecule
MIN_MASKED_VOXELS = 8  # a cube with fewer masked voxels has no correlation term


def check_loss(name: str, corr_weight: float) -> None:
    """Refuse an unknown loss or a negative correlation weight.

    Raises:
        ConfigError: Names the losses there are.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss '{name}': use {' or '.join(LOSSES)}")
    if corr_weight < 0:
        raise ConfigError(f"--corr-weight must be ≥ 0, got {corr_weight}")


def masked_correlation_loss(outputs: torch.Tensor, targets: torch.Tensor,
                            mask_level: float = MASK_LEVEL) -> torch.Tensor:
    """Mean over cubes of ``1 − r`` inside each target's mask (``targets > mask_level``).

    Args:
        outputs, targets: ``(B, 1, n, n, n)`` (any shape whose first axis is the cube).

    Returns:
        A 0-d tensor in [0, 2]; 0 when no cube has ``MIN_MASKED_VOXELS`` masked voxels.
    """
    import torch

    outputs, targets = outputs.flatten(1), targets.flatten(1).to(outputs.dtype)
    mask = (targets > mask_level).to(outputs.dtype)
    counts = mask.sum(dim=1)
    used = counts >= MIN_MASKED_VOXELS
    if not bool(used.any()):
        return outputs.sum() * 0.0
    outputs, targets, mask, counts = outputs[used], targets[used], mask[used], counts[used]
    out_c = (outputs - (outputs * mask).sum(1, keepdim=True) / counts[:, None]) * mask
    tgt_c = (targets - (targets * mask).sum(1, keepdim=True) / counts[:, None]) * mask
    covariance = (out_c * tgt_c).sum(1)
    norms = torch.sqrt((out_c ** 2).sum(1) * (tgt_c ** 2).sum(1)).clamp_min(1e-12)
    return (1.0 - covariance / norms).mean()


def training_loss(outputs: torch.Tensor, targets: torch.Tensor, name: str = LOSSES[0],
                  corr_weight: float = DEFAULT_CORR_WEIGHT) -> torch.Tensor:
    """The loss ``name`` of a batch (outputs in float32)."""
    from torch import nn

    loss = nn.functional.smooth_l1_loss(outputs, targets)
    if name == "smooth-l1+corr":
        loss = loss + corr_weight * masked_correlation_loss(outputs, targets)
    return loss
