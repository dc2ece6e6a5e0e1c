"""Domain errors. Library code raises these; only the CLI turns them into messages."""


class CryosamuError(Exception):
    """Base class of every error a user can act on; the message is shown as one line."""


class MapReadError(CryosamuError):
    """A map file is missing, unreadable, not an MRC/CCP4 file or truncated."""


class InvalidMapError(CryosamuError):
    """A map was read but its content or geometry cannot be enhanced."""


class OutputError(CryosamuError):
    """The output path exists, or its folder is missing or not writable."""


class WeightsError(CryosamuError):
    """Model weights are missing, corrupt, or do not match the model."""


class DownloadError(WeightsError):
    """A download failed, was cut off, or did not match its checksum."""


class DeviceError(CryosamuError):
    """The requested compute device does not exist on this machine."""


class ConfigError(CryosamuError):
    """An option value is out of range or inconsistent with another."""


class ResourceError(CryosamuError):
    """The machine lacks what a run needs (memory)."""


class NumericalError(CryosamuError):
    """The network produced NaN or Inf (an overflow at reduced precision, or broken weights)."""


class MetadataError(CryosamuError):
    """An EMDB header XML (or other metadata beside a map) that cannot be read."""


class ResolutionUnknownError(CryosamuError):
    """No resolution was given and the map shows none that can be measured."""
