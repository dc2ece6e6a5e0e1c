"""The CryoSAMU network and its configuration; nothing here knows about files."""

from cryosamu_cli.model.config import UNetConfig

__all__ = ["UNetConfig"]
