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


def pairs_to_score(inputs: list[str | os.PathLike], resolution_A: float | None = None,
                   role: str | None = None) -> list[Pair]:
    """What ``benchmark quality`` scores: a pairs CSV (:func:`read_pairs`), or one map and its
    model with ``resolution_A`` (as ``phenix.map_model_cc map model resolution=R``).

    Raises:
        ConfigError: Neither form, a missing file, or the one-pair form without a positive
            resolution.
    """
    if len(inputs) == 1:
        if resolution_A is not None:
            raise ConfigError("--resolution goes with the one-pair form (MAP MODEL); a pairs "
                              "CSV gives each pair's resolution in its 'resolution' column")
        return read_pairs(inputs[0], role=role)
    if len(inputs) != 2:
        raise ConfigError(f"give a pairs CSV, or a map and its model; got {len(inputs)} files")
    map_path, model_path = (Path(p) for p in inputs)
    for path in (map_path, model_path):
        if not path.is_file():
            raise ConfigError(f"file not found: {path}")
    if resolution_A is None or not resolution_A > 0:
        raise ConfigError("give the map's resolution with --resolution R (Å): the scores "
                          "are computed at it, as phenix.map_model_cc's resolution=")
    return [Pair(name=map_path.name.split(".")[0], map_path=map_path, model_path=model_path,
                 resolution_A=resolution_A)]
