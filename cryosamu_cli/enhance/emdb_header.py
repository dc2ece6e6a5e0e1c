"""EMDB header XML: the resolution (and voxel size, half maps) EMDB records for an entry.

EMDB distributes one header per entry, in its schema 3 (``emd-NNNN-v30.xml``; the map's
``<pixel_spacing>`` and the ``<final_reconstruction><resolution>`` of its structure
determination) and, for older copies, schema 1.9 (``emd-NNNN.xml``: ``<pixelSpacing>`` and
``<resolutionByAuthor>``). A header is looked for beside the map (``emd-NNNN.xml``,
``emd-NNNN-v30.xml``, ``header/emd-NNNN*.xml``), NNNN taken from the map's file name.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from cryosamu_cli.errors import ConfigError, MetadataError

ENTRY_NUMBER = re.compile(r"(?:^|[^0-9a-z])emd[-_]?(\d{4,5})(?![0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class EmdbHeader:
    """What an EMDB header says of its entry.

    Attributes:
        entry: ``EMD-NNNN``.
        resolution_A: The resolution by author (None when the header has none).
        voxel_size_A: The map's pixel spacing (x, y, z), or None.
        half_maps: File names of the entry's half maps (schema 3 only).
        path: The XML file read.
    """

    entry: str
    resolution_A: float | None
    voxel_size_A: tuple[float, float, float] | None
    half_maps: tuple[str, ...]
    path: Path


def entry_number(name: str) -> str | None:
    """The EMDB number in a file name or ID (``emd_1997.map``, ``EMD-1997``), else None."""
    match = ENTRY_NUMBER.search(name)
    return match.group(1) if match else None


def header_beside(map_path: str | os.PathLike) -> Path | None:
    """The EMDB header XML lying beside ``map_path`` (the first of ``emd-NNNN.xml``,
    ``emd-NNNN-v30.xml``, ``header/emd-NNNN*.xml``), or None."""
    path = Path(map_path)
    number = entry_number(path.name)
    if number is None:
        return None
    folder = path.parent
    candidates = [folder / f"emd-{number}.xml", folder / f"emd-{number}-v30.xml",
                  *sorted((folder / "header").glob(f"emd-{number}*.xml"))]
    return next((c for c in candidates if c.is_file()), None)


def read_header(path: str | os.PathLike) -> EmdbHeader:
    """Read an EMDB header XML (schema 3 or 1.9).

    Raises:
        MetadataError: Not XML, or not an EMDB header, or a resolution that is not a number.
    """
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise MetadataError(f"{path.name} is not a readable EMDB header XML ({exc})") from exc
    entry = root.get("emdb_id") or root.get("accessCode")
    if root.tag not in ("emd", "emdEntry") or not entry:
        raise MetadataError(f"{path.name} is not an EMDB header (root <{root.tag}>, expected "
                         "<emd emdb_id=...> or <emdEntry accessCode=...>)")
    resolution = _number(path, root.find(".//final_reconstruction/resolution")
                         if root.tag == "emd" else root.find(".//resolutionByAuthor"))
    spacing = (root.find("./map/pixel_spacing") if root.tag == "emd"
               else root.find("./map/pixelSpacing"))
    voxel = None
    if spacing is not None and len(spacing) == 3:
        voxel = tuple(_number(path, child) for child in spacing)
    half_maps = tuple(f.text.strip() for f in root.findall(".//half_map_list/half_map/file")
                      if f.text)
    return EmdbHeader(entry.upper(), resolution, voxel, half_maps, path)


def _number(path: Path, element) -> float | None:
    """The positive number an element holds (None without the element)."""
    if element is None or element.text is None:
        return None
    try:
        value = float(element.text.strip())
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise MetadataError(f"{path.name}: <{element.tag}> holds '{element.text.strip()}', not a "
                         "positive number")
    return value


def fetch_half_maps(map_path: str | os.PathLike, cache: Path,
                    progress=None) -> tuple[Path, Path]:
    """The two half maps that the EMDB header beside ``map_path`` lists, from the cache or
    fetched from the entry's ``other/`` folder.

    Raises:
        ConfigError: No header beside the map, or it lists fewer than two half maps.
        DownloadError: A half map cannot be had.
    """
    from cryosamu_cli import download

    path = header_beside(map_path)
    if path is None:
        raise ConfigError(f"--half-maps needs an EMDB entry (EMD-NNNN) or its header XML beside "
                          f"{Path(map_path).name}")
    header = read_header(path)
    if len(header.half_maps) < 2:
        raise ConfigError(f"{header.entry} lists no half maps in its header ({path.name}): run "
                          "without --half-maps")
    number = header.entry.split("-")[-1]
    first, second = (download.resolve_emdb_file(number, "other", name, cache, progress)
                     for name in header.half_maps[:2])
    return first, second
