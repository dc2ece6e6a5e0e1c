"""``cryosamu enhance``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from cryosamu_cli.cli.common import (DeviceOpt, ForceOpt, QuietOpt, WeightsOpt, console, epilog,
                                     user_errors)

app = typer.Typer()

EXAMPLE = """cryosamu enhance emd_24496.map -o emd_24496_enhanced.mrc

cryosamu enhance map.mrc.gz -o out.mrc --device cuda:0 --batch-size 8 --force"""


@app.command("enhance", epilog=epilog(EXAMPLE))
def enhance_cmd(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", dir_okay=False,
                                               help="Map to enhance (.mrc/.map/.ccp4, or .gz).")],
    output_path: Annotated[Path, typer.Option("--output", "-o", dir_okay=False,
                                              help="Enhanced map to write (.mrc, or .gz).")],
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Cubes per network call.", min=1)] = 2,
    cube_size: Annotated[int, typer.Option(help="Edge of the cubes the network sees.")] = 64,
    core_size: Annotated[int, typer.Option(help="Edge of the kept centre of each cube.")] = 50,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch.", min=1)] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Enhance a cryo-EM map; the output lies on exactly the input's grid and header.

    The written density is on the network's normalised scale: 0 is solvent, 1 is the 99.9th percentile of the input's positive density.
    """
    from cryosamu_cli import enhance as enhance_lib

    with user_errors(), _ProgressBars(quiet) as (on_cubes, on_download):
        result = enhance_lib.enhance_map(
            input_path=input_path, output_path=output_path, weights=weights, device=device,
            batch_size=batch_size, cube_size=cube_size, core_size=core_size, threads=threads,
            force=force, progress=on_cubes, download_progress=on_download)
    if not quiet:
        console.print(f"Enhanced in {result.seconds:.1f} s on {result.device}: "
                      f"{result.cubes_run} cubes run, {result.cubes_skipped} skipped → "
                      f"{result.output_path}")


class _ProgressBars:
    """Rich progress bars for the cubes and a weights download (nothing when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.bar = None if quiet else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if self.bar is None:
            return None, None
        return self._update("cubes"), self._update("download (bytes)")

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _update(self, name: str):
        def callback(done: int, total: int | None) -> None:
            if name not in self.tasks:
                self.bar.start()
                self.tasks[name] = self.bar.add_task(name, total=total)
            self.bar.update(self.tasks[name], completed=done, total=total)
        return callback
