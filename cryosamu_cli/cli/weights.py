"""``cryosamu weights list | download | verify | add | mix``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryosamu_cli.cli.common import epilog, print_table, results, user_errors

app = typer.Typer(help="List, pre-fetch and verify pretrained weights.", no_args_is_help=True)


@app.command("list", epilog=epilog("cryosamu weights list"))
def list_cmd() -> None:
    """List the pretrained models and where a copy of each is found."""
    from cryosamu_cli import weights as weights_lib

    with user_errors():
        manifest = weights_lib.load_manifest()
    if not manifest.entries:
        results.print("No pretrained models are listed in this version.")
        return
    rows = []
    for entry in manifest.entries.values():
        local = [p for p in (weights_lib.cache_dir() / entry.file,
                             weights_lib.shipped_weights_dir() / entry.file) if p.is_file()]
        rows.append([entry.name, "yes" if entry.name == manifest.default else "",
                     f"{entry.size / 1e6:.1f}", str(local[0]) if local else "not downloaded",
                     entry.description])
    for encoder in manifest.encoders.values():
        local = weights_lib.local_copy(encoder)
        rows.append([encoder.name, "", f"{encoder.size / 1e6:.1f}",
                     str(local) if local else "not downloaded",
                     f"{encoder.description} ({encoder.licence})"])
    print_table(["name", "default", "size (MB)", "local copy", "description"], rows)
    results.print(f"Model card (what each model achieves, on which data): "
                  f"{model_card_path()}", soft_wrap=True)


def model_card_path() -> Path:
    """The model card (what each model achieves, on which data): shipped inside the wheel,
    or in the source checkout's ``docs/``."""
    package = Path(__file__).resolve().parents[1]
    inside_package = package / "docs" / "MODEL_CARD.md"
    return inside_package if inside_package.is_file() else package.parent / "docs" / "MODEL_CARD.md"


@app.command("download", epilog=epilog("cryosamu weights download cryosamu-light-v1"))
def download_cmd(name: Annotated[Optional[str], typer.Argument(
        help="Model or structure encoder name (default: the default model).")] = None) -> None:
    """Download a pretrained model (or a structure encoder's weights) into the cache
    (checksummed)."""
    from cryosamu_cli import weights as weights_lib

    with user_errors():
        entry = weights_lib.load_manifest().any_entry(name)
        present = weights_lib.verified_local_copy(entry)
        if present is not None:
            results.print(f"{entry.name} is already here (checksum verified): {present}")
            return
        path = weights_lib.download_weights(entry)
    results.print(f"{entry.name} saved to {path}")


@app.command("verify", epilog=epilog("cryosamu weights verify"))
def verify_cmd() -> None:
    """Re-hash every local copy of every model against the manifest's SHA-256."""
    from cryosamu_cli import weights as weights_lib

    with user_errors():
        manifest = weights_lib.load_manifest()
    corrupt = 0
    for entry in [*manifest.entries.values(), *manifest.encoders.values()]:
        for path, status in weights_lib.verify_entry(entry).items():
            corrupt += status != "ok"
            results.print(f"{entry.name}: {path}: {status}")
    if corrupt:
        raise typer.Exit(code=1)


@app.command("add", epilog=epilog("cryosamu weights add runs/light/best.pt --name "
                                  "cryosamu-light-v1 --default"))
def add_cmd(
    checkpoint: Annotated[Path, typer.Argument(dir_okay=False, help="A trained checkpoint "
                                               "(e.g. a train run's best.pt).")],
    name: Annotated[str, typer.Option(help="Registry name; the file becomes <name>.pt.")],
    description: Annotated[str, typer.Option(help="One line for `weights list`.")] = "",
    url: Annotated[str, typer.Option(help="Download address (empty: ships in the "
                                     "package only).")] = "",
    default: Annotated[bool, typer.Option("--default", help="Make it enhance's "
                                          "default.")] = False,
    folder: Annotated[Optional[Path], typer.Option(file_okay=False, help="Weights folder "
                                                   "(default: the shipped one).")] = None,
) -> None:
    """Add a trained checkpoint to the weights folder and its manifest (maintainers)."""
    from cryosamu_cli import weights as weights_lib

    with user_errors():
        entry = weights_lib.register_weights(checkpoint=checkpoint, name=name,
                                             description=description, url=url,
                                             make_default=default, folder=folder)
    results.print(f"{entry.name}: {entry.file}, {entry.size} bytes, sha256 {entry.sha256}")


@app.command("mix", epilog=epilog("cryosamu weights mix weights/cryosamu-light-v2.pt "
                                  "runs/v3/best-ema.pt --share 0.5 --share 0.5 -o mixed.pt"))
def mix_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(dir_okay=False, help="Checkpoints of "
                                                      "one network (e.g. a run's last few, "
                                                      "or a fine-tuned one and its start).")],
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False,
                                         help="Where the mixed checkpoint is written.")],
    share: Annotated[Optional[list[float]], typer.Option(
        help="Share of each checkpoint, in order, summing to 1 (default: equal).")] = None,
) -> None:
    """Mix checkpoints in weight space: a weighted mean of their weights (maintainers)."""
    from cryosamu_cli.training import weight_mixing

    shares = share or [1.0 / len(checkpoints)] * len(checkpoints)
    with user_errors():
        path = weight_mixing.save_mixed_checkpoint(checkpoints=checkpoints, shares=shares,
                                                   output=output)
    results.print(f"{path}: " + ", ".join(f"{s:g} × {c}" for c, s in zip(checkpoints, shares)))
