"""cryosamu: structure-aware enhancement of intermediate-resolution cryo-EM maps."""

__version__ = "0.1.0"
