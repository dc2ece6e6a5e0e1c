"""``cryosamu benchmark time | quality``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryosamu_cli.cli.common import (BatchSizeOpt, DeviceOpt, WeightsOpt, console, epilog,
                                     print_table, user_errors)

app = typer.Typer(help="Timing reports and map–model quality (Phenix definitions).",
                  no_args_is_help=True)

JsonOpt = Annotated[Optional[Path], typer.Option("--json", dir_okay=False,
                                                 help="Write the full report as JSON.")]
CsvOpt = Annotated[Optional[Path], typer.Option("--csv", dir_okay=False,
                                                help="Write the summary table as CSV.")]


@app.command("time", epilog=epilog("cryosamu benchmark time --sizes 128,256 --json t.json "
                                   "--plot fig5.png\n\ncryosamu benchmark time emd_1234.map "
                                   "--device cuda:0 --batch-size 8"))
def time_cmd(
    maps: Annotated[Optional[list[Path]], typer.Argument(help="Maps to time.")] = None,
    sizes: Annotated[str, typer.Option(help="Synthetic 1 Å maps of these edges, e.g. "
                                            "128,256,384.")] = "",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch.", min=1)] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    repeats: Annotated[int, typer.Option(help="Timed runs per map.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed runs before them.")] = 1,
    json_path: JsonOpt = None,
    csv_path: CsvOpt = None,
    plot: Annotated[Optional[Path], typer.Option(dir_okay=False, help="Time against map "
                                                 "volume with a fitted line (PNG).")] = None,
) -> None:
    """Time `cryosamu enhance`: stages, cubes, s/cube, voxels/s, GFLOP/s, peak memory."""
    from cryosamu_cli.benchmark import report as benchmark_report
    from cryosamu_cli.benchmark import timing as benchmark_timing
    from cryosamu_cli.errors import ConfigError

    with user_errors():
        if plot is not None:
            benchmark_report.pyplot()  # a missing matplotlib fails now, not after the timing
        try:
            edges = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError as exc:
            raise ConfigError(f"--sizes takes whole numbers separated by commas: {sizes}") from exc
        records = benchmark_timing.time_enhance(
            map_paths=maps or [], sizes=edges, weights=weights, device=device,
            batch_size=batch_size, threads=threads, repeats=repeats, warmup=warmup,
            precision=precision,
            on_run=lambda name, i, n: console.print(f"{name}: run {i}/{n}"))
        rows = benchmark_timing.timing_rows(records)
        benchmark_report.write_outputs(payload={"records": records}, rows=rows,
                                       json_path=json_path, csv_path=csv_path)
        if plot is not None:
            benchmark_report.plot_time_vs_volume(records, plot)
    _table(rows, ["name", "shape_zyx", "device", "cubes_run", "cubes_skipped", "seconds_median",
                  "seconds_min", "seconds_max", "seconds_per_cube", "voxels_per_s",
                  "gflops_achieved", "peak_rss_MiB", "read_s", "resample_s", "network_s",
                  "stitch_s", "write_s"])


@app.command("quality", epilog=epilog("cryosamu benchmark quality pairs.csv --role eval "
                                      "--json q.json --plots plots/\n\ncryosamu benchmark "
                                      "quality pairs.csv --weights my.pt --backend cctbx\n\n"
                                      "cryosamu benchmark quality emd_1461.mrc vp6.pdb "
                                      "--resolution 3.8"))
def quality_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        metavar="PAIRS_CSV | MAP MODEL", help="A CSV with map, model, resolution columns (and "
        "<label>_map columns to compare), or one map and its model with --resolution.")],
    resolution: Annotated[Optional[float], typer.Option(
        "--resolution", help="With MAP MODEL: the map's resolution in Å (phenix.map_model_cc's "
        "resolution=).")] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    role: Annotated[Optional[str], typer.Option(help="Only rows whose role/split is this.")] = None,
    backend: Annotated[str, typer.Option(help="native, or cctbx (needs cctbx-base).")] = "native",
    sharpen: Annotated[bool, typer.Option(help="Score a global B-factor-sharpened baseline.")] = True,
    full_band: Annotated[bool, typer.Option(
        "--full-band", help="Also score the network's output without the band limit "
        "(enhance --resolution none).")] = False,
    bare: Annotated[bool, typer.Option(
        "--bare", help="Also score the bare command's map (enhance without --resolution: "
        "the resolution it finds from an EMDB header beside the map, or estimates).")] = False,
    work_dir: Annotated[Optional[Path], typer.Option(file_okay=False, help="Keep enhanced and "
                                                     "sharpened maps here; a rerun reuses one "
                                                     "only when made from the same input, "
                                                     "resolution, weights and precision.")
                        ] = None,
    json_path: JsonOpt = None,
    csv_path: CsvOpt = None,
    plots: Annotated[Optional[Path], typer.Option(file_okay=False, help="Folder for FSC, "
                                                  "box and RSCC plots.")] = None,
) -> None:
    """Score maps against models: CC_box, CC_mask, CC_volume, CC_peaks, FSC=0.5, RSCC."""
    from cryosamu_cli.benchmark import quality as benchmark_quality
    from cryosamu_cli.benchmark import report as benchmark_report
    from cryosamu_cli.data.pairs import pairs_to_score

    with user_errors():
        if plots is not None:
            benchmark_report.pyplot()  # a missing matplotlib fails now, not after the scoring
        pairs = pairs_to_score(inputs, resolution_A=resolution, role=role)
        with _PairBar(len(pairs)) as bar:
            report = benchmark_quality.quality_report(
                pairs=pairs, weights=weights, device=device, backend=backend, sharpen=sharpen,
                full_band=full_band, bare=bare, work_dir=work_dir, on_pair=bar.scoring)
        rows = benchmark_quality.quality_rows(report)
        benchmark_report.write_outputs(payload={"backend": backend, "pairs": report},
                                       rows=rows, json_path=json_path, csv_path=csv_path)
        if plots is not None:
            benchmark_report.plot_quality(report, plots)
    _table(rows, ["pair", "map", "resolution_A", *benchmark_quality.METRICS, "note"])


def _table(rows: list[dict], columns: list[str]) -> None:
    print_table(columns, ([("" if row.get(c) is None else
                            f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row[c]))
                           for c in columns] for row in rows))


class _PairBar:
    """A progress bar over the pairs on stderr, with the time left (scoring takes minutes)."""

    def __init__(self, count: int) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=console)
        self.task = self.bar.add_task("pairs", total=count)
        self.started = False

    def __enter__(self) -> "_PairBar":
        self.bar.start()
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is None:
            total = self.bar.tasks[0].total
            self.bar.update(self.task, completed=total, description="scored")
        self.bar.stop()

    def scoring(self, name: str) -> None:
        """The pair now scored (the one before it is done)."""
        self.bar.update(self.task, advance=1 if self.started else 0,
                        description=f"scoring {name}")
        self.started = True
