"""``cryosamu example``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryosamu_cli.cli.common import ForceOpt, epilog, results, user_errors

app = typer.Typer()


@app.command("example", epilog=epilog("cryosamu example -o helix_bundle.mrc"))
def example_cmd(
    output_path: Annotated[Path, typer.Option("--output", "-o", dir_okay=False,
                                              help="Where to write the example map.")] = Path(
        "helix_bundle.mrc"),
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    force: ForceOpt = False,
) -> None:
    """Write the bundled example: an ideal 4-helix bundle simulated at 6 Å with noise."""
    from cryosamu_cli.examples import write_example_map

    with user_errors():
        path = write_example_map(output_path, seed=seed, force=force)
    results.print(f"Example map written to {path}")
