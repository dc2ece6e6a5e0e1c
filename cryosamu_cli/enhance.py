"""``enhance_map`` and ``enhance_many``: the inference pipeline, as a list of named steps.

read map (average the half maps) → choose the resolution → resample to 1 Å → normalise →
cubes through the network → stitch → limit to the resolution → resample back onto the input grid
→ blend (strength, mask) → write with the input's header (plus the standard-deviation map and
the half-map FSC when asked for).

The network works on a normalised scale (0 is solvent, 1 the 99.9th percentile of the input's
positive density after resampling to 1 Å, §3.2). The written map is, by default
(``density_scale="input"``), in the input's units: scaled so that the 99.9th percentile of its
positive density equals the input's, so contour levels chosen on the input carry over;
``density_scale="normalised"`` writes the network's scale. The scale is recorded in
:class:`EnhanceResult` and in the output's labels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cryosamu_cli import grid as grid_ops
from cryosamu_cli import mapio, memory, metrics, tiling
from cryosamu_cli import resolution as resolution_ops
from cryosamu_cli.atomic import write_text_atomic
from cryosamu_cli.device import (keep_freed_memory_for_reuse, precision_name, resolve_device,
                                  resolve_precision)
from cryosamu_cli.errors import ConfigError, CryosamuError, DeviceError, OutputError
from cryosamu_cli.weights import DownloadProgress, load_model, resolve_weights

# Cubes whose normalised input never exceeds 5 % of the 99.9th percentile are solvent (or
# masked out): not run; their core gets the network's output for an empty cube. Measured with
# benchmarks/skip_and_core.py: it skips 25-49 % of the cubes of masked real maps and leaves the
# output unchanged (correlation 1.00000 with the no-skip output on emd_6824, whole box and
# molecule); 0.2 changes it (0.9916 on emd_5168). See docs/performance.md.
DEFAULT_SKIP_THRESHOLD = 0.05
MASK_MODES = ("enhance-inside", "keep-inside")
FSC_THRESHOLD = 0.143
MASK_EDGE_VOXELS = 3.0
DENSITY_SCALES = ("input", "normalised")
# The band limit's edge, as (pass, stop) multiples of 1/R (grid.low_pass_weights): a raised
# cosine from 0.9/R to 1.1/R (weight 0.5 at R), chosen for the shipped model on degraded real
# validation maps with benchmarks/band_limit.py (docs/MODEL_CARD.md): best mean CC_box/CC_mask
# of the edges tried, and a soft edge rings less than a hard truncation.
BAND_EDGE = (0.9, 1.1)


@dataclass(frozen=True)
class EnhanceResult:
    """Summary of one enhanced map."""

    output_path: Path
    weights_path: Path
    device: str
    seconds: float
    cubes_total: int
    cubes_run: int
    cubes_skipped: int
    normalisation_scale: float
    extra_outputs: tuple[Path, ...] = ()
    half_map_resolution_A: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    resolution: resolution_ops.ResolutionChoice = resolution_ops.ResolutionChoice(None,
                                                                                 "not given")
    precision: str = "fp32"
    density_scale: str = DENSITY_SCALES[0]


class StageClock:
    """Accumulates wall time per named stage of a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap to ``stage``."""
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def add(self, stage: str, seconds: float) -> None:
        """Charge ``seconds`` measured elsewhere to ``stage``."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


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
    """

    model: torch.nn.Module
    device: torch.device
    weights_path: Path
    batch_size: int = 2
    cube_size: int = 64
    core_size: int = 50
    skip_threshold: float = DEFAULT_SKIP_THRESHOLD
    confidence_passes: int = 0
    precision: torch.dtype | None = None
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
                                         self.precision)

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
        if self.confidence_passes:
            return out[0], out[1], stats
        return out, None, stats


def load_enhancer(*, weights: str | os.PathLike | None = None, device: str = "auto",
                  batch_size: int | None = None, cube_size: int = 64, core_size: int = 50,
                  threads: int | None = None, confidence: int = 0,
                  skip_threshold: float = DEFAULT_SKIP_THRESHOLD, precision: str = "auto",
                  download_progress: DownloadProgress | None = None) -> Enhancer:
    """Resolve the device and weights and load the network once.

    Raises:
        CryosamuError: Unknown device, missing/corrupt weights, invalid sizes.
    """
    tiling.check_cube_sizes(cube_size, core_size)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    _set_threads(threads)
    if torch_device.type == "cpu":
        keep_freed_memory_for_reuse()
    weights_path = resolve_weights(weights, progress=download_progress)
    # channels-last 3D: about 10 % faster on CPU (oneDNN); model.unet.GroupNorm keeps it accurate
    model = load_model(weights_path).to(torch_device, memory_format=torch.channels_last_3d)
    enhancer = Enhancer(model, torch_device, weights_path, batch_size or 1, cube_size,
                        core_size, skip_threshold, confidence, dtype)
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


def enhance_map(*, input_path: str | os.PathLike, output_path: str | os.PathLike,
                weights: str | os.PathLike | None = None, device: str = "auto",
                batch_size: int | None = None, cube_size: int = 64, core_size: int = 50,
                threads: int | None = None, force: bool = False,
                half2_path: str | os.PathLike | None = None,
                mask_path: str | os.PathLike | None = None, mask_mode: str = "keep-inside",
                strength: float = 1.0, confidence: int = 0,
                skip_threshold: float = DEFAULT_SKIP_THRESHOLD, precision: str = "auto",
                resolution: str | float | resolution_ops.ResolutionRequest | None = None,
                density_scale: str = DENSITY_SCALES[0],
                band_edge: tuple[float, float] = BAND_EDGE,
                progress: tiling.ProgressCallback | None = None,
                on_estimate: tiling.EstimateCallback | None = None,
                download_progress: DownloadProgress | None = None,
                enhancer: Enhancer | None = None) -> EnhanceResult:
    """Enhance one map and write it onto exactly the input's grid.

    Args:
        input_path: MRC/CCP4 map (optionally .gz); half map 1 when ``half2_path`` is given.
        output_path: Where to write the enhanced map (``.gz`` to compress).
        weights: Checkpoint path; default: the shipped/cached pretrained model.
        device: ``auto``, ``cpu`` or ``cuda:N`` (:func:`enhance_many` also takes several).
        batch_size: Cubes per network call (None: :func:`auto_batch_size`).
        cube_size: Edge of the cubes given to the network (divisible by 8 for the default model).
        core_size: Edge of the central part of each output cube that is kept.
        threads: CPU threads for torch (default: torch's choice).
        force: Overwrite existing outputs.
        half2_path: Second half map: the average of the halves is enhanced and their FSC is
            written to ``<output>_fsc.json``.
        mask_path: Mask on the map's grid, used as ``mask_mode`` says with a soft edge.
        mask_mode: ``enhance-inside`` (input kept outside) or ``keep-inside`` (input kept inside).
        strength: 1 = fully enhanced, 0 = the input (on the output's density scale), between:
            a linear blend.
        confidence: Monte-Carlo dropout passes (≥ 2); writes ``<output>_std.mrc``.
        skip_threshold: Cubes whose normalised input never exceeds this are not run.
        precision: ``auto`` (bf16 on CUDA, fp16 where it has no bf16, fp32 on CPU),
            ``fp32``, ``bf16`` or ``fp16`` (:func:`cryosamu_cli.device.resolve_precision`).
        resolution: The map's resolution in Å (the output is limited to it), ``none`` (the
            network's full band), a CSV of path,resolution, or None: the half-map FSC = 0.143
            resolution with ``half2_path``, else the full band
            (:mod:`cryosamu_cli.resolution`).
        density_scale: ``input`` (the output in the input's units, its 99.9th percentile of
            positive density matched to the input's) or ``normalised`` (the network's scale).
        band_edge: The band limit's edge (:func:`cryosamu_cli.grid.low_pass_weights`).
        progress: ``progress(cubes_done, cubes_to_run)`` callback.
        on_estimate: ``on_estimate(cubes_to_run, seconds_per_cube)`` after the first cube.
        download_progress: Callback for a first-use weights download.
        enhancer: A loaded :class:`Enhancer` to reuse (then the model options are ignored).

    Raises:
        CryosamuError: Any problem with the input, output, weights, device or options.
    """
    started, clock = time.perf_counter(), StageClock()
    _check_blend_options(strength, mask_path, mask_mode)
    _check_density_scale(density_scale)
    request = resolution_ops.parse_resolution(resolution)
    outputs = _planned_outputs(Path(output_path), half2_path is not None, confidence > 0, force)
    data, grid, fsc_curve = _read_input(input_path, half2_path)
    memory.check_enhance_fits(grid.shape_zyx, grid.voxel_size_zyx)
    half_map_resolution = fsc_curve.resolution_at(FSC_THRESHOLD) if fsc_curve else None
    limit = resolution_ops.choose_resolution(request, input_path, half_map_resolution,
                                             grid.voxel_size_zyx)
    mask = _read_mask(mask_path, grid)
    clock.lap("read")
    enhancer = enhancer or load_enhancer(
        weights=weights, device=device, batch_size=batch_size, cube_size=cube_size,
        core_size=core_size, threads=threads, confidence=confidence,
        skip_threshold=skip_threshold, precision=precision, download_progress=download_progress)
    clock.lap("load")
    on_1A = grid_ops.resample_to_spacing(data, grid.voxel_size_zyx)
    norm = grid_ops.normalisation_of(on_1A)
    run_mask = _run_mask(mask, mask_mode, grid)
    normalised_1A = grid_ops.normalise(on_1A, norm)
    clock.lap("resample")
    enhanced_1A, std_1A, stats = enhancer.run(normalised_1A, run_mask=run_mask,
                                              progress=progress, on_estimate=on_estimate)
    clock.lap("tiles")
    enhanced_1A = _limit_band(enhanced_1A, limit, band_edge)
    enhanced = _back_to_grid(enhanced_1A, grid)
    enhanced, reference = _on_density_scale(enhanced, data, norm, density_scale)
    enhanced = _blend_with_input(enhanced, reference, strength, mask, mask_mode)
    clock.lap("resample")
    scale_note = ("input units" if density_scale == "input"
                  else f"1 = {norm.scale:.4g} input units")
    note = f"enhanced, {scale_note}, {limit.label()}, {enhancer.precision_name}"
    mapio.write_map(outputs["map"], enhanced, grid, force=force, note=note)
    extra = _write_extras(outputs, grid, std_1A, fsc_curve, limit, force)
    clock.lap("write")
    stages = _split_tiles(clock.seconds, stats)
    return EnhanceResult(outputs["map"], enhancer.weights_path, str(enhancer.device),
                         time.perf_counter() - started, stats.cubes_total, stats.cubes_run,
                         stats.cubes_skipped, norm.scale, extra, half_map_resolution, stages,
                         limit, enhancer.precision_name, density_scale)


def _limit_band(volume_1A: np.ndarray, limit: resolution_ops.ResolutionChoice,
                edge: tuple[float, float]) -> np.ndarray:
    """The network's 1 Å output low-passed at the chosen resolution (unchanged without one):
    done before resampling back, so nothing beyond it can alias onto the input's grid."""
    if limit.resolution_A is None:
        return volume_1A
    return grid_ops.band_limit(volume_1A, (grid_ops.NETWORK_VOXEL_SIZE_A,) * 3,
                               limit.resolution_A, edge)


def _split_tiles(seconds: dict[str, float], stats: tiling.TilingStats) -> dict[str, float]:
    """Replace the ``tiles`` stage by its network and stitch parts."""
    stages = {k: v for k, v in seconds.items() if k != "tiles"}
    stages["network"] = stats.network_seconds
    stages["stitch"] = seconds.get("tiles", 0.0) - stats.network_seconds
    return stages


def _check_blend_options(strength: float, mask_path: object, mask_mode: str) -> None:
    """Refuse out-of-range strength and unknown mask modes."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"--strength must be between 0 and 1, got {strength}")
    if mask_path is not None and mask_mode not in MASK_MODES:
        raise ConfigError(f"unknown mask mode '{mask_mode}': use {' or '.join(MASK_MODES)}")


def companion_path(output_path: Path, suffix: str) -> Path:
    """``out.mrc`` → ``out_std.mrc`` / ``out_fsc.json`` (``.gz`` kept for maps)."""
    name = output_path.name
    for ext in (".mrc.gz", ".map.gz", ".mrc", ".map", ".ccp4", ".gz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    ext = ".json" if suffix == "fsc" else (".mrc.gz" if output_path.name.endswith(".gz")
                                          else ".mrc")
    return output_path.with_name(f"{name}_{suffix}{ext}")


def _planned_outputs(output_path: Path, with_fsc: bool, with_std: bool,
                     force: bool) -> dict[str, Path]:
    """Every file this run will write, each checked before any work is done."""
    outputs = {"map": output_path}
    if with_std:
        outputs["std"] = companion_path(output_path, "std")
    if with_fsc:
        outputs["fsc"] = companion_path(output_path, "fsc")
    for path in outputs.values():
        mapio.check_output_path(path, force=force)
    return outputs


def _read_input(input_path: str | os.PathLike, half2_path: str | os.PathLike | None,
                ) -> tuple[np.ndarray, mapio.GridInfo, metrics.FSCCurve | None]:
    """The map to enhance: the input, or the average of two half maps with their FSC."""
    data, grid = mapio.read_map(input_path)
    if half2_path is None:
        return data, grid, None
    half2, grid2 = mapio.read_map(half2_path)
    mapio.check_same_grid(grid, grid2, f"half map {half2_path}")
    curve = metrics.fsc(data, half2, grid.voxel_size_zyx)
    return (data + half2) / 2, grid, curve


def _read_mask(mask_path: str | os.PathLike | None, grid: mapio.GridInfo) -> np.ndarray | None:
    """The soft-edged mask weights on the map's grid, or None."""
    if mask_path is None:
        return None
    mask, mask_grid = mapio.read_map(mask_path)
    mapio.check_same_grid(grid, mask_grid, f"mask {mask_path}")
    return grid_ops.soft_mask(mask, MASK_EDGE_VOXELS)


def _run_mask(mask: np.ndarray | None, mask_mode: str,
              grid: mapio.GridInfo) -> np.ndarray | None:
    """Where the network's output is used, on the 1 Å grid: cubes elsewhere need not run."""
    if mask is None:
        return None
    used = mask if mask_mode == "enhance-inside" else 1.0 - mask
    on_1A = grid_ops.resample_to_spacing(used.astype(np.float32), grid.voxel_size_zyx)
    # generous: any voxel within two 1 Å voxels of a used one counts
    return ndimage.binary_dilation(on_1A > 1e-3, iterations=2)


def _back_to_grid(volume_1A: np.ndarray, grid: mapio.GridInfo) -> np.ndarray:
    """Resample a 1 Å result back onto the input's voxels."""
    return grid_ops.resample_to_grid(volume_1A, grid_ops.NETWORK_VOXEL_SIZE_A, grid.shape_zyx,
                                     grid.voxel_size_zyx)


def _on_density_scale(enhanced: np.ndarray, data: np.ndarray, norm: grid_ops.Normalisation,
                      density_scale: str) -> tuple[np.ndarray, np.ndarray]:
    """The network's output on the chosen density scale, and the input on the same scale
    (what ``--strength`` and the mask blend with).

    ``input``: the output multiplied so that the 99.9th percentile of its positive density is
    the input's (on the input's grid), and the input as it is. ``normalised``: both on the
    network's scale (the input normalised as the network saw it).
    """
    if density_scale == "normalised":
        return enhanced, grid_ops.normalise(data, norm)
    target = grid_ops.normalisation_of(data).scale
    try:
        own = grid_ops.normalisation_of(enhanced).scale
    except CryosamuError:  # an output with no positive density: the network's scale
        own = 1.0 / norm.scale
    return (enhanced * np.float32(target / own)).astype(np.float32), data


def _check_density_scale(density_scale: str) -> None:
    """Refuse an unknown ``--density-scale``."""
    if density_scale not in DENSITY_SCALES:
        raise ConfigError(f"unknown density scale '{density_scale}': use "
                          f"{' or '.join(DENSITY_SCALES)}")


def _blend_with_input(enhanced: np.ndarray, reference: np.ndarray, strength: float,
                      mask: np.ndarray | None, mask_mode: str) -> np.ndarray:
    """Apply ``--strength``, then the mask: where the input is kept, ``reference`` (the input
    on the output's density scale) is kept exactly."""
    if strength < 1.0:
        enhanced = grid_ops.blend(enhanced, reference, strength)
    if mask is None:
        return enhanced
    if mask_mode == "keep-inside":
        return grid_ops.blend(reference, enhanced, mask)
    return grid_ops.blend(enhanced, reference, mask)


def _write_extras(outputs: dict[str, Path], grid: mapio.GridInfo, std_1A: np.ndarray | None,
                  fsc_curve: metrics.FSCCurve | None,
                  limit: resolution_ops.ResolutionChoice, force: bool) -> tuple[Path, ...]:
    """Write the standard-deviation map and the FSC JSON when they were asked for."""
    written = []
    if std_1A is not None:
        std = np.maximum(_back_to_grid(std_1A, grid), 0.0)
        written.append(mapio.write_map(outputs["std"], std, grid, force=force,
                                       note="MC-dropout standard deviation"))
    if fsc_curve is not None:
        report = {**fsc_curve.to_dict(FSC_THRESHOLD),
                  "output_limited_to": limit.to_dict()}
        text = json.dumps(report, indent=1)
        written.append(write_text_atomic(outputs["fsc"], text + "\n"))
    return tuple(written)


def _set_threads(threads: int | None) -> None:
    """Apply a ``--threads`` choice to torch's intra-op pool."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


class NetworkPredictor:
    """The network as a numpy function for :mod:`cryosamu_cli.tiling`: ``(B, n, n, n)`` →
    ``(B, n, n, n)``, or ``(B, 2, n, n, n)`` (mean, standard deviation) over ``passes``
    Monte-Carlo dropout passes.

    On CUDA the cubes are copied from pinned host memory without blocking the host. When the
    device runs out of memory the batch is halved and retried, and the smaller size is kept
    for the rest of the run (``max_batch``); only a single cube that does not fit is an error.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, passes: int = 0,
                 precision: torch.dtype | None = None) -> None:
        self.model, self.device, self.passes, self.precision = model, device, passes, precision
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
        with torch.autocast(self.device.type, dtype=self.precision or torch.float32,
                            enabled=self.precision is not None):
            return self.model(inputs).float()

    @torch.inference_mode()
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        inputs = self._to_device(batch)
        if not self.passes:
            return self._forward(inputs).squeeze(1).cpu().numpy()
        samples = torch.stack([self._forward(inputs) for _ in range(self.passes)])
        mean, std = samples.mean(dim=0), samples.std(dim=0, correction=0)
        return torch.cat([mean, std], dim=1).cpu().numpy()


@dataclass(frozen=True)
class MapOutcome:
    """What happened to one map of a batch: ``ok``, ``skipped`` or ``failed``."""

    input_path: Path
    output_path: Path
    status: str
    message: str = ""
    result: EnhanceResult | None = None


def output_path_for(input_path: Path, output_dir: Path) -> Path:
    """``OUT/<name>_enhanced.mrc`` for an input ``<name>.map`` (``.gz`` and the like dropped)."""
    return companion_path(output_dir / input_path.name, "enhanced")


def enhance_many(*, input_paths: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 skip_existing: bool = False, force: bool = False,
                 weights: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int | None = None, cube_size: int = 64, core_size: int = 50,
                 threads: int | None = None, confidence: int = 0, precision: str = "auto",
                 resolution: str | float | resolution_ops.ResolutionRequest | None = None,
                 on_map_start: Callable[[Path, int, int], None] | None = None,
                 **map_options: object) -> list[MapOutcome]:
    """Enhance many maps into ``output_dir`` with one loaded model.

    One map failing is recorded and the others go on. With ``skip_existing`` a map whose output
    already exists is left alone, so a re-run after an interruption does only what is missing.

    Args:
        input_paths: Maps to enhance.
        output_dir: Folder for ``<name>_enhanced.mrc`` files (made if its parent exists).
        skip_existing: Leave maps whose output exists untouched.
        force: Overwrite existing outputs (ignored with ``skip_existing``).
        resolution: One value for every map, ``none``, or a CSV of path,resolution (every
            input must be listed); see :func:`enhance_map`.
        on_map_start: Called as ``on_map_start(path, index, count)`` before each map.
        map_options: Passed on to :func:`enhance_map` (mask, strength, progress, ...).

    Raises:
        CryosamuError: Only for problems shared by all maps (output folder, weights, device).
    """
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    request = resolution_ops.parse_resolution(resolution)
    resolution_ops.check_listed(request, [Path(p) for p in input_paths])
    output_dir.mkdir(exist_ok=True)
    devices = split_devices(device)
    if len(devices) > 1:
        return _enhance_on_devices(
            devices, input_paths=[Path(p) for p in input_paths], output_dir=output_dir,
            skip_existing=skip_existing, force=force, weights=weights, batch_size=batch_size,
            cube_size=cube_size, core_size=core_size, threads=threads, confidence=confidence,
            precision=precision, resolution=request, **map_options)
    enhancer = None
    outcomes = []
    for index, input_path in enumerate(Path(p) for p in input_paths):
        target = output_path_for(input_path, output_dir)
        if skip_existing and target.exists():
            outcomes.append(MapOutcome(input_path, target, "skipped", "output exists"))
            continue
        if on_map_start is not None:
            on_map_start(input_path, index, len(input_paths))
        enhancer = enhancer or load_enhancer(
            weights=weights, device=device, batch_size=batch_size, cube_size=cube_size,
            core_size=core_size, threads=threads, confidence=confidence, precision=precision)
        try:
            result = enhance_map(input_path=input_path, output_path=target,
                                 force=force and not skip_existing, confidence=confidence,
                                 resolution=request, enhancer=enhancer, **map_options)
            outcomes.append(MapOutcome(input_path, target, "ok", result=result))
        except CryosamuError as exc:
            outcomes.append(MapOutcome(input_path, target, "failed", str(exc)))
    return outcomes


def _check_output_dir(output_dir: Path) -> None:
    """An existing folder, or one that can be made in an existing folder.

    Raises:
        OutputError: It is a file, or its parent folder does not exist either.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"--output-dir {output_dir} is a file, not a folder")
    if not output_dir.exists() and not output_dir.parent.is_dir():
        raise OutputError(f"output folder {output_dir} cannot be made: its parent "
                          f"{output_dir.parent} does not exist")


def split_devices(device: str) -> list[str]:
    """The devices in ``device``: one (``auto``, ``cpu``, ``cuda:N``), a comma-separated list
    (``cuda:0,cuda:1``), or ``cuda:all`` (every visible GPU).

    Raises:
        DeviceError: ``cuda:all`` without a GPU.
    """
    if device.strip().lower() == "cuda:all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError("--device cuda:all requested but CUDA is not available on this "
                              "machine")
        return [f"cuda:{i}" for i in range(count)]
    return [part.strip() for part in device.split(",") if part.strip()] or ["auto"]


def _enhance_on_devices(devices: list[str], *, input_paths: list[Path], threads: int | None,
                        **options: object) -> list[MapOutcome]:
    """One worker process per device, each enhancing every ``len(devices)``-th map with its
    own loaded model; outcomes come back in input order. Progress callbacks stay in this
    process (they cannot cross into the workers), so only whole maps are reported."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    for device in set(devices):
        resolve_device(device)  # an unknown or absent device fails before any work
    options = {key: value for key, value in options.items() if not callable(value)}
    if threads is None and all(d == "cpu" for d in devices):
        threads = max(1, (os.cpu_count() or 1) // len(devices))
    shares = [list(range(i, len(input_paths), len(devices))) for i in range(len(devices))]
    by_index: dict[int, MapOutcome] = {}
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(len(devices), mp_context=context) as pool:
        jobs = {pool.submit(enhance_many, input_paths=[input_paths[i] for i in share],
                            device=device, threads=threads, **options): share
                for device, share in zip(devices, shares) if share}
        for job, share in jobs.items():
            by_index.update(zip(share, job.result()))
    return [by_index[i] for i in range(len(input_paths))]


def expand_inputs(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Input paths with glob patterns (``'maps/*.map'``, quoted from the shell) expanded.

    Raises:
        ConfigError: A pattern matches no file.
    """
    import glob

    paths: list[Path] = []
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ConfigError(f"no file matches {pattern}")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(pattern))
    return paths
