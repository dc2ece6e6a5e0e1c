"""``cryosamu enhance``: one map with ``-o``, or many with ``--output-dir``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from cryosamu_cli.cli.common import (BatchSizeOpt, ForceOpt, QuietOpt, WeightsOpt, console,
                                     epilog, print_table, results, user_errors)
from cryosamu_cli.enhance.tiling import CORE_SIZE, CUBE_SIZE

app = typer.Typer()

EXAMPLE = """cryosamu enhance emd_24496.map -o emd_24496_enhanced.mrc --resolution 4.0

cryosamu enhance EMD-1997          # fetched from EMDB; writes emd_1997_enhanced.mrc

cryosamu enhance maps/*.map --output-dir enhanced/ --resolution resolutions.csv

cryosamu enhance maps/*.map --output-dir enhanced/ --skip-existing

cryosamu enhance maps/*.map --output-dir enhanced/ --device cuda:all    # one process per GPU

cryosamu enhance half1.mrc --half2 half2.mrc -o avg_enhanced.mrc --confidence 8

cryosamu enhance map.mrc -o out.mrc --mask ligand_mask.mrc --mask-mode keep-inside --strength 0.7"""


@app.command("enhance", epilog=epilog(EXAMPLE))
def enhance_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        metavar="INPUT...", help="Maps to enhance (.mrc/.map/.ccp4, or .gz; globs allowed), or "
        "EMDB IDs (EMD-1997): fetched with their header, whose resolution is used.")],
    output_path: Annotated[Optional[Path], typer.Option(
        "--output", "-o", dir_okay=False, help="Enhanced map to write (one INPUT; default "
        "<name>_enhanced.mrc beside it, or here for an EMDB ID).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(
        "--output-dir", file_okay=False, help="Folder for <name>_enhanced.mrc (any number of "
        "INPUTs).")] = None,
    weights: WeightsOpt = None,
    device: Annotated[str, typer.Option(
        "--device", help="Where the network runs: auto, cpu or cuda:N; with --output-dir "
        "also several (cuda:0,cuda:1 or cuda:all): one process per device.")] = "auto",
    batch_size: BatchSizeOpt = "auto",
    cube_size: Annotated[int, typer.Option(help="Edge of the cubes the network sees.")] = CUBE_SIZE,
    core_size: Annotated[int, typer.Option(help="Edge of the kept centre of each cube.")] = CORE_SIZE,
    threads: Annotated[Optional[int], typer.Option(
        metavar="N≥1", help="CPU threads for torch (default: every core).")] = None,
    half2: Annotated[Optional[Path], typer.Option(
        "--half2", dir_okay=False, help="Second half map (INPUT is the first): enhance their "
        "average and write their FSC to <output>_fsc.json.")] = None,
    mask: Annotated[Optional[Path], typer.Option(
        "--mask", dir_okay=False, help="Mask on the map's grid (soft edge added).")] = None,
    mask_mode: Annotated[str, typer.Option(
        help="enhance-inside: enhance only within the mask; keep-inside: keep the input "
        "density within it (ligands, lipids, RNA).")] = "keep-inside",
    strength: Annotated[float, typer.Option(
        metavar="0..1", help="1 = fully enhanced, 0 = the input (on the output's density "
        "scale); in between, a blend.")] = 1.0,
    density_scale: Annotated[str, typer.Option(
        "--density-scale", metavar="input|normalised", help="input: the output in the input's "
        "units, its 99.9th percentile of positive density matched to the input's (contour "
        "levels carry over); normalised: the network's scale (0 solvent, 1 the input's 99.9th "
        "percentile).")] = "input",
    confidence: Annotated[int, typer.Option(
        metavar="0|N≥2", help="Monte-Carlo dropout passes (≥ 2): output their mean and write "
        "the per-voxel standard deviation to <output>_std.mrc.")] = 0,
    resolution: Annotated[Optional[str], typer.Option(
        "--resolution", metavar="R|none|CSV", help="The map's resolution in Å: the output is "
        "limited to it. none: the network's full band. A CSV of path,resolution rows: one "
        "value per map. Default: the half-map FSC=0.143 resolution with --half2, else an EMDB "
        "header XML beside the map, else an estimate from the map.")] = None,
    precision: Annotated[str, typer.Option(
        help="auto (bf16 on CUDA, fp16 where it lacks bf16; on a CPU bf16 where it computes "
        "bf16 natively, avx512_bf16 or AMX, else fp32), fp32, bf16 or fp16.")] = "auto",
    half_maps: Annotated[bool, typer.Option(
        "--half-maps", help="With an EMDB ID: also fetch the entry's half maps and enhance "
        "their average (their FSC gives the resolution, their local FSC the local "
        "resolution).")] = False,
    band_limit: Annotated[str, typer.Option(
        "--band-limit", metavar="local|global", help="local: each region limited at its own "
        "resolution (the half maps' local FSC, or the map's local signal over its solvent "
        "noise), followed half-way from the map's resolution; global: one band limit at the "
        "map's resolution.")] = "local",
    write_locres: Annotated[bool, typer.Option(
        "--write-locres", help="Also write the local resolution (Å per voxel) to "
        "<output>_locres.mrc.")] = False,
    tta: Annotated[int, typer.Option(
        "--tta", min=1, max=8, help="Test-time augmentation: average the network over this "
        "many axis flips of each cube (1 = none; N times the network's time).")] = 1,
    skip_existing: Annotated[bool, typer.Option(
        "--skip-existing", help="With --output-dir: leave maps whose output exists.")] = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Enhance cryo-EM maps; each output lies on exactly its input's grid and header.

    The written density is in the input's units (its 99.9th percentile of positive density matched to the input's) unless --density-scale normalised.
    """
    from cryosamu_cli.enhance import batch
    from cryosamu_cli.enhance import pipeline as enhance_lib
    from cryosamu_cli.errors import ConfigError

    map_options = dict(half2_path=half2, mask_path=mask, mask_mode=mask_mode, strength=strength,
                       resolution=resolution, density_scale=density_scale,
                       band_limit=band_limit, write_locres=write_locres)
    model_options = dict(weights=weights, device=device, batch_size=batch_size,
                         cube_size=cube_size, core_size=core_size, threads=threads,
                         confidence=confidence, precision=precision, tta=tta)
    with user_errors(), _ProgressBars(quiet) as bars:
        paths = batch.expand_inputs(inputs, **bars.callbacks(download=True, maps=False))
        if output_path is not None and output_dir is not None:
            raise ConfigError("give either -o OUTPUT (one map) or --output-dir DIR, not both")
        if output_path is None and output_dir is None:
            if len(paths) != 1:
                raise ConfigError(f"{len(paths)} maps need --output-dir DIR")
            output_path = batch.default_output_path(inputs[0], paths[0])
        if half_maps:
            if len(paths) != 1 or half2 is not None:
                raise ConfigError("--half-maps takes one EMDB entry (and no --half2)")
            from cryosamu_cli.enhance.emdb_header import fetch_half_maps
            from cryosamu_cli.weights import cache_dir

            paths[0], half2 = fetch_half_maps(paths[0], cache_dir(),
                                              bars.callbacks(download=True).get(
                                                  "download_progress"))
            map_options["half2_path"] = half2
        if output_path is not None and len(paths) != 1:
            raise ConfigError(f"-o takes one INPUT but {len(paths)} were given; use --output-dir")
        several_devices = "," in device or device.strip().lower() == "cuda:all"
        if output_path is not None and several_devices:
            raise ConfigError("several devices share out many maps: use --output-dir")
        if half2 is not None and len(paths) != 1:
            raise ConfigError("--half2 pairs with exactly one INPUT (half map 1)")
        if output_path is not None:
            result = enhance_lib.enhance_map(
                input_path=paths[0], output_path=output_path, force=force, **model_options,
                **map_options, **bars.callbacks(download=True))
        else:
            outcomes = batch.enhance_many(
                input_paths=paths, output_dir=output_dir, skip_existing=skip_existing,
                force=force, on_map_start=bars.new_map, **model_options, **map_options,
                **bars.callbacks(download=False))
    if output_path is not None:
        if not quiet:
            _print_summary(result)
        return
    failed = [o for o in outcomes if o.status == "failed"]
    if not quiet:
        _print_table(outcomes)
    for outcome in failed if quiet else []:
        console.print(f"Error: {outcome.input_path}: {outcome.message}", soft_wrap=True)
    if failed:
        raise typer.Exit(code=1)


def _print_summary(result) -> None:
    extra = "".join(f", {p}" for p in result.extra_outputs)
    half = (f"; half-map FSC=0.143 at {result.half_map_resolution_A:.2f} Å"
            if result.half_map_resolution_A else "")
    results.print(f"Enhanced in {result.seconds:.1f} s on {result.device} "
                  f"({result.precision_reason or result.precision}): "
                  f"{result.cubes_run} "
                  f"cubes run, {result.cubes_skipped} skipped → {result.output_path}{extra}{half}")
    results.print(f"Output {result.resolution.summary()}")
    if result.resolution.warning:
        console.print(f"Warning: {result.resolution.warning}", soft_wrap=True)


def _print_table(outcomes) -> None:
    print_table(["map", "status", "cubes run", "cubes skipped", "seconds", "resolution",
                 "output / reason"],
                ([str(o.input_path), o.status, str(o.result.cubes_run) if o.result else "",
                  str(o.result.cubes_skipped) if o.result else "",
                  f"{o.result.seconds:.1f}" if o.result else "",
                  o.result.resolution.label() if o.result else "",
                  str(o.output_path) if o.status == "ok" else o.message] for o in outcomes))
    count = {status: sum(o.status == status for o in outcomes) for status in ("ok", "skipped",
                                                                               "failed")}
    results.print(f"{len(outcomes)} maps: {count['ok']} enhanced, {count['skipped']} skipped "
                  f"(output exists), {count['failed']} failed")
    from cryosamu_cli.enhance.resolution import NOT_ESTIMABLE

    unknown = [o for o in outcomes if o.result
               and o.result.resolution.source in (NOT_ESTIMABLE, "not given")]
    if unknown:
        results.print(f"{len(unknown)} map(s) written with the output "
                      f"{unknown[0].result.resolution.summary()}")
    for o in outcomes:
        if o.result and o.result.resolution.warning:
            console.print(f"Warning: {o.input_path.name}: {o.result.resolution.warning}",
                          soft_wrap=True)


class _ProgressBars:
    """Rich progress: one bar for the cubes of the current map, one for a weights download."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=console)
        self.cube_task: int | None = None
        self.download_task: int | None = None
        self.label = "cubes"

    def __enter__(self) -> "_ProgressBars":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar.live.is_started:  # stopping a bar never shown would print an empty line
            self.bar.stop()

    def callbacks(self, download: bool, maps: bool = True) -> dict:
        """Keyword arguments for the library's progress hooks (none when quiet): the cube
        bar and estimate (``maps``) and the download bar (``download``)."""
        if self.quiet:
            return {}
        hooks = {"progress": self.cubes, "on_estimate": self.estimate} if maps else {}
        return {**hooks, "download_progress": self.download} if download else hooks

    def new_map(self, path: Path, index: int, count: int) -> None:
        """Label the cube bar with the map now running."""
        self.label = f"[{index + 1}/{count}] {path.name}"
        if not self.quiet:
            console.print(f"{self.label}")

    def cubes(self, done: int, total: int) -> None:
        self.bar.start()
        if self.cube_task is None:
            self.cube_task = self.bar.add_task(self.label, total=total)
        if done == 0:
            self.bar.reset(self.cube_task, total=total, description=self.label)
        self.bar.update(self.cube_task, completed=done)

    def estimate(self, cubes_to_run: int, seconds_per_cube: float) -> None:
        minutes = cubes_to_run * seconds_per_cube / 60
        cubes = f"{cubes_to_run} cube" + ("" if cubes_to_run == 1 else "s")
        duration = f"{minutes:.1f} min" if minutes >= 0.1 else f"{minutes * 60:.0f} s"
        console.print(f"{cubes} to run; about {duration} "
                      f"({seconds_per_cube:.2f} s for the first cube)")

    def download(self, done: int, total: int | None) -> None:
        self.bar.start()
        if self.download_task is None:
            self.download_task = self.bar.add_task("download (bytes)", total=total)
        self.bar.update(self.download_task, completed=done, total=total)
