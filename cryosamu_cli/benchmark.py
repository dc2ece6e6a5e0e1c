"""``cryosamu benchmark``: timing of ``enhance`` and map–model quality, as records, tables,
JSON/CSV and plots.

Quality uses the definitions of phenix.map_model_cc and phenix.mtriage (see
:mod:`cryosamu_cli.metrics`); ``backend="cctbx"`` computes them with cctbx itself.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cryosamu_cli import __version__, enhance, grid, mapio, metrics
from cryosamu_cli.atomic import write_text_atomic
from cryosamu_cli.errors import ConfigError, CryosamuError
from cryosamu_cli.pairs import Pair, read_pairs  # noqa: F401 (read_pairs is part of the API)
from cryosamu_cli.structure import read_atoms

STAGES = ("read", "resample", "network", "stitch", "write")


# ----------------------------------------------------------------------------- timing


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
    enhancer = enhance.load_enhancer(weights=weights, device=device, batch_size=batch_size,
                                     threads=threads, precision=precision)
    gflop = flops_per_cube(enhancer.model, enhancer.cube_size, enhancer.device) / 1e9
    with tempfile.TemporaryDirectory(prefix="cryosamu-bench-") as tmp:
        inputs = list(map(Path, map_paths)) + [_write_synthetic(Path(tmp), e) for e in sizes]
        return [_time_one(path, Path(tmp), enhancer, gflop, repeats, warmup, on_run)
                for path in inputs]


def _write_synthetic(folder: Path, edge: int) -> Path:
    """Write a synthetic ``edge``³ map into ``folder``."""
    data, grid_info = synthetic_map(edge)
    return mapio.write_map(folder / f"synthetic_{edge}.mrc", data, grid_info)


def _time_one(path: Path, tmp: Path, enhancer: enhance.Enhancer, gflop: float, repeats: int,
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
        gflop * first.cubes_run / network if network > 0 else 0.0, peak_rss_MiB(), gpu)


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


def plot_time_vs_volume(records: Sequence[TimingRecord], path: str | os.PathLike) -> Path:
    """Fig. 5: median time against map volume with the fitted line, as a PNG."""
    plt = _pyplot()
    volumes = np.array([r.volume_A3 for r in records]) / 1e6
    seconds = np.array([r.seconds_median for r in records])
    slope, intercept = fit_time_vs_volume(records)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.errorbar(volumes, seconds, yerr=[seconds - [r.seconds_min for r in records],
                                        [r.seconds_max for r in records] - seconds], fmt="o")
    line = np.linspace(0, volumes.max() * 1.05, 50)
    ax.plot(line, slope * 1e6 * line + intercept, "--",
            label=f"{slope * 1e9:.3g} s per 1000 nm³ + {intercept:.3g} s")
    ax.set(xlabel="map volume (10⁶ Å³)", ylabel="enhance time (s)",
           title=f"cryosamu {__version__} on {records[0].device}")
    ax.legend()
    return _save(fig, path)


def timing_rows(records: Sequence[TimingRecord]) -> list[dict]:
    """Flat dictionaries (stages as ``<stage>_s`` columns) for CSV and tables."""
    rows = []
    for r in records:
        row = {k: v for k, v in asdict(r).items() if k != "stage_seconds"}
        row["shape_zyx"] = "x".join(map(str, r.shape_zyx))
        row.update({f"{s}_s": round(v, 4) for s, v in r.stage_seconds.items()})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- quality


@dataclass
class PairQuality:
    """Scores of every map of one pair (``maps[label] = scores``) or why it was skipped."""

    name: str
    resolution_A: float | None
    maps: dict[str, dict] = field(default_factory=dict)
    skipped: str = ""


def quality_report(*, pairs: Sequence[Pair], weights: str | os.PathLike | None = None,
                   device: str = "auto", backend: str = "native", sharpen: bool = True,
                   full_band: bool = False, work_dir: str | os.PathLike | None = None,
                   on_pair: Callable[[str], None] | None = None) -> list[PairQuality]:
    """Score every pair's maps against its model: the deposited map, the deposited map
    truncated at the pair's resolution (what a plain low-pass gives), the cryosamu map as a
    user makes it (``enhance --resolution R`` with ``weights``, default: the pretrained
    model), with ``full_band`` also the network's unlimited output, a global
    B-factor-sharpened baseline and each extra map.

    Maps are enhanced and sharpened into ``work_dir`` (a temporary folder by default) and
    reused when already there. A pair that cannot be scored is kept with its reason.
    """
    if backend not in ("native", "cctbx"):
        raise ConfigError(f"unknown backend '{backend}': use native or cctbx")
    enhancer = enhance.load_enhancer(weights=weights, device=device)
    with tempfile.TemporaryDirectory(prefix="cryosamu-quality-") as tmp:
        folder = Path(work_dir) if work_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        report = []
        for pair in pairs:
            if on_pair is not None:
                on_pair(pair.name)
            report.append(_score_pair(pair, folder, enhancer, backend, sharpen, full_band))
        return report


def _score_pair(pair: Pair, folder: Path, enhancer, backend: str, sharpen: bool,
                full_band: bool = False) -> PairQuality:
    """Every map of one pair, scored; errors become the pair's ``skipped`` reason."""
    quality = PairQuality(pair.name, pair.resolution_A)
    if pair.resolution_A is None:
        quality.skipped = "no resolution given"
        return quality
    try:
        for label, path in _maps_of(pair, folder, enhancer, sharpen, full_band).items():
            quality.maps[label] = score_map(path, pair.model_path, pair.resolution_A, backend)
    except CryosamuError as exc:
        quality.skipped = str(exc)
    return quality


def _maps_of(pair: Pair, folder: Path, enhancer, sharpen: bool,
             full_band: bool = False) -> dict[str, Path]:
    """Label → map file for the deposited (as given and truncated), cryosamu, sharpened and
    extra maps."""
    maps = {"deposited": pair.map_path,
            "deposited_truncated": _truncated(pair, folder / f"{pair.name}_truncated.mrc")}
    runs = {"cryosamu": pair.resolution_A, **({"cryosamu_full_band": "none"} if full_band
                                               else {})}
    for label, resolution in runs.items():
        target = folder / f"{pair.name}_{label}.mrc"
        if not target.exists():
            enhance.enhance_map(input_path=pair.map_path, output_path=target, enhancer=enhancer,
                                resolution=resolution)
        maps[label] = target
    if sharpen:
        target = folder / f"{pair.name}_bsharpened.mrc"
        if not target.exists():
            data, grid_info = mapio.read_map(pair.map_path)
            sharpened, b = grid.bfactor_sharpen(data, grid_info.voxel_size_zyx, pair.resolution_A)
            mapio.write_map(target, sharpened, grid_info, note=f"B-factor sharpened, B={b:.0f}")
        maps["b_sharpened"] = target
    maps.update(pair.extra_maps)
    return maps


def _truncated(pair: Pair, target: Path) -> Path:
    """The deposited map with a hard truncation at the pair's resolution (written once)."""
    if not target.exists():
        data, grid_info = mapio.read_map(pair.map_path)
        truncated = grid.band_limit(data, grid_info.voxel_size_zyx, pair.resolution_A)
        mapio.write_map(target, truncated, grid_info,
                        note=f"truncated at {pair.resolution_A:g} A")
    return target


def score_map(map_path: Path, model_path: Path, resolution_A: float,
              backend: str = "native") -> dict:
    """Scores of one map against a model: ``cc_box``, ``cc_mask``, ``cc_volume``, ``cc_peaks``,
    ``fsc05``, ``fsc`` (curve) and ``rscc`` (per residue)."""
    if backend == "cctbx":
        return cctbx_scores(map_path, model_path, resolution_A)
    data, grid_info = mapio.read_map(map_path)
    return metrics.map_model_scores(data, grid_info, read_atoms(model_path),
                                    resolution_A).to_dict()


def cctbx_scores(map_path: Path, model_path: Path, resolution_A: float) -> dict:
    """The same scores computed by cctbx (``mmtbx.maps.map_model_cc`` and ``mtriage``).

    cctbx runs in a child process (:mod:`cryosamu_cli.cctbx_backend`): its boost.python
    libraries crash when loaded into a process that already holds torch.

    Raises:
        CryosamuError: cctbx is not installed, or it failed on these files.
    """
    import subprocess
    import sys

    command = [sys.executable, "-m", "cryosamu_cli.cctbx_backend", str(map_path),
               str(model_path), str(resolution_A)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise CryosamuError(f"cctbx failed on {Path(map_path).name}: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


METRICS = ("cc_box", "cc_mask", "cc_volume", "cc_peaks", "fsc05")


def quality_rows(report: Sequence[PairQuality]) -> list[dict]:
    """One flat row per pair and map: the summary metrics (no curves)."""
    rows = []
    for pair in report:
        if pair.skipped:
            rows.append({"pair": pair.name, "map": "", "resolution_A": pair.resolution_A,
                         **{m: None for m in METRICS}, "note": pair.skipped})
        for label, scores in pair.maps.items():
            rows.append({"pair": pair.name, "map": label, "resolution_A": pair.resolution_A,
                         **{m: scores[m] for m in METRICS}, "note": ""})
    return rows


def plot_quality(report: Sequence[PairQuality], folder: str | os.PathLike) -> list[Path]:
    """FSC curves per pair, per-metric box plots across pairs (Fig. 3) and per-residue RSCC
    along the chain (Fig. 2c), as PNG files in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for pair in (p for p in report if p.maps):
        written.append(_plot_fsc(pair, folder / f"{pair.name}_fsc.png"))
        written.append(_plot_rscc(pair, folder / f"{pair.name}_rscc.png"))
    if any(p.maps for p in report):
        written.append(_plot_metric_boxes(report, folder / "metrics_boxplot.png"))
    return written


def _plot_fsc(pair: PairQuality, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, scores in pair.maps.items():
        curve = scores["fsc"]
        ax.plot([c["frequency_per_A"] for c in curve], [c["fsc"] for c in curve],
                label=f"{label} (0.5 at {scores['fsc05']:.2f} Å)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="map–model FSC", title=pair.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _plot_rscc(pair: PairQuality, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    for label, scores in pair.maps.items():
        ax.plot([r["cc"] for r in scores["rscc"]], lw=0.8, label=label)
    ax.set(xlabel="residue (model order)", ylabel="RSCC", title=pair.name, ylim=(-0.2, 1.0))
    ax.legend(fontsize=7)
    fig.tight_layout()  # keeps the x label inside the short figure
    return _save(fig, path)


MIN_BOX_POINTS = 5


def _plot_metric_boxes(report: Sequence[PairQuality], path: Path) -> Path:
    """Per metric, every pair's value per map kind as a point (a box behind them from
    :data:`MIN_BOX_POINTS` pairs on; a box of three points says nothing a point does not)."""
    plt = _pyplot()
    labels = sorted({label for p in report for label in p.maps})
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.5))
    for ax, metric in zip(axes, METRICS[:4]):
        values = [[p.maps[label][metric] for p in report if label in p.maps] for label in labels]
        if min(len(v) for v in values) >= MIN_BOX_POINTS:
            ax.boxplot(values)
        for position, points in enumerate(values, start=1):
            ax.plot([position] * len(points), points, "o", ms=4, alpha=0.7)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, fontsize=7)
        ax.set_title(metric)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------ output


def write_json(path: str | os.PathLike, payload: object) -> Path:
    """Write ``payload`` as JSON, atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=1, default=_jsonable) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Write dictionaries as CSV (columns from the first row), atomically."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def _jsonable(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _pyplot():
    """matplotlib's pyplot with a file-only backend, or a clear error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CryosamuError("plots need matplotlib: pip install 'cryosamu[plots]'") from exc
    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically and close it."""
    from cryosamu_cli.atomic import atomic_target

    plt = _pyplot()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
