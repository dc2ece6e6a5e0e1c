"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


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


def matrix_tflops(device, dtype, size: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` rate of a ``size``² matrix product in ``dtype`` on ``device``, in
    TFLOP/s (the device's own yardstick for the achieved rates the scripts print)."""
    import torch

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a = torch.randn(size, size, device=device).to(dtype)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        synchronise()
        started = time.perf_counter()
        a @ a
        synchronise()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e12


def output_agreement(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """Correlation and the largest difference of two maps, also as a share of the reference's
    range."""
    difference = float(np.abs(candidate - reference).max())
    return {"correlation": float(np.corrcoef(candidate.ravel(), reference.ravel())[0, 1]),
            "max_abs_difference": difference,
            "max_difference_over_range": difference / float(reference.max() - reference.min())}
