"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path


def random_checkpoint(path: Path, base_channels: int = 32, seed: int = 0,
                      config=None) -> Path:
    """A randomly initialised network (same arithmetic as a trained one): ``config``, or the
    paper's shape with ``base_channels``."""
    import torch

    from cryosamu_cli.model import UNetConfig
    from cryosamu_cli.model.unet import UNet3D
    from cryosamu_cli.weights import save_checkpoint

    torch.manual_seed(seed)
    config = config or UNetConfig(base_channels=base_channels)
    return save_checkpoint(path, UNet3D.from_config(config))
