"""An exponential moving average (EMA) of a training network's weights.

Built on :class:`torch.optim.swa_utils.AveragedModel` with its EMA rule
(``averaged = decay · averaged + (1 − decay) · current`` after every step, buffers included).
The average is validated beside the raw weights, saved as ``ema.pt`` / ``best-ema.pt``
(ordinary checkpoints that ``enhance --weights`` loads) and carried in ``last.pt`` so that a
resumed run continues it.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cryosamu_cli.errors import ConfigError

DEFAULT_EMA_DECAY = 0.999


def check_decay(decay: float | None) -> None:
    """Refuse a decay outside (0, 1).

    Raises:
        ConfigError: The decay is not strictly between 0 and 1.
    """
    if decay is not None and not 0.0 < decay < 1.0:
        raise ConfigError(f"--ema-decay must be between 0 and 1 (e.g. {DEFAULT_EMA_DECAY}), "
                          f"got {decay}")


class WeightAverage:
    """The EMA of ``model``'s parameters and buffers; ``network`` is a plain copy of the
    network (with its ``config``) holding the averaged weights."""

    def __init__(self, model: nn.Module, decay: float = DEFAULT_EMA_DECAY):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)
        self.decay = decay

    @property
    def network(self) -> nn.Module:
        """The averaged network (the same class and config as the trained one)."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average (once per step)."""
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        """The average and its step count, for ``last.pt``."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue an average saved by :meth:`state_dict`."""
        self.averaged.load_state_dict(state)
