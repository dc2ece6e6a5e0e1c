"""Root Typer app: ``cryosamu --version`` and the sub-commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cryosamu_cli import __version__
from cryosamu_cli.cli import benchmark, enhance, example, prepare, train, weights

app = typer.Typer(name="cryosamu", no_args_is_help=True, rich_markup_mode="rich",
                  help="Enhance intermediate-resolution (4–8 Å) cryo-EM maps with CryoSAMU.")
app.add_typer(enhance.app)
app.add_typer(example.app)
app.add_typer(prepare.app)
app.add_typer(train.app)
app.add_typer(weights.app, name="weights")
app.add_typer(benchmark.app, name="benchmark")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cryosamu {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Show the version and exit.")] = None) -> None:
    """Enhance intermediate-resolution (4–8 Å) cryo-EM maps with CryoSAMU."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
