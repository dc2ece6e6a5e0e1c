"""A training run's folder: what ``cryosamu train`` writes and ``--resume`` reads back.

``metrics.jsonl`` (one line per validation), ``last.pt`` (model, optimiser, scheduler and the
:class:`Progress` counters), ``best.pt`` (a format-1 checkpoint of the best validation,
loadable by ``enhance``), optionally ``best-half.pt`` (the same network in float16: half the
bytes, for moving a paper-sized network out of a short GPU window), each beside a ``.json``
with the configuration, version, time and command line. With an EMA of the weights
(``train --ema-decay``): ``ema.pt`` (the average at the last validation) and ``best-ema.pt``
(the average at its own best validation), chosen by the same rule from the ``ema_`` scores;
``last.pt`` carries the average so that ``--resume`` continues it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cryosamu_cli import __version__
from cryosamu_cli.atomic import write_text_atomic
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.weights import save_checkpoint

HALF_CHECKPOINT = "best-half.pt"


@dataclass
class Progress:
    """Counters that ``--resume`` restores (``seconds``: training time of all sessions)."""

    epoch: int = 0
    step: int = 0
    best_val_loss: float = math.inf
    best_real_cc: float = -math.inf
    seconds: float = 0.0
    best_ema_val_loss: float = math.inf
    best_ema_real_cc: float = -math.inf


def log_and_save(record: dict, model: nn.Module, optimiser, scheduler, progress: Progress,
                 train_config: dict, run_dir: Path, export_half: bool = False,
                 ema=None) -> None:
    """Append the metrics line, save ``last.pt`` and, when validation improved, ``best.pt``
    (and ``best-half.pt`` with ``export_half``): by the real maps' mean CC (``real_cc``) when
    they are scored, else by the cube loss. With ``ema``
    (:class:`cryosamu_cli.training.ema.WeightAverage`) also ``ema.pt`` and ``best-ema.pt``."""
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    if _improved(record, progress, ""):
        best = {"epoch": progress.epoch, "step": progress.step, "val_loss": record["val_loss"],
                "real_cc": record.get("real_cc")}
        save_run_checkpoint(run_dir / "best.pt", model, train_config, best)
        if export_half:
            save_run_checkpoint(run_dir / HALF_CHECKPOINT, model, train_config, best, half=True)
    extra = {}
    if ema is not None:
        at = {"epoch": progress.epoch, "step": progress.step, "ema_decay": ema.decay,
              "val_loss": record.get("ema_val_loss"), "real_cc": record.get("ema_real_cc")}
        save_run_checkpoint(run_dir / "ema.pt", ema.network, train_config, at)
        if _improved(record, progress, "ema_"):
            save_run_checkpoint(run_dir / "best-ema.pt", ema.network, train_config, at)
        extra["ema"] = ema.state_dict()
    save_run_checkpoint(run_dir / "last.pt", model, train_config, {
        "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
        "progress": asdict(progress), **extra})


def _improved(record: dict, progress: Progress, prefix: str) -> bool:
    """Whether the weights scored in ``record`` (``prefix``: "" raw, "ema_" the average) beat
    the best so far, by ``real_cc`` when scored, else by ``val_loss``; updates the bests."""
    best_cc, best_loss = f"best_{prefix}real_cc", f"best_{prefix}val_loss"
    real_cc, val_loss = record.get(f"{prefix}real_cc"), record.get(f"{prefix}val_loss")
    if real_cc is not None:
        improved = real_cc > getattr(progress, best_cc)
        setattr(progress, best_cc, max(getattr(progress, best_cc), real_cc))
    else:
        improved = val_loss is None or val_loss < getattr(progress, best_loss)
    if val_loss is not None:
        setattr(progress, best_loss, min(getattr(progress, best_loss), val_loss))
    return improved


def save_run_checkpoint(path: Path, model: nn.Module, train_config: dict, extra: dict,
                        half: bool = False) -> None:
    """A format-1 checkpoint (float16 tensors with ``half``) plus the run's configuration
    beside it (JSON)."""
    save_checkpoint(path, model, {"train_config": train_config, **extra}, half=half)
    description = {"version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "command": " ".join(sys.argv), "model": model.config.to_dict(),
                   "train": train_config}
    write_text_atomic(path.with_suffix(".json"), json.dumps(description, indent=1) + "\n")


def restore(path: Path, model: nn.Module, optimiser, scheduler, device, ema=None) -> Progress:
    """Load ``last.pt`` into the model and optimiser (and ``scheduler`` unless None: a run
    bounded by time starts a new schedule over its new budget) and ``ema`` (the saved average;
    one started from the restored weights when the run had none); return its counters.

    Raises:
        ConfigError: Nothing to resume, or a checkpoint of another network.
    """
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=True)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"{path} holds a different network than this run's (other preset, "
                          f"channels or structure embedding width)") from exc
    optimiser.load_state_dict(state["optimiser"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if ema is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    elif ema is not None:
        ema.load_state_dict(type(ema)(model, ema.decay).state_dict())
    return Progress(**state["progress"])
