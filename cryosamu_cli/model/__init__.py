"""The CryoSAMU network and its configuration; nothing here knows about files."""

from cryosamu_cli.model.config import PRESETS, UNetConfig, preset_config

__all__ = ["PRESETS", "UNetConfig", "preset_config"]
