"""A training run bounded by wall-clock time (``cryosamu train --time-budget``), for GPU
windows of a few minutes: the cosine learning-rate schedule spans the budget instead of a number
of steps, a checkpoint is due every few minutes, and the run stops once the budget is spent.

On several ranks the decisions must agree (a rank that stops alone leaves the others waiting
for it, and different learning rates would make the replicas diverge), so every rank takes
rank 0's clock, shared once per step.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a budget is used, so the CLI's help stays light
    import torch

DEFAULT_CHECKPOINT_MINUTES = 3.0


class TimeBudget:
    """``minutes`` of training from :meth:`start`, with a checkpoint due every
    ``checkpoint_minutes``. :meth:`tick` (once per step, on every rank) reads the clock."""

    def __init__(self, minutes: float, checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES,
                 world: int = 1, device: torch.device | None = None) -> None:
        self.seconds = minutes * 60.0
        self.checkpoint_seconds = checkpoint_minutes * 60.0
        self.world, self.device = world, device
        self.elapsed = 0.0
        self._started: float | None = None
        self._next_checkpoint = self.checkpoint_seconds

    def start(self) -> None:
        """Start the clock (the cosine starts at its full learning rate)."""
        self._started = time.perf_counter()
        self.elapsed = 0.0

    def tick(self) -> float:
        """Read the clock: seconds since :meth:`start`, rank 0's on every rank."""
        elapsed = time.perf_counter() - self._started if self._started is not None else 0.0
        if self.world > 1:
            import torch

            shared = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(shared, src=0)
            elapsed = float(shared)
        self.elapsed = elapsed
        return elapsed

    @property
    def spent(self) -> bool:
        """Whether the budget was used up at the last :meth:`tick`."""
        return self.elapsed >= self.seconds

    def learning_rate_factor(self) -> float:
        """The cosine schedule at the last tick: 1 at the start, 0 when the budget is spent."""
        fraction = min(self.elapsed / self.seconds, 1.0) if self.seconds > 0 else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * fraction))

    def checkpoint_due(self) -> bool:
        """Whether a checkpoint interval ended at the last tick (then the next one starts)."""
        if self.elapsed < self._next_checkpoint:
            return False
        while self._next_checkpoint <= self.elapsed:
            self._next_checkpoint += self.checkpoint_seconds
        return True

    def checkpoint_taken(self) -> None:
        """Start the next checkpoint interval now, once a checkpoint (its validation included)
        is done: a validation that takes longer than the interval would otherwise make the
        next checkpoint due after a single step, and the run would validate instead of train."""
        self._next_checkpoint = self.tick() + self.checkpoint_seconds

    def scheduler(self, optimiser: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A scheduler whose ``step()`` sets the learning rate from the budget's clock."""
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimiser,
                                                 lambda _: self.learning_rate_factor())
