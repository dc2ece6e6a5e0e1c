"""Map–model pair lists (CSV), shared by ``prepare-data`` and ``benchmark quality``."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryosamu_cli.errors import ConfigError


@dataclass(frozen=True)
class Pair:
    """One row of a pairs CSV.

    Attributes:
        name: The row's ``name``, or ``pair<N>``.
        map_path: The map (relative paths resolved against the CSV's folder).
        model_path: The model.
        resolution_A: ``resolution`` or ``resolution_A``; None when empty.
        split: ``split`` or ``role`` column (train/val/test/eval/...), or "".
        extra_maps: ``<label>_map`` columns: other maps to compare.
        columns: Every column of the row as read, kept for manifests.
    """

    name: str
    map_path: Path
    model_path: Path
    resolution_A: float | None
    split: str = ""
    extra_maps: dict[str, Path] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)


def read_pairs(csv_path: str | os.PathLike, role: str | None = None) -> list[Pair]:
    """Read a pairs CSV: ``map``, ``model``, ``resolution`` (or ``resolution_A``), optional
    ``name``, ``split``/``role``, ``<label>_map`` columns and anything else (kept as is).

    Args:
        csv_path: The CSV file.
        role: Keep only rows whose ``split`` or ``role`` equals this.

    Raises:
        ConfigError: Missing file, required columns, or an unreadable resolution.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ConfigError(f"pairs file not found: {csv_path}")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"map", "model"} <= set(rows[0]):
        raise ConfigError(f"{csv_path} needs a header with at least 'map', 'model' and "
                          "'resolution' columns")
    pairs = [_pair_of(row, i, csv_path.parent) for i, row in enumerate(rows)]
    return [p for p in pairs if role is None or role in (p.split, p.columns.get("role"))]


def _pair_of(row: dict[str, str], index: int, base: Path) -> Pair:
    """One CSV row as a :class:`Pair`."""
    text = (row.get("resolution") or row.get("resolution_A") or "").strip()
    try:
        resolution = float(text) if text else None
    except ValueError as exc:
        raise ConfigError(f"row {index + 2}: resolution '{text}' is not a number") from exc
    extras = {k[:-4]: base / v for k, v in row.items() if k.endswith("_map") and v}
    return Pair(name=row.get("name") or f"pair{index + 1}", map_path=base / row["map"],
                model_path=base / row["model"], resolution_A=resolution,
                split=(row.get("split") or row.get("role") or "").strip(),
                extra_maps=extras, columns={k: v for k, v in row.items() if k})
