"""``cryosamu train``: the recipe of §3.4 on PyTorch DDP.

Smooth-L1 loss, AdamW (1e-4) with cosine annealing, gradient clipping at 0.5, mixed precision
where the device runs it fast, TorchIO augmentation of the input only (noise, anisotropy, blur),
structure embeddings as cross-attention keys/values in training and none in validation (as at
inference). One process, or many launched by ``torchrun`` (gloo on CPU, NCCL on GPU): the
distributed environment is read from torchrun's variables; rank 0 logs and checkpoints.

A run folder holds ``last.pt`` (model, optimiser, scheduler, counters: for ``--resume``),
``best.pt`` (format-1 checkpoint of the best validation loss, loadable by ``enhance``), each
beside a ``.json`` with the configuration, version, time and command line, and
``metrics.jsonl`` (one line per epoch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cryosamu_cli import __version__
from cryosamu_cli.atomic import write_text_atomic
from cryosamu_cli.augment import augment_inputs, crop_and_flip, input_augmenter
from cryosamu_cli.dataset import CubePairDataset
from cryosamu_cli.device import resolve_precision
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.model.config import UNetConfig, preset_config
from cryosamu_cli.model.unet import UNet3D
from cryosamu_cli.weights import save_checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved beside every checkpoint)."""

    epochs: int = 95
    batch_size: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    seed: int = 0
    no_struct: bool = False
    struct_dropout: float = 0.0
    preset: str = "paper"
    base_channels: int | None = None
    precision: str = "auto"
    augment: bool = True
    crop_size: int | None = None
    max_steps_per_epoch: int | None = None
    init_weights: str | None = None
    validate_on: str | None = None

    def model_config(self) -> UNetConfig:
        """The network this run trains: the preset, with ``base_channels`` if given."""
        return preset_config(self.preset, self.base_channels)


@dataclass
class Progress:
    """Counters that ``--resume`` restores."""

    epoch: int = 0
    step: int = 0
    best_val_loss: float = math.inf
    best_real_cc: float = -math.inf


def train(*, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
          config: TrainConfig = TrainConfig(), resume: bool = False,
          model_config: UNetConfig | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train on a ``prepare-data`` folder; returns the summary (also on non-zero ranks).

    Raises:
        ConfigError: No training cubes, or nothing to resume from.
    """
    run_dir = Path(run_dir)
    rank, world, device = _setup_distributed()
    try:
        torch.manual_seed(config.seed)
        train_set = CubePairDataset(data_dir, "train", with_struct=not config.no_struct)
        val_set = CubePairDataset(data_dir, "val")
        if len(train_set) == 0:
            raise ConfigError(f"{data_dir} has no training cubes")
        model_config = _struct_width(model_config, train_set, config)
        _check_crop(config.crop_size, model_config, train_set.cube_size)
        model = UNet3D.from_config(model_config)
        if config.init_weights:
            _load_initial_weights(model, config.init_weights)
        model = model.to(device)
        real_maps = _real_validation_maps(config, rank)
        ddp_model = _wrap(model, world, device, config)
        loader = _loader(train_set, config, rank, world)
        steps = config.epochs * _steps_per_epoch(loader, config)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
        precision = resolve_precision(config.precision, device)
        progress = Progress()
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            progress = _restore(run_dir / "last.pt", model, optimiser, scheduler, device)
        summary = _epochs(ddp_model, model, loader, (val_set, real_maps), optimiser, scheduler,
                          progress, config, precision, device, rank, run_dir, on_epoch)
        summary["final_weight_checksums"] = _gather(_checksum(model), world)
        summary["rank"] = rank
        if rank == 0:
            write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary
    finally:
        _teardown(world)


def _struct_width(model_config: UNetConfig | None, train_set: CubePairDataset,
                  config: TrainConfig) -> UNetConfig:
    """The network of this run, its ``struct_dim`` following the width of the data's
    structure embeddings (a network given explicitly must already match it).

    Raises:
        ConfigError: Training with embeddings on data without them, or a width mismatch.
    """
    if not 0.0 <= config.struct_dropout <= 1.0:
        raise ConfigError(f"--struct-dropout must be between 0 and 1, got {config.struct_dropout}")
    if config.no_struct:
        return model_config or config.model_config()
    if train_set.struct_dim is None:
        raise ConfigError(f"{train_set.data_dir} holds no structure embeddings: prepare it "
                          "without --no-struct, or train with --no-struct")
    if model_config is None:
        return dataclasses.replace(config.model_config(), struct_dim=train_set.struct_dim)
    if model_config.struct_dim != train_set.struct_dim:
        raise ConfigError(f"the network takes {model_config.struct_dim}-wide structure "
                          f"embeddings but {train_set.data_dir} holds {train_set.struct_dim}-wide "
                          f"ones ({train_set.struct_encoder})")
    return model_config


def _load_initial_weights(model: nn.Module, path: str) -> None:
    """Start from a checkpoint's weights (fine-tuning); its network must match this run's,
    except for the width of the structure embeddings: then the cross-attention starts afresh,
    its output projection at zero so that the network first computes what the checkpoint did.

    Raises:
        ConfigError: The checkpoint's network differs from the run's.
    """
    from cryosamu_cli.weights import load_model

    source = load_model(Path(path))
    if dataclasses.replace(source.config, struct_dim=model.config.struct_dim) != model.config:
        raise ConfigError(f"--init-weights {path} holds a different network "
                          f"({source.config.to_dict()}) than this run's preset")
    if source.config == model.config:
        model.load_state_dict(source.state_dict())
        return
    kept = {k: v for k, v in source.state_dict().items() if not k.startswith("mid_cross.")}
    model.load_state_dict(kept, strict=False)
    with torch.no_grad():
        model.mid_cross.attention.out_proj.weight.zero_()
        model.mid_cross.attention.out_proj.bias.zero_()


def _real_validation_maps(config: TrainConfig, rank: int) -> list:
    """The degraded real maps of ``validate_on`` (rank 0 only: it alone chooses ``best.pt``)."""
    if not config.validate_on or rank != 0:
        return []
    from cryosamu_cli.validation import validation_maps_from_csv

    return validation_maps_from_csv(config.validate_on)


def _setup_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device from torchrun's environment (one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return rank, world, device


def _teardown(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _wrap(model: nn.Module, world: int, device: torch.device, config: TrainConfig) -> nn.Module:
    """DDP around the model when several processes run; without embeddings the
    cross-attention takes no part in the loss (nor on the steps ``struct_dropout`` leaves
    without them), so DDP must allow unused parameters."""
    if world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=config.no_struct or config.struct_dropout > 0)


def _loader(dataset: CubePairDataset, config: TrainConfig, rank: int, world: int):
    """Shuffled batches; each rank sees its own shard of the data (DistributedSampler)."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    generator = torch.Generator().manual_seed(config.seed)
    sampler = (DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                  seed=config.seed) if world > 1
               else RandomSampler(dataset, generator=generator))
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=False)


def _steps_per_epoch(loader, config: TrainConfig) -> int:
    steps = len(loader)
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


def _check_crop(crop_size: int | None, model_config: UNetConfig, cube_size: int) -> None:
    """A training crop must fit in the cubes and divide by the U-Net's downsampling factor."""
    if crop_size is None:
        return
    factor = model_config.downsampling_factor
    if crop_size % factor or not factor <= crop_size <= cube_size:
        raise ConfigError(f"crop size {crop_size} must be a multiple of {factor} between "
                          f"{factor} and the cube size {cube_size}")


def train_step(model: nn.Module, batch, optimiser, scheduler, config: TrainConfig,
               precision: torch.dtype | None, device: torch.device, augmenter=None,
               scaler: torch.amp.GradScaler | None = None) -> float:
    """One optimisation step on a batch ``(input, target[, embedding])``; returns the loss.
    ``scaler`` (fp16) scales the loss against underflow."""
    model.train()
    inputs, targets = crop_and_flip(batch[0], batch[1], config.crop_size, config.augment)
    targets = targets.to(device)
    struct = batch[2].to(device) if len(batch) > 2 and not config.no_struct else None
    if struct is not None and config.struct_dropout > 0 and torch.rand(()) < config.struct_dropout:
        struct = None  # this step trains the path inference takes
    inputs = augment_inputs(inputs, augmenter).to(device)
    with torch.autocast(device.type, dtype=precision or torch.float32,
                        enabled=precision is not None):
        loss = nn.functional.smooth_l1_loss(model(inputs, struct).float(), targets)
    optimiser.zero_grad(set_to_none=True)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    scaler.scale(loss).backward()
    scaler.unscale_(optimiser)
    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimiser)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


def _epochs(ddp_model, model, loader, validation, optimiser, scheduler, progress: Progress,
            config: TrainConfig, precision, device, rank: int, run_dir: Path, on_epoch) -> dict:
    """The epoch loop: train, validate (cubes; and real maps when given), log and checkpoint
    (rank 0)."""
    val_set, real_maps = validation
    augmenter = input_augmenter(config.augment)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    history = []
    while progress.epoch < config.epochs:
        started = time.perf_counter()
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(progress.epoch)
        losses = []
        for batch in loader:
            if config.max_steps_per_epoch and len(losses) >= config.max_steps_per_epoch:
                break
            losses.append(train_step(ddp_model, batch, optimiser, scheduler, config, precision,
                                     device, augmenter, scaler))
            progress.step += 1
        progress.epoch += 1
        record = {"epoch": progress.epoch, "step": progress.step,
                  "train_loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0],
                  "seconds": round(time.perf_counter() - started, 2),
                  **validate(model, val_set, device, config.batch_size, precision)}
        if real_maps:
            from cryosamu_cli.validation import score_network

            record.update(score_network(model, real_maps, device, precision))
        if rank == 0:
            _log_and_save(record, model, optimiser, scheduler, progress, config, run_dir)
            if on_epoch is not None:
                on_epoch(record)
        history.append(record)
    return {"epochs": progress.epoch, "steps": progress.step,
            "best_val_loss": progress.best_val_loss, "history": history}


@torch.inference_mode()
def validate(model: nn.Module, val_set: CubePairDataset, device: torch.device,
             batch_size: int, precision: torch.dtype | None = None) -> dict:
    """Validation loss and mean map correlation, without embeddings (as at inference), in
    the training's autocast ``precision``."""
    if len(val_set) == 0:
        return {"val_loss": None, "val_cc": None}
    model.eval()
    losses, correlations = [], []
    for start in range(0, len(val_set), batch_size):
        items = [val_set[i] for i in range(start, min(start + batch_size, len(val_set)))]
        inputs = torch.stack([i[0] for i in items]).to(device)
        targets = torch.stack([i[1] for i in items]).to(device)
        with torch.autocast(device.type, dtype=precision or torch.float32,
                            enabled=precision is not None):
            outputs = model(inputs).float()
        losses.append(float(nn.functional.smooth_l1_loss(outputs, targets)) * len(items))
        correlations += [float(torch.corrcoef(torch.stack([o.flatten(), t.flatten()]))[0, 1])
                         for o, t in zip(outputs, targets)]
    return {"val_loss": sum(losses) / len(val_set), "val_cc": float(np.nanmean(correlations))}


def _log_and_save(record: dict, model, optimiser, scheduler, progress: Progress,
                  config: TrainConfig, run_dir: Path) -> None:
    """Append the metrics line, save ``last.pt`` and, when validation improved, ``best.pt``:
    by the real maps' mean CC (``real_cc``) when they are scored, else by the cube loss."""
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    if "real_cc" in record:
        improved = record["real_cc"] > progress.best_real_cc
        progress.best_real_cc = max(progress.best_real_cc, record["real_cc"])
    else:
        improved = record["val_loss"] is None or record["val_loss"] < progress.best_val_loss
    if record["val_loss"] is not None:
        progress.best_val_loss = min(progress.best_val_loss, record["val_loss"])
    if improved:
        _save(run_dir / "best.pt", model, config, {
            "epoch": progress.epoch, "val_loss": record["val_loss"],
            "real_cc": record.get("real_cc")})
    _save(run_dir / "last.pt", model, config, {
        "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
        "progress": asdict(progress)})


def _save(path: Path, model: nn.Module, config: TrainConfig, extra: dict) -> None:
    """A format-1 checkpoint plus the run's configuration beside it (JSON)."""
    save_checkpoint(path, model, {"train_config": asdict(config), **extra})
    description = {"version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "command": " ".join(sys.argv), "model": model.config.to_dict(),
                   "train": asdict(config)}
    write_text_atomic(path.with_suffix(".json"), json.dumps(description, indent=1) + "\n")


def _restore(path: Path, model, optimiser, scheduler, device) -> Progress:
    """Load ``last.pt`` into the model, optimiser and scheduler; return its counters."""
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=True)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"{path} holds a different network than this run's (other preset, "
                          f"channels or structure embedding width)") from exc
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(state["scheduler"])
    return Progress(**state["progress"])


def _checksum(model: nn.Module) -> str:
    """SHA-256 of all parameters, to check that every rank holds the same weights."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _gather(value: str, world: int) -> list[str]:
    """Every rank's ``value`` (one process: just this one)."""
    if world == 1:
        return [value]
    values = [None] * world
    torch.distributed.all_gather_object(values, value)
    return values
