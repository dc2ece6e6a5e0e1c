"""The benchmark's outputs: JSON and CSV files and PNG plots (time against volume, FSC curves,
per-residue RSCC, per-metric points across pairs), each written atomically."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryosamu_cli import __version__
from cryosamu_cli.atomic import write_text_atomic
from cryosamu_cli.benchmark.quality import METRICS, PairQuality
from cryosamu_cli.benchmark.timing import TimingRecord, fit_time_vs_volume
from cryosamu_cli.errors import CryosamuError

def plot_time_vs_volume(records: Sequence[TimingRecord], path: str | os.PathLike) -> Path:
    """Fig. 5: median time against map volume with the fitted line, as a PNG."""
    return _save(time_figure(records), path)


def time_figure(records: Sequence[TimingRecord]):
    """The figure of :func:`plot_time_vs_volume`."""
    plt = pyplot()
    volumes = np.array([r.volume_A3 for r in records]) / 1e6
    seconds = np.array([r.seconds_median for r in records])
    slope, intercept = fit_time_vs_volume(records)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.errorbar(volumes, seconds, yerr=[seconds - [r.seconds_min for r in records],
                                        [r.seconds_max for r in records] - seconds], fmt="o")
    line = np.linspace(0, volumes.max() * 1.05, 50)
    ax.plot(line, slope * 1e6 * line + intercept, "--",  # slope: s per Å³
            label=f"{slope * 1e6:.3g} s per 10⁶ Å³ + {intercept:.3g} s")
    ax.set(xlabel="map volume (10⁶ Å³)", ylabel="enhance time (s)",
           title=f"cryosamu {__version__} on {records[0].device}")
    ax.legend()
    fig.tight_layout()  # keeps the x label inside the figure
    return fig


def plot_quality(report: Sequence[PairQuality], folder: str | os.PathLike) -> list[Path]:
    """FSC curves per pair, per-metric box plots across pairs (Fig. 3) and per-residue RSCC
    along the chain (Fig. 2c), as PNG files in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    colours = map_colours(report)
    written = []
    for pair in (p for p in report if p.maps):
        written.append(_plot_fsc(pair, folder / f"{pair.name}_fsc.png", colours))
        written.append(_plot_rscc(pair, folder / f"{pair.name}_rscc.png", colours))
    if any(p.maps for p in report):
        written.append(_plot_metric_boxes(report, folder / "metrics_boxplot.png", colours))
    return written


def map_colours(report: Sequence[PairQuality]) -> dict[str, str]:
    """One colour per kind of map, the same in every plot of a report (matplotlib's cycle,
    in the order of the sorted labels)."""
    labels = sorted({label for p in report for label in p.maps})
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _plot_fsc(pair: PairQuality, path: Path, colours: dict[str, str]) -> Path:
    return _save(fsc_figure(pair, colours), path)


def fsc_figure(pair: PairQuality, colours: dict[str, str]):
    """One pair's map–model FSC curves, up to the deposited map's Nyquist frequency."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    nyquist = pair.nyquist_per_A or float("inf")
    for label, scores in pair.maps.items():
        curve = [c for c in scores["fsc"] if c["frequency_per_A"] <= nyquist * (1 + 1e-6)]
        ax.plot([c["frequency_per_A"] for c in curve], [c["fsc"] for c in curve],
                color=colours[label], label=f"{label} (0.5 at {scores['fsc05']:.2f} Å)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="map–model FSC", title=pair.name)
    if pair.nyquist_per_A:
        ax.set_xlim(0.0, pair.nyquist_per_A)  # nothing beyond what the voxels hold
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_rscc(pair: PairQuality, path: Path, colours: dict[str, str]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    for label, scores in pair.maps.items():
        ax.plot([r["cc"] for r in scores["rscc"]], lw=0.8, color=colours[label], label=label)
    ax.set(xlabel="residue (model order)", ylabel="RSCC", title=pair.name, ylim=(-0.2, 1.0))
    ax.legend(fontsize=7)
    fig.tight_layout()  # keeps the x label inside the short figure
    return _save(fig, path)


MIN_BOX_POINTS = 5


def _plot_metric_boxes(report: Sequence[PairQuality], path: Path,
                       colours: dict[str, str]) -> Path:
    """Per metric, every pair's value per map kind as a point (a box behind them from
    :data:`MIN_BOX_POINTS` pairs on; a box of three points says nothing a point does not)."""
    plt = pyplot()
    labels = sorted({label for p in report for label in p.maps})
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.5))
    for ax, metric in zip(axes, METRICS[:4]):
        values = [[p.maps[label][metric] for p in report if label in p.maps] for label in labels]
        if min(len(v) for v in values) >= MIN_BOX_POINTS:
            ax.boxplot(values)
        for position, points in enumerate(values, start=1):
            ax.plot([position] * len(points), points, "o", ms=4, alpha=0.7,
                    color=colours[labels[position - 1]])
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, fontsize=7)
        ax.set_title(metric)
    fig.tight_layout()
    return _save(fig, path)


def write_outputs(*, payload: dict, rows: Sequence[dict], json_path: str | os.PathLike | None,
                  csv_path: str | os.PathLike | None) -> None:
    """The JSON (``payload`` with the version, dataclass records as dictionaries) and the CSV
    (``rows``) that were asked for."""
    from dataclasses import asdict, is_dataclass

    if json_path is not None:
        records = {k: [asdict(x) if is_dataclass(x) else x for x in v] if isinstance(v, list)
                   else v for k, v in payload.items()}
        write_json(json_path, {"version": __version__, **records})
    if csv_path is not None:
        write_csv(csv_path, rows)


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


def pyplot():
    """matplotlib's pyplot with a file-only backend, or a clear error (called before the
    work by commands asked for plots, so that a missing matplotlib fails in seconds)."""
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

    plt = pyplot()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
