"""``cryosamu train``: the recipe of §3.4 on PyTorch DDP.

Smooth-L1 loss, AdamW (1e-4) with cosine annealing, gradient clipping at 0.5, mixed precision
where the device runs it fast, TorchIO augmentation of the input only (noise, anisotropy, blur),
structure embeddings as cross-attention keys/values in training and none in validation (as at
inference). One process, or many launched by ``torchrun`` (gloo on CPU, NCCL on GPU): the
distributed environment is read from torchrun's variables; rank 0 logs and checkpoints.

A run is bounded by epochs, or by wall-clock time (``time_budget_minutes``: the cosine spans
the budget, with a validation and checkpoint every few minutes and at the end;
:mod:`cryosamu_cli.training.time_budget`). On CUDA the training cubes stay on the GPU when they fit
(:mod:`cryosamu_cli.training.batches`), the augmentation runs there in batch
(:class:`cryosamu_cli.training.augment.BatchAugmenter`), the network is channels-last with cuDNN's
autotuner on, and ``compile`` hands it to ``torch.compile``. The run folder:
:mod:`cryosamu_cli.training.run_folder`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cryosamu_cli.atomic import folder_removed_if_left_empty, write_text_atomic
from cryosamu_cli.training.augment import crop_and_flip, input_augmenter
from cryosamu_cli.data.dataset import CubePairDataset
from cryosamu_cli.training.distributed import (gather, setup_distributed, teardown,
                                               training_network, weights_checksum)
from cryosamu_cli.device import precision_name, resolve_precision, use_precision
from cryosamu_cli.errors import ConfigError, NumericalError
from cryosamu_cli.model.config import UNetConfig, preset_config
from cryosamu_cli.model.unet import UNet3D
from cryosamu_cli.training.batches import training_batches
from cryosamu_cli.training.ema import WeightAverage, check_decay
from cryosamu_cli.training.loss import DEFAULT_CORR_WEIGHT, LOSSES, check_loss, training_loss
from cryosamu_cli.training.run_folder import Progress, log_and_save, restore
from cryosamu_cli.training.time_budget import DEFAULT_CHECKPOINT_MINUTES, TimeBudget
from cryosamu_cli.training.validation import validate


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
    time_budget_minutes: float | None = None
    checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES
    compile: bool = False
    export_half: bool = False
    val_cubes: int | None = None
    loss: str = LOSSES[0]
    corr_weight: float = DEFAULT_CORR_WEIGHT
    ema_decay: float | None = None

    def model_config(self) -> UNetConfig:
        """The network this run trains: the preset, with ``base_channels`` if given."""
        return preset_config(self.preset, self.base_channels)


def train(*, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
          config: TrainConfig = TrainConfig(), resume: bool = False,
          model_config: UNetConfig | None = None,
          on_epoch: Callable[[dict], None] | None = None,
          on_warning: Callable[[str], None] | None = None) -> dict:
    """Train on a ``prepare-data`` folder; returns the summary (also on non-zero ranks).
    ``on_warning`` hears, before any step, what makes the run weaker than asked (no
    validation split: ``best.pt`` then follows the last checkpoint).

    Raises:
        ConfigError: No training cubes, or nothing to resume from.
    """
    run_dir = Path(run_dir)
    _check_budget(config)
    rank, world, device = setup_distributed()
    try:
        torch.manual_seed(config.seed)
        train_set = CubePairDataset(data_dir, "train", with_struct=not config.no_struct)
        val_set = CubePairDataset(data_dir, "val")
        if len(train_set) == 0:
            raise ConfigError(f"{data_dir} has no training cubes")
        if len(val_set) == 0 and not config.validate_on and on_warning is not None and rank == 0:
            on_warning(f"{data_dir} has no validation cubes and no --validate-on was given: "
                       "nothing chooses best.pt (it is the last checkpoint)")
        model_config = _struct_width(model_config, train_set, config)
        _check_crop(config.crop_size, model_config, train_set.cube_size)
        model = UNet3D.from_config(model_config)
        if config.init_weights:
            _load_initial_weights(model, config.init_weights)
        model = network_on_device(model, device)
        ema = WeightAverage(model, config.ema_decay) if config.ema_decay else None
        real_maps = _real_validation_maps(config, rank)
        ddp_model = training_network(model, world, device, compile_it=config.compile,
                                     unused_parameters=config.no_struct
                                     or config.struct_dropout > 0)
        batches = training_batches(train_set, batch_size=config.batch_size, seed=config.seed,
                                   rank=rank, world=world, device=device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        budget = (TimeBudget(config.time_budget_minutes, config.checkpoint_minutes, world,
                             device) if config.time_budget_minutes else None)
        scheduler = _schedule(optimiser, budget, config.epochs * _steps_per_epoch(batches, config))
        precision = resolve_precision(config.precision, device)
        use_precision(precision, device)
        progress = Progress()
        with folder_removed_if_left_empty(run_dir) if rank == 0 else nullcontext():
            if resume:
                progress = restore(run_dir / "last.pt", model, optimiser,
                                   None if budget else scheduler, device, ema)
            run = _Run(ddp_model, model, optimiser, scheduler, config, precision, device, rank,
                       run_dir, (val_set, real_maps), on_epoch, ema)
            summary = run.loop(batches, progress, budget)
            summary["final_weight_checksums"] = gather(weights_checksum(model), world)
            summary["rank"] = rank
            if rank == 0:
                write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary
    finally:
        teardown(world)


def _check_budget(config: TrainConfig) -> None:
    """The loss and EMA options must be known; a time budget and the checkpoint interval
    must be positive."""
    check_loss(config.loss, config.corr_weight)
    check_decay(config.ema_decay)
    if config.time_budget_minutes is not None and not config.time_budget_minutes > 0:
        raise ConfigError(f"--time-budget must be a positive number of minutes, got "
                          f"{config.time_budget_minutes}")
    if not config.checkpoint_minutes > 0:
        raise ConfigError(f"--checkpoint-minutes must be positive, got {config.checkpoint_minutes}")


def network_on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The network on ``device``; on CUDA channels-last, with cuDNN choosing its fastest
    convolution algorithms for the training's fixed shapes."""
    if device.type != "cuda":
        return model.to(device)
    torch.backends.cudnn.benchmark = True
    return model.to(device, memory_format=torch.channels_last_3d)


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
    from cryosamu_cli.training.validation import validation_maps_from_csv

    return validation_maps_from_csv(config.validate_on)


def _schedule(optimiser, budget: TimeBudget | None, steps: int):
    """Cosine annealing over the run's ``steps``, or over the time ``budget``."""
    if budget is not None:
        return budget.scheduler(optimiser)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))


def _steps_per_epoch(batches, config: TrainConfig) -> int:
    steps = len(batches)
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
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimisation step on a batch ``(input, target[, embedding])``; returns the loss
    (a detached 0-d tensor on the device: reading it waits for the GPU). ``augmenter``
    (:func:`cryosamu_cli.training.augment.input_augmenter`) changes the inputs; ``scaler`` (fp16)
    scales the loss against underflow."""
    model.train()
    inputs, targets = (t.to(device, non_blocking=True) for t in batch[:2])
    inputs, targets = crop_and_flip(inputs, targets, config.crop_size, config.augment)
    struct = batch[2].to(device) if len(batch) > 2 and not config.no_struct else None
    if struct is not None and config.struct_dropout > 0 and torch.rand(()) < config.struct_dropout:
        struct = None  # this step trains the path inference takes
    if augmenter is not None:
        inputs = augmenter(inputs)
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(device.type, dtype=precision or torch.float32,
                        enabled=precision is not None):
        loss = training_loss(model(inputs, struct).float(), targets, config.loss,
                             config.corr_weight)
    optimiser.zero_grad(set_to_none=True)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    scaler.scale(loss).backward()
    scaler.unscale_(optimiser)
    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimiser)
    scaler.update()
    scheduler.step()
    return loss.detach()


@dataclass
class _Run:
    """The training loop of one process and what it works with."""

    ddp_model: nn.Module
    model: nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: object
    config: TrainConfig
    precision: torch.dtype | None
    device: torch.device
    rank: int
    run_dir: Path
    validation: tuple
    on_epoch: Callable[[dict], None] | None
    ema: WeightAverage | None = None

    def loop(self, batches, progress: Progress, budget: TimeBudget | None) -> dict:
        """Epochs of steps until ``config.epochs`` epochs (or the ``budget``) are done, with a
        validation and checkpoint after each epoch (with a budget: every
        ``checkpoint_minutes`` and at the end). An epoch cut short by the budget is not
        counted; one capped by ``max_steps_per_epoch`` is."""
        self.augmenter = input_augmenter(self.config.augment, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.precision == torch.float16)
        self.history, self.losses = [], []
        self.seconds_before, self.started = progress.seconds, time.perf_counter()
        self.window_started = self.started
        if budget is not None:
            budget.start()
        while not budget.spent if budget is not None else progress.epoch < self.config.epochs:
            batches.set_epoch(progress.epoch)
            if self._epoch(batches, progress, budget):
                progress.epoch += 1
            if budget is None:
                self._validate_and_save(progress)
        if budget is not None and (self.losses or not self.history
                                   or self.history[-1]["epoch"] != progress.epoch):
            self._validate_and_save(progress)  # unless the last checkpoint saw this state
        progress.seconds = self.seconds_before + time.perf_counter() - self.started
        return {"epochs": progress.epoch, "steps": progress.step,
                "best_val_loss": (progress.best_val_loss if math.isfinite(progress.best_val_loss)
                                  else None), "seconds": progress.seconds,
                "history": self.history}

    def _epoch(self, batches, progress: Progress, budget: TimeBudget | None) -> bool:
        """The steps of one epoch; False when the budget ran out before its end."""
        cap = self.config.max_steps_per_epoch
        for index, batch in enumerate(batches):
            if cap and index >= cap:
                break
            if budget is not None and budget.tick() >= budget.seconds:
                return False
            self.losses.append(train_step(self.ddp_model, batch, self.optimiser,
                                          self.scheduler, self.config, self.precision,
                                          self.device, self.augmenter, self.scaler))
            if self.ema is not None:
                self.ema.update(self.model)
            progress.step += 1
            if budget is not None and budget.checkpoint_due():
                self._validate_and_save(progress)
                budget.checkpoint_taken()
        return True

    def _validate_and_save(self, progress: Progress) -> None:
        """Validate (cubes; and real maps when given), log and checkpoint (rank 0).

        Raises:
            NumericalError: A training loss since the last validation was NaN or Inf (then
                nothing is saved: ``last.pt`` keeps the last finite state).
        """
        now = time.perf_counter()
        progress.seconds = self.seconds_before + now - self.started
        losses = torch.stack(self.losses).float().cpu() if self.losses else None
        if losses is not None and not bool(torch.isfinite(losses).all()):
            raise NumericalError(self._non_finite_message(progress))
        val_set, real_maps = self.validation
        record = {"epoch": progress.epoch, "step": progress.step,
                  "train_loss": float(losses.mean()) if losses is not None else None,
                  "lr": self.scheduler.get_last_lr()[0],
                  "seconds": round(now - self.window_started, 2),
                  "minutes": round(progress.seconds / 60, 3),
                  **validate(self.model, val_set, self.device, self.config.batch_size,
                             self.precision, self.config.val_cubes)}
        record.update(self._real_scores(self.model))
        if self.ema is not None:
            scores = {**validate(self.ema.network, val_set, self.device, self.config.batch_size,
                                 self.precision, self.config.val_cubes),
                      **self._real_scores(self.ema.network)}
            record.update({f"ema_{key}": value for key, value in scores.items()})
        record["validation_seconds"] = round(time.perf_counter() - now, 2)
        if self.rank == 0:
            log_and_save(record, self.model, self.optimiser, self.scheduler, progress,
                         asdict(self.config), self.run_dir, self.config.export_half, self.ema)
            if self.on_epoch is not None:
                self.on_epoch(record)
        self.history.append(record)
        self.losses, self.window_started = [], time.perf_counter()

    def _real_scores(self, network: nn.Module) -> dict:
        """The real validation maps' scores of ``network`` (none without such maps)."""
        if not self.validation[1]:
            return {}
        from cryosamu_cli.training.validation import score_network

        return score_network(network, self.validation[1], self.device, self.precision)

    def _non_finite_message(self, progress: Progress) -> str:
        """What to say when a loss was NaN or Inf: where the last finite state is, what to try."""
        saved = ("last.pt holds the last finite state" if (self.run_dir / "last.pt").is_file()
                 else "no checkpoint was written")
        remedy = ("a lower --learning-rate" if self.precision is None
                  else "--precision fp32 or a lower --learning-rate")
        return (f"a training loss was NaN or Inf by step {progress.step} at "
                f"{precision_name(self.precision)} precision; {saved}: train again with {remedy}")
