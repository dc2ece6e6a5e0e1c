"""The network on a device: loading it once, its precision, its batch size (and the
out-of-memory back-off), its threads, and running cubes through it as a numpy function."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryosamu_cli.enhance import tiling
from cryosamu_cli.device import (check_finite, keep_freed_memory_for_reuse, precision_name,
                                  precision_reason, resolve_device, resolve_precision,
                                  use_precision)
from cryosamu_cli.errors import ConfigError, DeviceError
from cryosamu_cli.enhance.tiling import CORE_SIZE, CUBE_SIZE, DEFAULT_SKIP_THRESHOLD
from cryosamu_cli.weights import DownloadProgress, load_model, resolve_weights


@dataclass
class Enhancer:
    """A loaded network and how to run it; reused across maps so the model loads once.

    Attributes:
        model: The U-Net, on ``device``.
        device: Where it runs.
        weights_path: The checkpoint it came from.
        batch_size: Cubes per network call.
        cube_size: Edge of the cubes.
        core_size: Edge of the kept cores.
        skip_threshold: Cubes whose normalised input never exceeds this are not run.
        confidence_passes: Monte-Carlo dropout passes per cube (0: one deterministic pass).
        precision: Autocast dtype of the network (None: fp32).
        precision_reason: Why that precision (``bf16: the CPU has avx512_bf16``).
        tta: Axis flips averaged per cube (1: none; :data:`TTA_FLIPS`).
    """

    model: torch.nn.Module
    device: torch.device
    weights_path: Path
    batch_size: int = 2
    cube_size: int = CUBE_SIZE
    core_size: int = CORE_SIZE
    skip_threshold: float = DEFAULT_SKIP_THRESHOLD
    confidence_passes: int = 0
    precision: torch.dtype | None = None
    precision_reason: str = ""
    tta: int = 1
    _predict: "NetworkPredictor" = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tiling.check_cube_sizes(self.cube_size, self.core_size)
        factor = self.model.config.downsampling_factor
        if self.cube_size % factor:
            raise ConfigError(f"cube size {self.cube_size} must be divisible by {factor} "
                              "for this model")
        if self.confidence_passes < 0 or self.confidence_passes == 1:
            raise ConfigError("--confidence needs at least 2 passes (or 0 for none)")
        self._predict = NetworkPredictor(self.model, self.device, self.confidence_passes,
                                         self.precision, self.tta)

    @property
    def precision_name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``."""
        return precision_name(self.precision)

    def run(self, volume: np.ndarray, *, run_mask: np.ndarray | None = None,
            progress: tiling.ProgressCallback | None = None,
            on_estimate: tiling.EstimateCallback | None = None,
            ) -> tuple[np.ndarray, np.ndarray | None, tiling.TilingStats]:
        """Enhance a normalised 1 Å volume: ``(mean, std or None, stats)``."""
        out, stats = tiling.enhance_tiled(
            volume, self._predict, cube_size=self.cube_size, core_size=self.core_size,
            batch_size=self.batch_size, skip_threshold=self.skip_threshold, run_mask=run_mask,
            progress=progress, on_estimate=on_estimate)
        backed_off = getattr(self._predict, "max_batch", None)  # NetworkPredictor's OOM size
        if backed_off is not None:
            self.batch_size = min(self.batch_size, backed_off)
        if self.confidence_passes:
            return out[0], out[1], stats
        return out, None, stats


def load_enhancer(*, weights: str | os.PathLike | None = None, device: str = "auto",
                  batch_size: int | None = None, cube_size: int = CUBE_SIZE, core_size: int = CORE_SIZE,
                  threads: int | None = None, confidence: int = 0,
                  skip_threshold: float = DEFAULT_SKIP_THRESHOLD, precision: str = "auto",
                  tta: int = 1, download_progress: DownloadProgress | None = None) -> Enhancer:
    """Resolve the device and weights and load the network once.

    Raises:
        CryosamuError: Unknown device, missing/corrupt weights, invalid sizes.
    """
    tiling.check_cube_sizes(cube_size, core_size)
    check_tta(tta)
    if batch_size is not None:
        tiling.check_batch_size(batch_size)
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    use_precision(dtype, torch_device)
    _set_threads(threads)
    if torch_device.type == "cpu":
        keep_freed_memory_for_reuse()
    weights_path = resolve_weights(weights, progress=download_progress)
    # channels-last 3D: about 10 % faster on CPU (oneDNN); model.unet.GroupNorm keeps it accurate
    model = load_model(weights_path).to(torch_device, memory_format=torch.channels_last_3d)
    enhancer = Enhancer(model, torch_device, weights_path, batch_size or 1, cube_size,
                        core_size, skip_threshold, confidence, dtype,
                        precision_reason(precision, torch_device), tta)
    if batch_size is None:
        enhancer.batch_size = auto_batch_size(enhancer)
    return enhancer


CPU_BATCH_SIZE = 2
MAX_AUTO_BATCH = 32


def auto_batch_size(enhancer: Enhancer) -> int:
    """The batch size ``--batch-size auto`` picks: on a CPU, 2 (from a batch of 2 on, PyTorch
    runs every fp32 convolution through oneDNN; larger batches gain nothing); on CUDA, as many
    cubes as 80 % of the free memory holds, measured from one cube's peak memory."""
    if enhancer.device.type != "cuda":
        return CPU_BATCH_SIZE
    device = enhancer.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free_bytes, _ = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    cube = np.zeros((1,) + (enhancer.cube_size,) * 3, np.float32)
    enhancer._predict(cube)
    per_cube = torch.cuda.max_memory_allocated(device) - baseline
    return batch_size_for_memory(free_bytes, per_cube)


def batch_size_for_memory(free_bytes: int, per_cube_bytes: int, fraction: float = 0.8,
                          cap: int = MAX_AUTO_BATCH) -> int:
    """How many cubes of ``per_cube_bytes`` peak memory fit in ``fraction`` of
    ``free_bytes`` (at least 1, at most ``cap``; an out-of-memory error later still halves
    the batch, see :class:`NetworkPredictor`)."""
    fitting = int(free_bytes * fraction) // max(int(per_cube_bytes), 1)
    return max(1, min(cap, fitting))


def _set_threads(threads: int | None) -> None:
    """Apply a ``--threads`` choice to torch's intra-op pool."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


# Test-time augmentation: axis flips of a (B, 1, z, y, x) batch, each exact on the grid; the
# first N are averaged with --tta N (the identity first, so N = 1 is the plain run).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (4,), (3,), (2,), (3, 4), (2, 4), (2, 3), (2, 3, 4))


def check_tta(tta: int) -> None:
    """Refuse a test-time augmentation count outside 1–8.

    Raises:
        ConfigError: It is.
    """
    if not 1 <= tta <= len(TTA_FLIPS):
        raise ConfigError(f"--tta must be between 1 and {len(TTA_FLIPS)} (flip combinations "
                          f"averaged), got {tta}")


class NetworkPredictor:
    """The network as a numpy function for :mod:`cryosamu_cli.enhance.tiling`: ``(B, n, n, n)`` →
    ``(B, n, n, n)``, or ``(B, 2, n, n, n)`` (mean, standard deviation) over ``passes``
    Monte-Carlo dropout passes; with ``tta`` > 1 each output is the mean over the first
    ``tta`` axis flips of :data:`TTA_FLIPS` (flipped in, flipped back out).

    Output that is not finite stops the run (:func:`cryosamu_cli.device.check_finite`).
    On CUDA the cubes are copied from pinned host memory without blocking the host. When the
    device runs out of memory the batch is halved and retried, and the smaller size is kept
    for the rest of the run (``max_batch``); only a single cube that does not fit is an error.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, passes: int = 0,
                 precision: torch.dtype | None = None, tta: int = 1) -> None:
        check_tta(tta)
        self.model, self.device, self.passes, self.precision = model, device, passes, precision
        self.tta = tta
        self.max_batch: int | None = None
        model.eval()
        if passes:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.train()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        size = min(self.max_batch or len(batch), len(batch))
        outputs, start = [], 0
        while start < len(batch):
            chunk = batch[start:start + size]
            try:
                outputs.append(self._predict(chunk))
            except torch.OutOfMemoryError as exc:
                size = self._back_off(size, exc)
                continue
            start += len(chunk)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _back_off(self, size: int, exc: Exception) -> int:
        """Halve the batch after an out-of-memory error (and remember it)."""
        if size == 1:
            raise DeviceError(f"{self.device} ran out of memory on a single cube; use a "
                              "smaller --cube-size or --device cpu") from exc
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.max_batch = size // 2
        return self.max_batch

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        """Cubes as a channels-last ``(B, 1, n, n, n)`` tensor on the device."""
        tensor = torch.from_numpy(batch).unsqueeze(1)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True, memory_format=torch.channels_last_3d)

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The network's output (the mean over the ``tta`` flips)."""
        total = None
        for dims in TTA_FLIPS[:self.tta]:
            with torch.autocast(self.device.type, dtype=self.precision or torch.float32,
                                enabled=self.precision is not None):
                output = self.model(inputs.flip(dims) if dims else inputs).float()
            output = output.flip(dims) if dims else output
            total = output if total is None else total + output
        output = total if self.tta == 1 else total / self.tta
        check_finite(output, self.precision)
        return output

    @torch.inference_mode()
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        inputs = self._to_device(batch)
        if not self.passes:
            return self._forward(inputs).squeeze(1).cpu().numpy()
        samples = torch.stack([self._forward(inputs) for _ in range(self.passes)])
        mean, std = samples.mean(dim=0), samples.std(dim=0, correction=0)
        return torch.cat([mean, std], dim=1).cpu().numpy()
