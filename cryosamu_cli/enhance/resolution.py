"""Which resolution limits the enhanced map, and where that number came from.

``enhance --resolution`` takes a value in Å for every map, ``none`` (the network's full band),
or a CSV file of ``path,resolution`` rows for many maps. Without it, in this order: half maps
give their FSC = 0.143 resolution; an EMDB header XML beside the map gives the resolution EMDB
records (:mod:`cryosamu_cli.enhance.emdb_header`); else it is estimated from the map
(:mod:`cryosamu_cli.enhance.resolution_estimate`); a map that shows none is limited to the
middle of the trained range, with a line saying so. The chosen :class:`ResolutionChoice` is
recorded in the summary line, the JSON outputs and the output's header label.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cryosamu_cli.enhance import emdb_header, resolution_estimate
from cryosamu_cli.errors import ConfigError, ResolutionUnknownError
from cryosamu_cli.model.config import TRAINED_RESOLUTION_RANGE_A

ESTIMATED = "estimated from the map"
NOT_ESTIMABLE = "not estimable"  # the source when nothing gives a resolution
# Where nothing gives a resolution: the middle of the trained range. On the validation maps
# (4.5–8 Å) that limit scores CC_box / CC_mask 0.658 / 0.682 against the full band's 0.622 /
# 0.655 (5 Å: 0.649 / 0.689, 7 Å: 0.659 / 0.662; benchmarks/resolution_estimate.py --part 3).
UNKNOWN_RESOLUTION_A = sum(TRAINED_RESOLUTION_RANGE_A) / 2
# The network works on a 1 Å grid: nothing finer than its Nyquist limit can be written.
FINEST_RESOLUTION_A = 2.0


@dataclass(frozen=True)
class ResolutionChoice:
    """The resolution the output is limited to (None: the full band), its source, a note on
    it, a warning when the map lies outside what the model was trained for, and how the band
    limit was applied (``global``: one band; ``local``: each region at its own resolution)."""

    resolution_A: float | None
    source: str
    note: str = ""
    warning: str = ""
    band: str = "global"

    def summary(self) -> str:
        """Words for the summary line (with the note, e.g. a low-confidence estimate's)."""
        if self.resolution_A is None:
            if self.source == "not given":
                return ("full band: no --resolution given (pass the map's reported "
                        "resolution, --resolution R, to write only what the data support)")
            return "full band (--resolution none)"
        if self.source == NOT_ESTIMABLE:
            return (f"limited to {self.resolution_A:.2f} Å, the middle of the range the "
                    "model was trained for: the map's resolution cannot be estimated (no "
                    "post-processing edge, no signal above the solvent's noise); give it with "
                    "--resolution R")
        note = f"; {self.note}" if self.note else ""
        local = ", each region at its own resolution" if self.band == "local" else ""
        return f"limited to {self.resolution_A:.2f} Å ({self.source}){local}{note}"

    def label(self) -> str:
        """Words for the header label (ASCII, short: a label holds 80 characters)."""
        if self.resolution_A is None:
            return "full band"
        source = ("EMDB header" if self.source.startswith("EMDB header")
                  else "estimated" if self.source == ESTIMATED
                  else "not estimable" if self.source == NOT_ESTIMABLE else self.source)
        local = ", local" if self.band == "local" else ""
        return f"res {self.resolution_A:.2f} A ({source}){local}"

    def to_dict(self) -> dict:
        """For JSON reports."""
        return {"resolution_A": self.resolution_A, "resolution_source": self.source,
                "resolution_note": self.note or None,
                "resolution_warning": self.warning or None,
                "band_limit": None if self.resolution_A is None else self.band}


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


MAP_COLUMNS = ("map", "path", "file")
RESOLUTION_COLUMNS = ("resolution", "resolution_a")


def _read_csv(path: Path) -> dict[str, float | None]:
    """``path,resolution`` rows, or a CSV with a header naming its columns (``map``/``path``
    and ``resolution``/``resolution_A``, as the pairs CSV of ``prepare-data`` and ``benchmark
    quality``; rows without a resolution are left out); ``none`` means the full band. Keyed
    by the resolved path and by the bare file name.

    Raises:
        ConfigError: Names the file and row of a bad or short row, or a CSV that lists no map.
    """
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()
                and not row[0].lstrip().startswith("#")]
    map_column, resolution_column, first = 0, 1, 1
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if header and header[0] in MAP_COLUMNS or any(h in RESOLUTION_COLUMNS for h in header):
        map_column = next((header.index(c) for c in MAP_COLUMNS if c in header), 0)
        resolution_column = next((header.index(c) for c in RESOLUTION_COLUMNS if c in header), 1)
        first = 2
    else:
        rows = [[], *rows]
    table: dict[str, float | None] = {}
    for number, row in enumerate(rows[1:], first):
        if len(row) <= max(map_column, resolution_column):
            raise ConfigError(f"{path}: row {number} needs a map and a resolution "
                              "(path,resolution)")
        text = row[resolution_column].strip()
        if not text:
            continue
        try:
            value = parse_resolution(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}, row {number}: {exc}") from None
        resolution = None if value.full_band else value.value_A
        map_path = path.parent / row[map_column].strip()
        table[str(map_path.resolve())] = resolution
        table[map_path.name] = resolution
    if not table:
        raise ConfigError(f"{path} lists no map: write one path,resolution row per map")
    return table


def choose_resolution(request: ResolutionRequest, input_path: str | os.PathLike,
                      half_map_resolution_A: float | None, voxel_size_zyx: tuple[float, ...],
                      data: np.ndarray | None = None) -> ResolutionChoice:
    """The resolution for one map, checked against what its grid can hold, with a warning
    when the map lies outside the resolutions the model was trained for.

    Order: a value or CSV row given by the user; else the half-map FSC = 0.143 resolution;
    else an EMDB header XML beside the map; else an estimate from ``data`` (the map
    ``[z, y, x]``); a map that shows no resolution gets :data:`UNKNOWN_RESOLUTION_A`, and no
    data the full band, each saying so.

    Raises:
        ConfigError: The map is missing from the CSV, or the resolution is finer than the
            map's (or the network grid's) Nyquist limit.
        MetadataError: The EMDB header beside the map cannot be read.
    """
    choice = _chosen(request, input_path, half_map_resolution_A, voxel_size_zyx, data)
    return replace(choice, warning=range_warning(choice, voxel_size_zyx))


def range_warning(choice: ResolutionChoice, voxel_size_zyx: tuple[float, ...]) -> str:
    """One line when the map lies outside the trained range: voxels too coarse to hold it, or
    a resolution outside it ("" otherwise)."""
    low, high = TRAINED_RESOLUTION_RANGE_A
    trained = (f"the {low:g}–{high:g} Å the model was trained for: check the output against "
               "the input")
    coarsest_voxel = max(voxel_size_zyx)
    if 2.0 * coarsest_voxel > high:
        return (f"its {coarsest_voxel:.2f} Å voxels hold no detail finer than "
                f"{2.0 * coarsest_voxel:.1f} Å, coarser than {trained}")
    resolution = choice.resolution_A
    if resolution is None or low <= resolution <= high:
        return ""
    return f"its resolution, {resolution:.2f} Å ({choice.source}), is outside {trained}"


def _chosen(request: ResolutionRequest, input_path: str | os.PathLike,
            half_map_resolution_A: float | None, voxel_size_zyx: tuple[float, ...],
            data: np.ndarray | None) -> ResolutionChoice:
    """:func:`choose_resolution`'s choice, in its order of sources."""
    if request.full_band:
        return ResolutionChoice(None, "--resolution none")
    if request.csv_path is not None:
        return _checked(_from_csv(request, Path(input_path)), voxel_size_zyx)
    if request.value_A is not None:
        return _checked(ResolutionChoice(request.value_A, "--resolution"), voxel_size_zyx)
    finest = nyquist_limit_A(voxel_size_zyx)
    if half_map_resolution_A is not None:
        return ResolutionChoice(max(half_map_resolution_A, finest), "half-map FSC=0.143")
    header = _header_resolution(input_path)
    if header is not None:
        return ResolutionChoice(max(header[0], finest), f"EMDB header {header[1]}")
    if data is None:
        return ResolutionChoice(None, "not given")
    return _estimated(data, voxel_size_zyx, finest)


def _header_resolution(input_path: str | os.PathLike) -> tuple[float, str] | None:
    """(resolution, XML file name) of an EMDB header beside the map that records one."""
    path = emdb_header.header_beside(input_path)
    if path is None:
        return None
    header = emdb_header.read_header(path)
    return (header.resolution_A, path.name) if header.resolution_A is not None else None


def _estimated(data: np.ndarray, voxel_size_zyx: tuple[float, ...],
               finest: float) -> ResolutionChoice:
    """The resolution estimated from the map, with a note when the estimate is weak; the
    middle of the trained range when the map shows none."""
    try:
        estimate = resolution_estimate.estimate_resolution(data, voxel_size_zyx)
    except ResolutionUnknownError:
        return ResolutionChoice(max(UNKNOWN_RESOLUTION_A, finest), NOT_ESTIMABLE)
    note = ("" if estimate.confident else
            f"low confidence ({estimate.method}, {estimate.detail}): if you know the map's "
            "resolution, give it with --resolution R")
    return ResolutionChoice(round(max(estimate.resolution_A, finest), 2),
                            ESTIMATED, note)


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
