"""Configuration of the CryoSAMU U-Net (§3.3), as a frozen dataclass that round-trips to JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from cryosamu_cli.errors import ConfigError

# The map resolutions the networks are trained for (paper §3.1: training maps are drawn from
# 4–8 Å, data/degrade.py); enhance says so in one line for a map outside them.
TRAINED_RESOLUTION_RANGE_A = (4.0, 8.0)


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`~cryosamu_cli.model.unet.UNet3D`.

    Attributes:
        base_channels: Channels of the first encoder level.
        channel_mults: Channel multiplier of each of the encoder levels (the paper: four).
        num_res_blocks: Residual blocks per level.
        attention_levels: Levels followed by linear self-attention (the paper: first three).
        attention_heads: Heads of the linear self-attention modules.
        attention_head_dim: Channels per self-attention head.
        cross_attention_heads: Heads of the bottleneck cross-attention.
        struct_dim: Width of the structure embedding (ESM-IF1: 512).
        dropout: Dropout probability inside residual blocks.
        norm_groups: Groups of every GroupNorm; channel counts must be divisible by it.
    """

    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    attention_heads: int = 4
    attention_head_dim: int = 32
    cross_attention_heads: int = 4
    struct_dim: int = 512
    dropout: float = 0.2
    norm_groups: int = 8

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.channel_mults):
            raise ConfigError("attention_levels needs one entry per level of channel_mults")
        for channels in self.level_channels:
            if channels % self.norm_groups:
                raise ConfigError(f"{channels} channels are not divisible into "
                                  f"{self.norm_groups} GroupNorm groups")
        bottleneck = self.level_channels[-1]
        if bottleneck % self.cross_attention_heads:
            raise ConfigError(f"bottleneck width {bottleneck} is not divisible by "
                              f"{self.cross_attention_heads} cross-attention heads")

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each encoder level."""
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def downsampling_factor(self) -> int:
        """Factor by which the bottleneck is smaller than the input: cube edges must divide by it."""
        return 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dictionary (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        """Rebuild a config from :meth:`to_dict` output.

        Raises:
            ConfigError: Unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"invalid model config: {exc}") from exc


PRESETS: dict[str, UNetConfig] = {
    # §3.3 as published: 32 base channels, attention after levels 1-3 (9.2 M parameters)
    "paper": UNetConfig(),
    # for CPUs: 16 base channels, 64-wide attention heads and none at full resolution, where
    # the linear attention's 3 × 128 × 64³ tensors cost more than all convolutions together
    "light": UNetConfig(base_channels=16, attention_head_dim=16,
                        attention_levels=(False, True, True, False)),
}


def preset_config(name: str, base_channels: int | None = None) -> UNetConfig:
    """The named preset (``paper`` or ``light``), optionally with other base channels.

    Raises:
        ConfigError: Unknown preset name.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}': use {' or '.join(PRESETS)}")
    config = PRESETS[name]
    return config if base_channels is None else replace(config, base_channels=base_channels)
