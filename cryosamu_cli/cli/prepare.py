"""``cryosamu prepare-data``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cryosamu_cli.cli.common import console, epilog, print_table, user_errors

app = typer.Typer()

EXAMPLE = """cryosamu prepare-data ../shared/data/pairs.csv -o training_data --no-struct --workers 2

cryosamu prepare-data pairs.csv -o data --no-struct --role train --min-cc 0.6

cryosamu prepare-data --pairs paper -o paper_set    # needs EMDB, RCSB and the ESM weights

cryosamu prepare-data pairs.csv -o data --struct-encoder proteinmpnn

cryosamu prepare-data -o sim --no-struct --simulate-from models/

cryosamu prepare-data -o sim-v2 --no-struct --simulate-from models/ --degradation basic \\
    --noise-reference emd_6824.mrc"""


@app.command("prepare-data", epilog=epilog(EXAMPLE))
def prepare_cmd(
    output_dir: Annotated[Path, typer.Option("--output", "-o", file_okay=False,
                                             help="Folder for shards and manifest.json.")],
    pairs_csv: Annotated[Optional[Path], typer.Argument(
        help="CSV with map, model, resolution (and split/role, name) columns; map and model "
        "are paths or EMDB/PDB IDs. 'paper': the paper's Tables S1-S3.")] = None,
    pairs_option: Annotated[Optional[Path], typer.Option(
        "--pairs", help="Same as PAIRS_CSV (e.g. --pairs paper).")] = None,
    no_struct: Annotated[bool, typer.Option("--no-struct", help="Skip the structure "
                                            "embeddings.")] = False,
    struct_encoder: Annotated[Optional[str], typer.Option(
        "--struct-encoder", metavar="esm-if1|proteinmpnn", help="Encoder of the structure "
        "embeddings (default: esm-if1 as the paper when its weights are cached, else "
        "proteinmpnn when its weights are cached, else esm-if1).")] = None,
    encoder_weights: Annotated[Optional[Path], typer.Option(
        "--encoder-weights", dir_okay=False, help="Local weights of the structure encoder "
        "(default: downloaded on first use and checked).")] = None,
    workers: Annotated[int, typer.Option(help="Pairs prepared in parallel.", min=1)] = 1,
    role: Annotated[Optional[str], typer.Option(help="Only rows whose split/role is this.")] = None,
    min_res: Annotated[float, typer.Option("--min-res", help="Refuse maps finer than this (Å).")] = 2.0,
    max_res: Annotated[float, typer.Option("--max-res", help="Refuse maps coarser than this (Å).")] = 10.0,
    min_cc: Annotated[float, typer.Option("--min-cc", help="Filter pairs whose map–model "
                                          "CC_mask is below this.")] = 0.65,
    simulate_from: Annotated[Optional[list[Path]], typer.Option(
        "--simulate-from", file_okay=False, help="Folder of models to simulate "
        "experimental-like pairs from (may be repeated; with --degradation basic, needs "
        "--noise-reference).")] = None,
    noise_reference: Annotated[Optional[Path], typer.Option(
        "--noise-reference", dir_okay=False, help="Real map whose noise spectrum the "
        "simulated maps follow: --degradation basic only, and required there (realistic noise "
        "follows each map's own signal, with the SNR of an FSC = 0.143 shell at its "
        "resolution).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated degradations.")] = 0,
    simulate_repeats: Annotated[int, typer.Option(
        "--simulate-repeats", min=1, help="Simulated maps per model, each with its own "
        "degradation.")] = 1,
    degrade_real: Annotated[int, typer.Option(
        "--degrade-real", min=0, help="Copies of every real pair degraded to a random "
        "4.5-8 Å (blur, noise with the map's own spectrum, half of them low-passed).")] = 0,
    target_resolution: Annotated[str, typer.Option(
        "--target-resolution", metavar="R|input", help="Resolution of the eq. 1 target in Å "
        "(the paper: 2), or 'input': each map's own (degraded) resolution.")] = "2",
    degradation: Annotated[str, typer.Option(
        "--degradation", metavar="realistic|basic", help="How simulated maps and degraded "
        "real copies are made: 'realistic' adds sharpening, low-pass, masks, local resolution "
        "and anisotropy (and keeps real maps' masks on half the copies); 'basic' is "
        "cryosamu-light-v1/v2's.")] = "realistic",
    dedup_identity: Annotated[Optional[float], typer.Option(
        "--dedup-identity", help="Keep one pair per group of models above this sequence "
        "identity (the paper: 0.3); needs biotite.")] = None,
    target_bfactors: Annotated[bool, typer.Option(
        "--target-bfactors", help="Widen each atom of the eq. 1 target by its model "
        "B-factor (the paper's eq. 1 does not).")] = False,
    esm_weights: Annotated[Optional[Path], typer.Option(
        "--esm-weights", dir_okay=False, hidden=True,
        help="Same as --struct-encoder esm-if1 --encoder-weights PATH.")] = None,
) -> None:
    """Map–model pairs → 1 Å grids, eq. 1 targets and 64³ cube shards (resumable)."""
    from cryosamu_cli.data import degrade, pair_shards
    from cryosamu_cli.data import prepare

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console)
    task = bar.add_task("pairs", total=None)

    downloads: dict[str, int] = {}

    def downloading(label: str, done: int, total: int | None) -> None:
        if label not in downloads:
            downloads[label] = bar.add_task(f"download {label}", total=total)
        bar.update(downloads[label], completed=done)

    def finished(entry: dict) -> None:
        bar.console.print(f"{entry['name']}: {entry['status']} {entry.get('reason', '')}")
        bar.advance(task)

    with user_errors(), bar:
        if (noise_reference is not None and degradation in degrade.DEGRADATION_KINDS
                and not prepare.uses_noise_reference(degradation)):
            console.print(f"Warning: --noise-reference is used by --degradation basic only; the "
                          f"{degradation} noise follows each simulated map's own signal")
        embedder = None
        if not no_struct:  # torch and the encoder only when embeddings are made
            from cryosamu_cli.data import embed

            if esm_weights is not None:
                struct_encoder, encoder_weights = struct_encoder or "esm-if1", esm_weights
            embedder = embed.structure_embedder(
                embed.choose_encoder(struct_encoder, encoder_weights), encoder_weights)
            console.print(f"structure embeddings: {embedder.name} ({embedder.dim} wide)")
        options = pair_shards.PrepareOptions(min_resolution_A=min_res, max_resolution_A=max_res,
                                         min_cc_mask=min_cc, dedup_identity=dedup_identity,
                                         target_bfactors=target_bfactors,
                                         target_resolution_A=pair_shards.parse_target_resolution(
                                             target_resolution), degradation=degradation)
        manifest = prepare.prepare_data(
            pairs_csv=pairs_csv or pairs_option, output_dir=output_dir, options=options,
            workers=workers, role=role, simulate_from=simulate_from,
            noise_reference=noise_reference, seed=seed, simulate_repeats=simulate_repeats,
            degrade_real=degrade_real,
            embedder=embedder, on_plan=lambda n: bar.update(task, total=n), on_pair=finished,
            download_progress=downloading)
    print_table(["pair", "split", "status", "cubes", "CC_mask", "resolution", "reason"],
                ([e["name"], e["split"], e["status"], str(e["cubes"]), str(e.get("cc_mask", "")),
                  str(e.get("resolution_A") or ""), e.get("reason", "")]
                 for e in manifest["pairs"]))

