"""Pieces shared by the commands: option aliases, consoles, error reporting."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from cryosamu_cli.errors import CryosamuError

# markup=False: user text (paths like map[old].mrc, hints like pip install 'cryosamu[plots]')
# is printed as it is, never read as rich markup
# Progress, warnings and errors go to stderr (console); what a command reports (tables,
# summaries) to stdout (results), so `cryosamu benchmark quality ... > results.txt` holds them.
console = Console(stderr=True, highlight=False, markup=False)
results = Console(highlight=False, markup=False)

WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="Checkpoint file, or the name of a pretrained model ('cryosamu weights "
    "list'), to use instead of the default model.", dir_okay=False)]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="Where the network runs: auto, cpu or cuda:N.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]


def parse_batch_size(text: str) -> int | None:
    """``auto`` → None (the library picks from the device); else a whole number (its range is
    the library's check: a value below 1 is a one-line error with exit code 1)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not auto or a whole number") from None


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Rows on stdout: a table where it fits the width; else one block per row, its first cell
    and then ``header: value`` lines (at 80 columns or in a pipe, a table of many columns
    would split names and numbers across lines)."""
    rows = [[str(cell) for cell in row] for row in rows]
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    unbounded = results.options.update(max_width=1_000_000)  # the width it would take
    if Measurement.get(results, unbounded, table).maximum <= results.width:
        results.print(table)
        return
    for row in rows:
        results.print(row[0], soft_wrap=True)
        for header, cell in zip(headers[1:], row[1:]):
            if cell:
                results.print(f"  {header}: {cell}", soft_wrap=True)


BatchSizeOpt = Annotated[int | None, typer.Option(
    "--batch-size", parser=parse_batch_size, metavar="auto|N",
    help="Cubes per network call; auto: 2 on a CPU, from free memory on CUDA (halved on "
    "out-of-memory).")]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`CryosamuError` into one red line on stderr and exit code 1."""
    try:
        yield
    except CryosamuError as exc:
        console.print(Text.assemble(("Error:", "red"), f" {exc}"), soft_wrap=True)
        raise typer.Exit(code=1) from None


def epilog(example: str) -> str:
    """An "Example usage" block for a command's --help."""
    return f"[bold]Example usage[/bold]\n\n{example}"
