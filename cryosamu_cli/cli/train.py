"""``cryosamu train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryosamu_cli.cli.common import console, epilog, results, user_errors
from cryosamu_cli.training.loss import DEFAULT_CORR_WEIGHT, LOSSES
from cryosamu_cli.training.time_budget import DEFAULT_CHECKPOINT_MINUTES

app = typer.Typer()

EXAMPLE = """cryosamu train training_data -o runs/base32 --epochs 95 --batch-size 2

torchrun --nproc-per-node 4 --nnodes 2 --rdzv-backend c10d --rdzv-endpoint host:29500 \\
    $(which cryosamu) train training_data -o runs/ddp

cryosamu train training_data -o runs/base32 --resume

cryosamu train training_data -o runs/window --time-budget 6 --export-half

cryosamu train training_data -o runs/light --preset light --crop-size 48"""


@app.command("train", epilog=epilog(EXAMPLE))
def train_cmd(
    data_dir: Annotated[Path, typer.Argument(file_okay=False, help="A prepare-data folder.")],
    run_dir: Annotated[Path, typer.Option("--output", "-o", file_okay=False,
                                          help="Folder for checkpoints and metrics.")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs (the paper: 95).")] = 95,
    batch_size: Annotated[int, typer.Option(min=1, help="Cubes per step and process.")] = 2,
    preset: Annotated[str, typer.Option(help="Network preset: paper (§3.3) or light "
                                        "(for CPUs).")] = "paper",
    base_channels: Annotated[Optional[int], typer.Option(
        help="Channels of the first U-Net level (default: the preset's).")] = None,
    crop_size: Annotated[Optional[int], typer.Option(
        help="Train on random crops of this edge (a multiple of 8) of the 64³ cubes.")] = None,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    no_struct: Annotated[bool, typer.Option("--no-struct", help="Train without structure "
                                            "embeddings (the ablation).")] = False,
    struct_dropout: Annotated[float, typer.Option(
        "--struct-dropout", help="Fraction of training steps run without the structure "
        "embeddings, so that the network also learns the inference-time path (0: the "
        "paper).")] = 0.0,
    precision: Annotated[str, typer.Option(
        help="auto (bf16 on CUDA, fp16 where it lacks bf16; on a CPU bf16 where it computes "
        "bf16 natively, else fp32), fp32, bf16 or fp16.")] = "auto",
    no_augment: Annotated[bool, typer.Option("--no-augment", help="No TorchIO "
                                             "augmentation.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(help="Cap on steps per epoch "
                                                     "(smoke tests).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT/last.pt.")] = False,
    init_weights: Annotated[Optional[Path], typer.Option(
        "--init-weights", dir_okay=False, help="Start from this checkpoint's weights "
        "(fine-tuning; same network).")] = None,
    validate_on: Annotated[Optional[Path], typer.Option(
        "--validate-on", dir_okay=False, help="Pairs CSV whose 'val' rows, degraded to 5 and "
        "6.5 Å, are enhanced each epoch and scored by CC_box/CC_mask; best.pt is chosen by "
        "their mean.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of weights, shuffling and augmentation.")] = 0,
    time_budget: Annotated[Optional[float], typer.Option(
        "--time-budget", help="Train for this many minutes instead of --epochs: the cosine "
        "schedule spans them, with a validation and checkpoint every --checkpoint-minutes and "
        "at the end; with --resume, a new schedule over the new budget.")] = None,
    checkpoint_minutes: Annotated[float, typer.Option(
        help="With --time-budget: minutes between validations and checkpoints.")
    ] = DEFAULT_CHECKPOINT_MINUTES,
    val_cubes: Annotated[Optional[int], typer.Option(
        min=1, help="Validate on this many cubes of the validation split, evenly spread "
        "(default: all); keeps validations short in a --time-budget run.")] = None,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="Run the network through torch.compile (compiling takes minutes; "
        "it gained nothing on a CPU, docs/performance.md).")] = False,
    export_half: Annotated[bool, typer.Option(
        "--export-half", help="Also write best-half.pt: best.pt's network in float16, half "
        "the size, loadable by enhance.")] = False,
    loss: Annotated[str, typer.Option(
        help="smooth-l1 (§3.4) or smooth-l1+corr: plus --corr-weight × (1 − the correlation "
        "of output and target inside the molecule), what map_model_cc scores.")] = LOSSES[0],
    corr_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the correlation term of --loss smooth-l1+corr.")] = DEFAULT_CORR_WEIGHT,
    ema_decay: Annotated[Optional[float], typer.Option(
        help="Keep an exponential moving average of the weights with this decay (e.g. "
        "0.999), validated beside them: ema.pt and best-ema.pt.")] = None,
) -> None:
    """Train the U-Net on a prepare-data folder (one process, or many under torchrun)."""
    from cryosamu_cli.training import loop as train_lib

    config = train_lib.TrainConfig(epochs=epochs, batch_size=batch_size,
                                   learning_rate=learning_rate, seed=seed, no_struct=no_struct,
                                   struct_dropout=struct_dropout,
                                   preset=preset, base_channels=base_channels,
                                   precision=precision, augment=not no_augment,
                                   crop_size=crop_size, max_steps_per_epoch=max_steps,
                                   init_weights=str(init_weights) if init_weights else None,
                                   validate_on=str(validate_on) if validate_on else None,
                                   time_budget_minutes=time_budget,
                                   checkpoint_minutes=checkpoint_minutes,
                                   compile=compile_model, export_half=export_half,
                                   val_cubes=val_cubes, loss=loss, corr_weight=corr_weight,
                                   ema_decay=ema_decay)
    with user_errors():
        summary = train_lib.train(data_dir=data_dir, run_dir=run_dir, config=config,
                                  resume=resume, on_epoch=_print_epoch,
                                  on_warning=lambda text: console.print(f"Warning: {text}"))
    if summary["rank"] != 0:
        return
    best = ("no validation" if summary["best_val_loss"] is None
            else f"best validation loss {summary['best_val_loss']:.4g}")
    results.print(f"done: {summary['epochs']} epochs, {summary['steps']} steps, {best}; "
                  f"checkpoints in {run_dir}")


def _print_epoch(record: dict) -> None:
    loss = "no step" if record["train_loss"] is None else f"train loss {record['train_loss']:.4g}"
    val = ("" if record["val_loss"] is None else
           f", val loss {record['val_loss']:.4g}, val CC {record['val_cc']:.3f}")
    if "real_cc" in record:
        val += (f", real maps CC_box {record['real_cc_box']:.3f} CC_mask "
                f"{record['real_cc_mask']:.3f}")
    if "ema_val_loss" in record and record["ema_val_loss"] is not None:
        val += f"; EMA val loss {record['ema_val_loss']:.4g}"
        if "ema_real_cc" in record:
            val += (f", real maps CC_box {record['ema_real_cc_box']:.3f} CC_mask "
                    f"{record['ema_real_cc_mask']:.3f}")
    console.print(f"epoch {record['epoch']}, step {record['step']}, {record['minutes']:.1f} min: "
                  f"{loss}{val} ({record['seconds']:.0f} s)")
