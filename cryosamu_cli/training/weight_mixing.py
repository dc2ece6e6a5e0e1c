"""Checkpoints mixed in weight space: one network whose weights are a weighted mean of others.

The averaging of issue 25, item 3, beyond the EMA: the last k checkpoints of one run
(``shares`` equal), or a fine-tuned network interpolated with the one it started from
(WiSE-FT, Wortsman et al. 2022: keeps much of the fine-tuning's gain while giving back less of
what the starting network did well on data unlike the fine-tuning's). Every checkpoint must
hold the same architecture (config, tensor names and shapes); floating-point tensors are
mixed, integer buffers (counters) are taken from the first checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryosamu_cli.errors import WeightsError
from cryosamu_cli.weights import load_model, save_checkpoint


def mixed_model(checkpoints: Sequence[str | os.PathLike], shares: Sequence[float]) -> Any:
    """A ``UNet3D`` whose floating-point weights are Σ shareᵢ · weightsᵢ over ``checkpoints``.

    Raises:
        WeightsError: Fewer than one checkpoint, shares that are not one per checkpoint,
            negative or not summing to 1, or checkpoints of different architectures.
    """
    check_shares(len(checkpoints), shares)
    models = [load_model(path) for path in checkpoints]
    check_same_architecture(models, checkpoints)
    mixed = models[0]
    states = [model.state_dict() for model in models]
    mixed.load_state_dict({name: _mixed_tensor([state[name] for state in states], shares)
                           for name in states[0]})
    return mixed


def save_mixed_checkpoint(*, checkpoints: Sequence[str | os.PathLike], shares: Sequence[float],
                          output: str | os.PathLike) -> Path:
    """Mix ``checkpoints`` (:func:`mixed_model`) and save the result as a format-1 checkpoint
    at ``output`` (atomically; it records what was mixed in ``mixed_from``)."""
    model = mixed_model(checkpoints, shares)
    provenance = [{"checkpoint": str(path), "share": float(share)}
                  for path, share in zip(checkpoints, shares)]
    return save_checkpoint(output, model, extra={"mixed_from": provenance})


def check_shares(count: int, shares: Sequence[float]) -> None:
    """Refuse shares that are not one non-negative number per checkpoint summing to 1."""
    if count < 1:
        raise WeightsError("give at least one checkpoint to mix")
    if len(shares) != count:
        raise WeightsError(f"{len(shares)} shares for {count} checkpoints: give one each")
    if any(share < 0 for share in shares) or abs(sum(shares) - 1.0) > 1e-6:
        raise WeightsError(f"the shares must be non-negative and sum to 1 (got "
                           f"{', '.join(f'{s:g}' for s in shares)})")


def check_same_architecture(models: Sequence[Any], names: Sequence[str | os.PathLike]) -> None:
    """Refuse networks whose configs, tensor names or tensor shapes differ from the first's."""
    first = models[0]
    first_shapes = {k: tuple(v.shape) for k, v in first.state_dict().items()}
    for model, name in zip(models[1:], names[1:]):
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if model.config != first.config or shapes != first_shapes:
            raise WeightsError(f"{name} is not the same architecture as {names[0]}: only "
                               f"checkpoints of one network can be mixed")


def _mixed_tensor(tensors: Sequence[Any], shares: Sequence[float]) -> Any:
    """Σ shareᵢ · tensorᵢ for floating-point tensors (computed in float64); the first tensor
    for integer ones."""
    import torch

    if not tensors[0].is_floating_point():
        return tensors[0].clone()
    total = sum(share * tensor.to(torch.float64) for share, tensor in zip(shares, tensors))
    return total.to(tensors[0].dtype)
