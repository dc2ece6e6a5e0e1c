"""``enhance_map``: the inference pipeline, as a list of named steps.

read map → resample to 1 Å → normalise → cubes through the network → stitch → resample back
onto the input grid → write with the input's header.

The written map is on the network's normalised scale: 0 is solvent and 1 corresponds to the
99.9th percentile of the input's positive density after resampling to 1 Å (§3.2). The scale
used is returned in :class:`EnhanceResult` and written into the output's labels.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryosamu_cli import grid as grid_ops
from cryosamu_cli import mapio, tiling
from cryosamu_cli.device import resolve_device
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.weights import DownloadProgress, load_model, resolve_weights

DEFAULT_SKIP_THRESHOLD = 0.0


@dataclass(frozen=True)
class EnhanceResult:
    """Summary of one ``enhance_map`` run."""

    output_path: Path
    weights_path: Path
    device: str
    seconds: float
    cubes_total: int
    cubes_run: int
    cubes_skipped: int
    normalisation_scale: float


def enhance_map(*, input_path: str | os.PathLike, output_path: str | os.PathLike,
                weights: str | os.PathLike | None = None, device: str = "auto",
                batch_size: int = 2, cube_size: int = 64, core_size: int = 50,
                threads: int | None = None, force: bool = False,
                skip_threshold: float = DEFAULT_SKIP_THRESHOLD,
                progress: tiling.ProgressCallback | None = None,
                download_progress: DownloadProgress | None = None) -> EnhanceResult:
    """Enhance one map and write it onto exactly the input's grid.

    Args:
        input_path: MRC/CCP4 map (optionally .gz).
        output_path: Where to write the enhanced map (``.gz`` to compress).
        weights: Checkpoint path; default: the shipped/cached pretrained model.
        device: ``auto``, ``cpu`` or ``cuda:N``.
        batch_size: Cubes per network call.
        cube_size: Edge of the cubes given to the network (divisible by 8 for the default model).
        core_size: Edge of the central part of each output cube that is kept.
        threads: CPU threads for torch (default: torch's choice).
        force: Overwrite an existing output.
        skip_threshold: Cubes whose normalised input never exceeds this are not run.
        progress: ``progress(cubes_done, cubes_to_run)`` callback.
        download_progress: Callback for a first-use weights download.

    Raises:
        CryosamuError: Any problem with the input, output, weights, device or options.
    """
    started = time.perf_counter()
    output_path = mapio.check_output_path(output_path, force=force)
    tiling.check_cube_sizes(cube_size, core_size)
    torch_device = resolve_device(device)
    _set_threads(threads)
    data, grid = mapio.read_map(input_path)
    weights_path = resolve_weights(weights, progress=download_progress)
    model = _prepare_model(weights_path, torch_device, cube_size)
    on_1A = grid_ops.resample_to_spacing(data, grid.voxel_size_zyx)
    norm = grid_ops.normalisation_of(on_1A)
    enhanced_1A, stats = tiling.enhance_tiled(
        grid_ops.normalise(on_1A, norm), _predictor(model, torch_device),
        cube_size=cube_size, core_size=core_size, batch_size=batch_size,
        skip_threshold=skip_threshold, progress=progress)
    enhanced = grid_ops.resample_to_grid(enhanced_1A, grid_ops.NETWORK_VOXEL_SIZE_A,
                                         grid.shape_zyx, grid.voxel_size_zyx)
    mapio.write_map(output_path, enhanced, grid, force=force,
                    note=f"enhanced, scale 1 = {norm.scale:.4g} input units")
    return EnhanceResult(output_path, weights_path, str(torch_device),
                         time.perf_counter() - started, stats.cubes_total, stats.cubes_run,
                         stats.cubes_skipped, norm.scale)


def _set_threads(threads: int | None) -> None:
    """Apply a ``--threads`` choice to torch's intra-op pool."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def _prepare_model(weights_path: Path, device: torch.device, cube_size: int) -> torch.nn.Module:
    """Load the checkpoint onto ``device`` and check the cube size suits it."""
    model = load_model(weights_path)
    factor = model.config.downsampling_factor
    if cube_size % factor:
        raise ConfigError(f"cube size {cube_size} must be divisible by {factor} for this model")
    return model.to(device)


def _predictor(model: torch.nn.Module, device: torch.device) -> tiling.Predictor:
    """Wrap the network as a numpy ``(B, n, n, n) → (B, n, n, n)`` function."""

    @torch.inference_mode()
    def predict(batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(batch).unsqueeze(1).to(device)
        return model(inputs).squeeze(1).float().cpu().numpy()

    return predict
