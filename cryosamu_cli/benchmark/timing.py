"""``cryosamu benchmark time``: how long ``enhance`` takes per map and stage, its arithmetic
rate and peak memory, as :class:`TimingRecord` rows (written and plotted by
:mod:`cryosamu_cli.benchmark.report`)."""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cryosamu_cli import mapio
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.enhance import predictor
from cryosamu_cli.errors import ConfigError

STAGES = ("read", "resample", "network", "stitch", "write")


@dataclass(frozen=True)
class TimingRecord:
    """Timing of ``enhance`` on one map: medians over the repeats after warm-up."""

    name: str
    shape_zyx: tuple[int, int, int]
    voxels: int
    volume_A3: float
    device: str
    batch_size: int
    precision: str
    repeats: int
    cubes_total: int
    cubes_run: int
    cubes_skipped: int
    seconds_median: float
    seconds_min: float
    seconds_max: float
    stage_seconds: dict[str, float]
    seconds_per_cube: float
    voxels_per_s: float
    gflop_per_cube: float
    gflops_achieved: float
    peak_rss_MiB: float
    peak_gpu_MiB: float | None
    precision_reason: str = ""


def synthetic_map(edge: int, seed: int = 0) -> tuple[np.ndarray, mapio.GridInfo]:
    """A 1 Å map of ``edge``³ voxels: smooth positive density inside a centred sphere."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.standard_normal((edge,) * 3).astype(np.float32), 2.0)
    z, y, x = np.ogrid[:edge, :edge, :edge]
    c = (edge - 1) / 2
    inside = (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 < (0.4 * edge) ** 2
    grid_info = mapio.GridInfo((edge,) * 3, (1.0,) * 3, (0.0,) * 3, (0, 0, 0), (float(edge),) * 3,
                               (90.0,) * 3, (edge,) * 3, (1, 2, 3), 1)
    return np.where(inside, np.abs(volume), 0.0).astype(np.float32), grid_info


def time_enhance(*, map_paths: Sequence[str | os.PathLike] = (), sizes: Sequence[int] = (),
                 weights: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int | None = None, threads: int | None = None, repeats: int = 3,
                 warmup: int = 1, precision: str = "auto",
                 on_run: Callable[[str, int, int], None] | None = None) -> list[TimingRecord]:
    """Time ``enhance_map`` on real maps and/or synthetic ``sizes``³ maps.

    The model is loaded once; each map runs ``warmup`` untimed and ``repeats`` timed times.

    Raises:
        ConfigError: Nothing to time, or repeats below 1.
    """
    if not map_paths and not sizes:
        raise ConfigError("give map files or --sizes to time")
    if repeats < 1 or warmup < 0:
        raise ConfigError("--repeats must be at least 1 and --warmup at least 0")
    enhancer = predictor.load_enhancer(weights=weights, device=device, batch_size=batch_size,
                                     threads=threads, precision=precision)
    gflop = flops_per_cube(enhancer.model, enhancer.cube_size, enhancer.device) / 1e9
    with tempfile.TemporaryDirectory(prefix="cryosamu-bench-") as tmp:
        inputs = list(map(Path, map_paths)) + [write_synthetic_map(Path(tmp), e) for e in sizes]
        return [_time_one(path, Path(tmp), enhancer, gflop, repeats, warmup, on_run)
                for path in inputs]


def write_synthetic_map(folder: Path, edge: int) -> Path:
    """Write a synthetic ``edge``³ map (1 Å voxels) into ``folder``; returns its path."""
    data, grid_info = synthetic_map(edge)
    return mapio.write_map(folder / f"synthetic_{edge}.mrc", data, grid_info)


def _time_one(path: Path, tmp: Path, enhancer: predictor.Enhancer, gflop: float, repeats: int,
              warmup: int, on_run: Callable[[str, int, int], None] | None) -> TimingRecord:
    """Run one map ``warmup + repeats`` times and summarise the timed runs."""
    import torch

    results = []
    reset_peak_memory(enhancer.device)
    for run in range(warmup + repeats):
        if on_run is not None:
            on_run(path.name, run + 1, warmup + repeats)
        result = enhance.enhance_map(input_path=path, output_path=tmp / "timed.mrc", force=True,
                                     enhancer=enhancer)
        if run >= warmup:
            results.append(result)
    _, grid_info = mapio.read_map(path)
    seconds = [r.seconds for r in results]
    stages = {s: statistics.median(r.stage_seconds.get(s, 0.0) for r in results) for s in STAGES}
    first = results[0]
    voxels = int(np.prod(grid_info.shape_zyx))
    network = stages["network"]
    gpu = (torch.cuda.max_memory_allocated(enhancer.device) / 2 ** 20
           if enhancer.device.type == "cuda" else None)
    return TimingRecord(
        path.name, grid_info.shape_zyx, voxels, float(voxels * np.prod(grid_info.voxel_size_A)),
        str(enhancer.device), enhancer.batch_size, enhancer.precision_name, repeats, first.cubes_total,
        first.cubes_run, first.cubes_skipped, statistics.median(seconds), min(seconds),
        max(seconds), stages, network / max(first.cubes_run, 1),
        voxels / statistics.median(seconds), gflop,
        gflop * first.cubes_run / network if network > 0 else 0.0, peak_rss_MiB(), gpu,
        enhancer.precision_reason)


def flops_per_cube(model, cube_size: int, device) -> float:
    """Floating-point operations of one forward pass on one cube (torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cube = torch.zeros(1, 1, cube_size, cube_size, cube_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(cube)
    return float(counter.get_total_flops())


def reset_peak_memory(device) -> None:
    """Reset the peak-RSS mark of this process (Linux) and the CUDA peak counter."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_MiB() -> float:
    """Peak resident memory of this process since the last reset, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fit_time_vs_volume(records: Sequence[TimingRecord]) -> tuple[float, float]:
    """Least-squares line ``seconds = slope * volume_A3 + intercept`` (the paper's Fig. 5)."""
    if len(records) < 2:
        return 0.0, float(records[0].seconds_median) if records else 0.0
    slope, intercept = np.polyfit([r.volume_A3 for r in records],
                                  [r.seconds_median for r in records], 1)
    return float(slope), float(intercept)


def timing_rows(records: Sequence[TimingRecord]) -> list[dict]:
    """Flat dictionaries (stages as ``<stage>_s`` columns) for CSV and tables."""
    rows = []
    for r in records:
        row = {k: v for k, v in asdict(r).items() if k != "stage_seconds"}
        row["shape_zyx"] = "x".join(map(str, r.shape_zyx))
        row.update({f"{s}_s": round(v, 4) for s, v in r.stage_seconds.items()})
        rows.append(row)
    return rows
