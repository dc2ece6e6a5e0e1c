"""``enhance_map``: the one-map inference pipeline, as a list of named steps (the network on its
device is :mod:`cryosamu_cli.enhance.predictor`; many maps and devices, :mod:`cryosamu_cli.enhance.batch`).

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
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cryosamu_cli import grid as grid_ops
from cryosamu_cli import mapio, metrics
from cryosamu_cli.enhance import band, memory
from cryosamu_cli.enhance.band import BAND_EDGE, BAND_LIMITS
from cryosamu_cli.enhance import tiling
from cryosamu_cli.enhance import resolution as resolution_ops
from cryosamu_cli.atomic import write_text_atomic
from cryosamu_cli.errors import ConfigError, CryosamuError
from cryosamu_cli.enhance.tiling import CORE_SIZE, CUBE_SIZE, DEFAULT_SKIP_THRESHOLD
from cryosamu_cli.weights import DownloadProgress

if TYPE_CHECKING:  # torch is imported only once the input has passed its checks
    from cryosamu_cli.enhance.predictor import Enhancer

MASK_MODES = ("enhance-inside", "keep-inside")
MASK_EDGE_VOXELS = 3.0
DENSITY_SCALES = ("input", "normalised")


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
    precision_reason: str = ""


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


def enhance_map(*, input_path: str | os.PathLike, output_path: str | os.PathLike,
                weights: str | os.PathLike | None = None, device: str = "auto",
                batch_size: int | None = None, cube_size: int = CUBE_SIZE, core_size: int = CORE_SIZE,
                threads: int | None = None, force: bool = False,
                half2_path: str | os.PathLike | None = None,
                mask_path: str | os.PathLike | None = None, mask_mode: str = "keep-inside",
                strength: float = 1.0, confidence: int = 0,
                skip_threshold: float = DEFAULT_SKIP_THRESHOLD, precision: str = "auto",
                tta: int = 1, band_limit: str = BAND_LIMITS[0], write_locres: bool = False,
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
        precision: ``auto`` (bf16 on CUDA, fp16 where it has no bf16; on a CPU bf16 where it
            computes bf16 natively, else fp32), ``fp32``, ``bf16`` or ``fp16``
            (:func:`cryosamu_cli.device.resolve_precision`).
        tta: Test-time augmentation: the mean over this many axis flips of each cube (1–8;
            :data:`cryosamu_cli.enhance.predictor.TTA_FLIPS`).
        band_limit: ``local``: each region limited at its own resolution (local FSC of the
            half maps, or the local signal over the solvent's noise, followed half-way from
            the map's resolution; :mod:`cryosamu_cli.enhance.local_resolution`), or
            ``global``: one band limit at the map's resolution.
        write_locres: Also write the local resolution to ``<output>_locres.mrc``.
        resolution: The map's resolution in Å (the output is limited to it), ``none`` (the
            network's full band), a CSV of path,resolution, or None: the half-map FSC = 0.143
            resolution with ``half2_path``, else an EMDB header beside the map, else an
            estimate from the map (:mod:`cryosamu_cli.enhance.resolution`).
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
    check_map_options(strength=strength, mask_mode=mask_mode, density_scale=density_scale,
                      band_limit=band_limit)
    request = resolution_ops.parse_resolution(resolution)
    outputs = _planned_outputs(Path(output_path), half2_path is not None, confidence > 0, force,
                               write_locres)
    wants_local = band_limit == "local" or write_locres
    data, grid, fsc_curve, halves = _read_input(input_path, half2_path, wants_local)
    memory.check_enhance_fits(grid.shape_zyx, grid.voxel_size_zyx,
                              local_band=band_limit == "local")
    half_map_resolution = fsc_curve.resolution_at(metrics.FSC_THRESHOLD) if fsc_curve else None
    limit = resolution_ops.choose_resolution(request, input_path, half_map_resolution,
                                             grid.voxel_size_zyx, data)
    local_A = band.local_resolution_of(data, grid, limit, halves) if wants_local else None
    limit = band.with_band(limit, band_limit, local_A)
    del halves
    mask = _read_mask(mask_path, grid)
    clock.lap("read")
    from cryosamu_cli.enhance.predictor import load_enhancer

    enhancer = enhancer or load_enhancer(
        weights=weights, device=device, batch_size=batch_size, cube_size=cube_size,
        core_size=core_size, threads=threads, confidence=confidence,
        skip_threshold=skip_threshold, precision=precision, tta=tta,
        download_progress=download_progress)
    clock.lap("load")
    normalised_1A, norm = _normalised_on_1A(data, grid)
    run_mask = _run_mask(mask, mask_mode, grid)
    clock.lap("resample")
    enhanced_1A, std_1A, stats = enhancer.run(normalised_1A, run_mask=run_mask,
                                              progress=progress, on_estimate=on_estimate)
    del normalised_1A  # the 1 Å arrays that are done with go before the next ones are made
    clock.lap("tiles")
    enhanced_1A = band.limited(enhanced_1A, limit, band_edge, local_A, grid)
    enhanced = _back_to_grid(enhanced_1A, grid)
    enhanced, reference = _on_density_scale(enhanced, data, norm, density_scale)
    enhanced = _blend_with_input(enhanced, reference, strength, mask, mask_mode)
    clock.lap("resample")
    scale_note = ("input units" if density_scale == "input"
                  else f"1 = {norm.scale:.4g} input units")
    note = f"enhanced, {scale_note}, {limit.label()}, {enhancer.precision_name}"
    mapio.write_map(outputs["map"], enhanced, grid, force=force, note=note)
    extra = _write_extras(outputs, grid, std_1A, fsc_curve, limit, force, local_A)
    clock.lap("write")
    stages = _split_tiles(clock.seconds, stats)
    return EnhanceResult(outputs["map"], enhancer.weights_path, str(enhancer.device),
                         time.perf_counter() - started, stats.cubes_total, stats.cubes_run,
                         stats.cubes_skipped, norm.scale, extra, half_map_resolution, stages,
                         limit, enhancer.precision_name, density_scale,
                         enhancer.precision_reason)


def _normalised_on_1A(data: np.ndarray,
                      grid: mapio.GridInfo) -> tuple[np.ndarray, grid_ops.Normalisation]:
    """The map resampled to the network's 1 Å grid and normalised (§3.2), and the scale used;
    the unnormalised 1 Å copy lives only in here."""
    on_1A = grid_ops.resample_to_spacing(data, grid.voxel_size_zyx)
    norm = grid_ops.normalisation_of(on_1A)
    return grid_ops.normalise(on_1A, norm), norm


def _split_tiles(seconds: dict[str, float], stats: tiling.TilingStats) -> dict[str, float]:
    """Replace the ``tiles`` stage by its network and stitch parts."""
    stages = {k: v for k, v in seconds.items() if k != "tiles"}
    stages["network"] = stats.network_seconds
    stages["stitch"] = seconds.get("tiles", 0.0) - stats.network_seconds
    return stages


def check_map_options(*, strength: float = 1.0, mask_mode: str = "keep-inside",
                      density_scale: str = DENSITY_SCALES[0], band_limit: str = BAND_LIMITS[0],
                      **_unused: object) -> None:
    """Refuse out-of-range strength, unknown mask modes (with or without a mask), unknown
    density scales and unknown band limits, before any work.

    Raises:
        ConfigError: Names the option and what it takes.
    """
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"--strength must be between 0 and 1, got {strength}")
    if mask_mode not in MASK_MODES:
        raise ConfigError(f"unknown mask mode '{mask_mode}': use {' or '.join(MASK_MODES)}")
    _check_density_scale(density_scale)
    if band_limit not in BAND_LIMITS:
        raise ConfigError(f"unknown band limit '{band_limit}': use {' or '.join(BAND_LIMITS)}")


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
                     force: bool, with_locres: bool = False) -> dict[str, Path]:
    """Every file this run will write, each checked before any work is done."""
    outputs = {"map": output_path}
    if with_locres:
        outputs["locres"] = companion_path(output_path, "locres")
    if with_std:
        outputs["std"] = companion_path(output_path, "std")
    if with_fsc:
        outputs["fsc"] = companion_path(output_path, "fsc")
    for path in outputs.values():
        mapio.check_output_path(path, force=force)
    return outputs


def _read_input(input_path: str | os.PathLike, half2_path: str | os.PathLike | None,
                keep_halves: bool = False,
                ) -> tuple[np.ndarray, mapio.GridInfo, metrics.FSCCurve | None,
                           tuple[np.ndarray, np.ndarray] | None]:
    """The map to enhance: the input, or the average of two half maps with their FSC (and,
    with ``keep_halves``, the halves themselves, for the local resolution)."""
    data, grid = mapio.read_map(input_path)
    if half2_path is None:
        return data, grid, None, None
    half2, grid2 = mapio.read_map(half2_path)
    mapio.check_same_grid(grid, grid2, f"half map {half2_path}")
    curve = metrics.fsc(data, half2, grid.voxel_size_zyx)
    return (data + half2) / 2, grid, curve, (data, half2) if keep_halves else None


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
                  fsc_curve: metrics.FSCCurve | None, limit: resolution_ops.ResolutionChoice,
                  force: bool, local_A: np.ndarray | None = None) -> tuple[Path, ...]:
    """Write the standard-deviation map, the FSC JSON and the local resolution map when they
    were asked for."""
    written = []
    if "locres" in outputs:
        local = local_A if local_A is not None else np.zeros(grid.shape_zyx, np.float32)
        written.append(mapio.write_map(outputs["locres"], local, grid, force=force,
                                       note="local resolution (A; 0: none)"))
    if std_1A is not None:
        std = np.maximum(_back_to_grid(std_1A, grid), 0.0)
        written.append(mapio.write_map(outputs["std"], std, grid, force=force,
                                       note="MC-dropout standard deviation"))
    if fsc_curve is not None:
        report = {**fsc_curve.to_dict(metrics.FSC_THRESHOLD),
                  "output_limited_to": limit.to_dict()}
        text = json.dumps(report, indent=1)
        written.append(write_text_atomic(outputs["fsc"], text + "\n"))
    return tuple(written)
