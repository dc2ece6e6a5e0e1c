"""Which resolution limits the enhanced map, and where that number came from.

``enhance --resolution`` takes a value in Å for every map, ``none`` (the network's full band),
or a CSV file of ``path,resolution`` rows for many maps. Without it, half maps give their
FSC = 0.143 resolution; with neither, the full band is written and the summary says how to
limit it. The chosen :class:`ResolutionChoice` is recorded in the summary line, the half-map
JSON and the output's header label.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryosamu_cli.errors import ConfigError

# The network works on a 1 Å grid: nothing finer than its Nyquist limit can be written.
FINEST_RESOLUTION_A = 2.0


@dataclass(frozen=True)
class ResolutionChoice:
    """The resolution the output is limited to (None: the full band) and its source."""

    resolution_A: float | None
    source: str

    def summary(self) -> str:
        """Words for the summary line."""
        if self.resolution_A is None:
            if self.source == "not given":
                return ("full band: no --resolution given (pass the map's reported "
                        "resolution, --resolution R, to write only what the data support)")
            return "full band (--resolution none)"
        return f"limited to {self.resolution_A:.2f} Å ({self.source})"

    def label(self) -> str:
        """Words for the header label (ASCII, short)."""
        if self.resolution_A is None:
            return "full band"
        return f"res {self.resolution_A:.2f} A ({self.source})"

    def to_dict(self) -> dict:
        """For JSON reports."""
        return {"resolution_A": self.resolution_A, "resolution_source": self.source}


@dataclass(frozen=True)
class ResolutionRequest:
    """What ``--resolution`` asked for, parsed once for any number of maps.

    Attributes:
        value_A: One resolution for every map.
        full_band: ``none``: no limit.
        per_map: From a CSV: resolved path and bare file name → resolution (None: full band).
        csv_path: That CSV.
    """

    value_A: float | None = None
    full_band: bool = False
    per_map: dict[str, float | None] = field(default_factory=dict)
    csv_path: Path | None = None

    @property
    def given(self) -> bool:
        """Whether anything was asked for."""
        return self.full_band or self.value_A is not None or self.csv_path is not None


def parse_resolution(option: str | float | ResolutionRequest | None) -> ResolutionRequest:
    """Parse ``--resolution``: a number in Å, ``none``, a CSV file, or nothing.

    Raises:
        ConfigError: Not a positive number, ``none`` or a readable CSV of path,resolution.
    """
    if isinstance(option, ResolutionRequest):
        return option
    if option is None:
        return ResolutionRequest()
    if isinstance(option, (int, float)):
        return ResolutionRequest(value_A=_positive(float(option), str(option)))
    text = option.strip()
    if text.lower() == "none":
        return ResolutionRequest(full_band=True)
    try:
        return ResolutionRequest(value_A=_positive(float(text), text))
    except ValueError:
        pass
    path = Path(text)
    if path.is_file():
        return ResolutionRequest(per_map=_read_csv(path), csv_path=path)
    raise ConfigError(f"--resolution '{text}' is not a resolution in Å (e.g. 6.6), 'none', or "
                      "a CSV file of path,resolution")


def _positive(value: float, text: str) -> float:
    """A finite, positive resolution (ValueError for text that is not a number)."""
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--resolution must be a positive number of Å, got {text}")
    return value


def _read_csv(path: Path) -> dict[str, float | None]:
    """``path,resolution`` rows (a header row is allowed; ``none`` means the full band);
    keyed by the resolved path and by the bare file name."""
    table: dict[str, float | None] = {}
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()
                and not row[0].lstrip().startswith("#")]
    if rows and rows[0][0].strip().lower() in ("path", "map", "file"):
        rows = rows[1:]
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            raise ConfigError(f"{path}: row {number} needs path,resolution")
        value = parse_resolution(row[1])
        resolution = None if value.full_band else value.value_A
        map_path = (path.parent / row[0].strip())
        table[str(map_path.resolve())] = resolution
        table[map_path.name] = resolution
    if not table:
        raise ConfigError(f"{path} lists no map: write one path,resolution row per map")
    return table


def choose_resolution(request: ResolutionRequest, input_path: str | os.PathLike,
                      half_map_resolution_A: float | None,
                      voxel_size_zyx: tuple[float, ...]) -> ResolutionChoice:
    """The resolution for one map, checked against what its grid can hold.

    Order: a value or CSV row given by the user; else the half-map FSC = 0.143 resolution;
    else the full band, saying so.

    Raises:
        ConfigError: The map is missing from the CSV, or the resolution is finer than the
            map's (or the network grid's) Nyquist limit.
    """
    if request.full_band:
        return ResolutionChoice(None, "--resolution none")
    if request.csv_path is not None:
        return _checked(_from_csv(request, Path(input_path)), voxel_size_zyx)
    if request.value_A is not None:
        return _checked(ResolutionChoice(request.value_A, "--resolution"), voxel_size_zyx)
    if half_map_resolution_A is not None:
        finest = nyquist_limit_A(voxel_size_zyx)
        return ResolutionChoice(max(half_map_resolution_A, finest), "half-map FSC=0.143")
    return ResolutionChoice(None, "not given")


def _from_csv(request: ResolutionRequest, input_path: Path) -> ResolutionChoice:
    """The CSV row of ``input_path`` (by resolved path, then by file name)."""
    for key in (str(input_path.resolve()), input_path.name):
        if key in request.per_map:
            value = request.per_map[key]
            return ResolutionChoice(value, "resolution CSV" if value else "--resolution none")
    raise ConfigError(f"{input_path.name} is not listed in {request.csv_path}")


def nyquist_limit_A(voxel_size_zyx: tuple[float, ...]) -> float:
    """The finest resolution a map on these voxels, enhanced on the 1 Å grid, can hold."""
    return max(FINEST_RESOLUTION_A, 2.0 * max(voxel_size_zyx))


def _checked(choice: ResolutionChoice, voxel_size_zyx: tuple[float, ...]) -> ResolutionChoice:
    """Refuse a resolution finer than the map can hold."""
    finest = nyquist_limit_A(voxel_size_zyx)
    if choice.resolution_A is not None and choice.resolution_A < finest - 1e-6:
        raise ConfigError(f"--resolution {choice.resolution_A:g} Å is finer than this map can "
                          f"hold ({finest:.2f} Å: twice its largest voxel, and at least "
                          f"{FINEST_RESOLUTION_A:g} Å); give the map's reported resolution")
    return choice


def check_listed(request: ResolutionRequest, input_paths: list[Path]) -> None:
    """Refuse, before any work, a resolution CSV that does not list every input.

    Raises:
        ConfigError: Names the first map missing from the CSV.
    """
    if request.csv_path is None:
        return
    for path in input_paths:
        _from_csv(request, path)
