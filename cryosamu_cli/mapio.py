"""Every MRC/CCP4 read and write of cryosamu.

Maps are handed around as ``data[z, y, x]`` float32 arrays (canonical axis order) plus a
:class:`GridInfo` that remembers everything needed to write a result onto exactly the same grid:
voxel size, origin, nxstart/nystart/nzstart, cell, sampling, axis order, space group and labels.
Nothing here knows about torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import mrcfile
import numpy as np

from cryosamu_cli import __version__
from cryosamu_cli.atomic import atomic_target
from cryosamu_cli.errors import InvalidMapError, MapReadError, OutputError

MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".mrcs", ".rec")
_AXIS_LETTERS = {1: "X", 2: "Y", 3: "Z"}
_MAX_LABELS = 10


@dataclass(frozen=True)
class GridInfo:
    """Geometry and identity of a map as read from its header.

    Tuples in file-independent order are (x, y, z); ``nstart`` and ``axis_order`` are in file
    order (columns, rows, sections), exactly as stored in the header.

    Attributes:
        shape_zyx: Shape of the canonical ``data[z, y, x]`` array.
        voxel_size_A: Voxel size along x, y, z in Å.
        origin_A: Header ``origin`` (x, y, z) in Å.
        nstart: Header ``nxstart, nystart, nzstart`` (columns, rows, sections).
        cell_A: Cell lengths a, b, c in Å.
        cell_angles: Cell angles alpha, beta, gamma in degrees.
        sampling: Header ``mx, my, mz``.
        axis_order: Header ``mapc, mapr, maps``.
        space_group: Header ``ispg``.
        labels: Text labels of the header, in order.
    """

    shape_zyx: tuple[int, int, int]
    voxel_size_A: tuple[float, float, float]
    origin_A: tuple[float, float, float]
    nstart: tuple[int, int, int]
    cell_A: tuple[float, float, float]
    cell_angles: tuple[float, float, float]
    sampling: tuple[int, int, int]
    axis_order: tuple[int, int, int]
    space_group: int
    labels: tuple[str, ...] = field(default=())

    @property
    def voxel_size_zyx(self) -> tuple[float, float, float]:
        """Voxel size in Å in the order of the canonical array axes (z, y, x)."""
        x, y, z = self.voxel_size_A
        return (z, y, x)

    @property
    def nstart_xyz(self) -> tuple[int, int, int]:
        """Header nstart along x, y, z (whatever the file's axis order)."""
        return tuple(self.nstart[self.axis_order.index(axis)] for axis in (1, 2, 3))

    @property
    def axis_order_text(self) -> str:
        """Axis order as letters, e.g. ``'ZXY'`` for mapc, mapr, maps = 3, 1, 2."""
        return "".join(_AXIS_LETTERS[a] for a in self.axis_order)


def grid_origin_xyz(grid) -> tuple[float, float, float]:
    """Position in Å of voxel ``[0, 0, 0]``: header origin plus nstart × voxel size."""
    return tuple(o + n * v for o, n, v in zip(grid.origin_A, grid.nstart_xyz, grid.voxel_size_A))


def read_map(path: str | os.PathLike) -> tuple[np.ndarray, GridInfo]:
    """Read an MRC/CCP4 map (optionally gzipped) into canonical order.

    Args:
        path: A .mrc, .map or .ccp4 file, or one of those with .gz.

    Returns:
        ``(data, grid)`` with ``data`` a C-contiguous float32 array indexed ``[z, y, x]``.

    Raises:
        MapReadError: The file is missing, not an MRC file, or truncated.
        InvalidMapError: The map is not a 3D volume, its cell is not orthogonal, or it holds
            NaN/Inf values.
    """
    path = Path(path)
    if path.is_dir():
        raise MapReadError(f"{path} is a folder, not a map file (give the maps, e.g. "
                           f"'{path}/*.mrc')")
    if not path.is_file():
        raise MapReadError(f"map file not found: {path}")
    with _open_file(path) as (file_data, header):
        grid = _grid_from_header(header, path)
        # one copy, straight from the (memory-mapped) file into canonical order and float32
        data = np.array(np.transpose(file_data, _file_to_zyx(grid.axis_order)),
                        dtype=np.float32, order="C", copy=True)
    _check_finite(data, path)
    return data, replace(grid, shape_zyx=tuple(int(n) for n in data.shape))


@contextmanager
def _open_file(path: Path) -> Iterator[tuple[np.ndarray, np.recarray]]:
    """Open ``path`` with mrcfile and yield its data (file order) and a copy of its header.

    Uncompressed files are memory-mapped, so only the pages read are loaded and the caller's
    copy is the only one held in memory. mrcfile is used in permissive mode so that real EMDB
    files with a wrong machine stamp still read; a missing map ID or a data block that cannot
    be read is fatal.
    """
    opener = mrcfile.open if path.name.lower().endswith((".gz", ".bz2")) else mrcfile.mmap
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with opener(path, mode="r", permissive=True) as mrc:
                problems = [str(w.message) for w in caught]
                if any("Map ID string not found" in p for p in problems):
                    raise MapReadError(f"{path} is not an MRC/CCP4 map (no MAP ID in its header)")
                if mrc.data is None:
                    _check_complete(path, mrc.header)
                    reason = problems[-1] if problems else "no data block"
                    raise MapReadError(f"cannot read the data of {path}: {reason}")
                yield mrc.data, mrc.header.copy()
    except (MapReadError, InvalidMapError):
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise MapReadError(f"cannot read {path} as an MRC/CCP4 map: {_first_line(exc)}") from exc


def _check_complete(path: Path, header: np.recarray) -> None:
    """Refuse, in words, an uncompressed file shorter than its header announces.

    Raises:
        MapReadError: Names the bytes announced and the bytes there.
    """
    if path.name.lower().endswith((".gz", ".bz2")):
        return
    try:
        item = mrcfile.utils.data_dtype_from_header(header).itemsize
    except ValueError:
        return
    expected = (1024 + int(header.nsymbt)
                + int(header.nx) * int(header.ny) * int(header.nz) * item)
    actual = path.stat().st_size
    if actual < expected:
        raise MapReadError(f"{path} is truncated: its header announces {expected:,} bytes, the "
                           f"file has {actual:,} (download or copy it again)")


def _grid_from_header(header: np.recarray, path: Path) -> GridInfo:
    """Build a :class:`GridInfo` from an mrcfile header, refusing what cannot be handled."""
    if int(header.nz) < 2 or int(header.ny) < 2 or int(header.nx) < 2:
        raise InvalidMapError(f"{path} is not a 3D volume (nx, ny, nz = "
                              f"{int(header.nx)}, {int(header.ny)}, {int(header.nz)})")
    angles = tuple(float(a) for a in header.cellb.tolist())
    if any(abs(a - 90.0) > 1e-3 for a in angles) and any(a != 0.0 for a in angles):
        raise InvalidMapError(
            f"{path} has a non-orthogonal cell (angles {angles[0]:g}, {angles[1]:g}, "
            f"{angles[2]:g}); resample it onto an orthogonal grid first")
    axis_order = (int(header.mapc), int(header.mapr), int(header.maps))
    if sorted(axis_order) != [1, 2, 3]:
        raise InvalidMapError(f"{path} has an invalid axis order mapc/mapr/maps = {axis_order}")
    cell = tuple(float(c) for c in header.cella.tolist())
    sampling = (int(header.mx), int(header.my), int(header.mz))
    if min(cell) <= 0 or min(sampling) <= 0:
        raise InvalidMapError(f"{path} has no valid voxel size (cell {cell}, sampling {sampling})")
    return GridInfo(
        shape_zyx=(0, 0, 0),
        voxel_size_A=tuple(c / m for c, m in zip(cell, sampling)),
        origin_A=tuple(float(o) for o in header.origin.tolist()),
        nstart=(int(header.nxstart), int(header.nystart), int(header.nzstart)),
        cell_A=cell,
        cell_angles=angles,
        sampling=sampling,
        axis_order=axis_order,
        space_group=int(header.ispg),
        labels=_labels_from_header(header),
    )


def _labels_from_header(header: np.recarray) -> tuple[str, ...]:
    """The header's text labels, decoded and stripped."""
    count = min(int(header.nlabl), _MAX_LABELS)
    return tuple(bytes(header.label[i]).decode("ascii", "replace").rstrip(" \x00")
                 for i in range(count))


def _file_to_zyx(axis_order: tuple[int, int, int]) -> tuple[int, int, int]:
    """Transpose that takes a file-order array (sections, rows, columns) to ``[z, y, x]``."""
    file_axes = (axis_order[2], axis_order[1], axis_order[0])
    return (file_axes.index(3), file_axes.index(2), file_axes.index(1))


def _zyx_to_file(axis_order: tuple[int, int, int]) -> tuple[int, int, int]:
    """Inverse of :func:`_file_to_zyx`."""
    return tuple(int(i) for i in np.argsort(_file_to_zyx(axis_order)))


def _check_finite(data: np.ndarray, path: Path) -> None:
    """Refuse maps with NaN or infinite values."""
    if not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise InvalidMapError(f"{path} contains {bad} NaN or infinite values")


def check_same_grid(grid: GridInfo, other: GridInfo, what: str) -> None:
    """Check that ``other`` (a half map or mask) lies on the same voxels as ``grid``.

    Shape, voxel size, origin and nstart are compared along x, y, z, so a file written in
    another axis order but on the same voxels is accepted.

    Raises:
        InvalidMapError: Naming the first field that differs.
    """
    checks = (("shape (z, y, x)", grid.shape_zyx, other.shape_zyx, 0.0),
              ("voxel size", grid.voxel_size_A, other.voxel_size_A, 1e-3),
              ("origin", grid.origin_A, other.origin_A, 1e-2),
              ("nstart (x, y, z)", grid.nstart_xyz, other.nstart_xyz, 0.0))
    for name, mine, theirs, tolerance in checks:
        if any(abs(a - b) > tolerance for a, b in zip(mine, theirs)):
            raise InvalidMapError(f"{what} is not on the map's grid: {name} {tuple(theirs)} "
                                  f"differs from {tuple(mine)}")


def check_output_path(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Check that ``path`` can be written before any work is done.

    Raises:
        OutputError: The file exists (and ``force`` is false), is a folder, or its folder is
            missing or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output path is a folder: {path}")
    if path.exists() and not force:
        raise OutputError(f"output file exists: {path} (use --force to overwrite)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    return path


def write_map(path: str | os.PathLike, data: np.ndarray, grid: GridInfo, *,
              force: bool = False, note: str = "enhanced") -> Path:
    """Write ``data[z, y, x]`` onto the grid of ``grid`` atomically.

    Every geometric header field (cell, sampling, origin, nstart, axis order, space group) and
    the labels equal the input's; a label naming cryosamu and its version is added, and the
    statistics are recomputed. The file is written to a temporary file in the target folder and
    moved into place with ``os.replace``, so a failure never leaves a partial or clobbered file.

    Args:
        path: Output path; ``.gz`` writes a gzipped map.
        data: Array of shape ``grid.shape_zyx``.
        grid: Grid of the input map.
        force: Overwrite an existing file.
        note: Word describing what cryosamu did, used in the label.

    Raises:
        OutputError: See :func:`check_output_path`, or the write itself failed.
    """
    path = check_output_path(path, force=force)
    if tuple(data.shape) != tuple(grid.shape_zyx):
        raise ValueError(f"data shape {data.shape} does not match grid {grid.shape_zyx}")
    file_data = np.ascontiguousarray(np.transpose(data, _zyx_to_file(grid.axis_order)),
                                     dtype=np.float32)
    try:
        with atomic_target(path) as tmp:
            _write_file(tmp, file_data, grid, note, gzip=path.suffix == ".gz")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_first_line(exc)}") from exc
    return path


def _write_file(tmp: Path, file_data: np.ndarray, grid: GridInfo, note: str, gzip: bool) -> None:
    """Write one MRC file with the header fields of ``grid``."""
    with mrcfile.new(tmp, overwrite=True, compression="gzip" if gzip else None) as mrc:
        mrc.header.ispg = grid.space_group
        mrc.set_data(file_data)
        header = mrc.header
        header.cella = grid.cell_A
        header.cellb = grid.cell_angles
        header.mx, header.my, header.mz = grid.sampling
        header.mapc, header.mapr, header.maps = grid.axis_order
        header.nxstart, header.nystart, header.nzstart = grid.nstart
        header.origin = grid.origin_A
        _set_labels(header, (*grid.labels, f"cryosamu {__version__}: {note}"))
        mrc.update_header_stats()


def _set_labels(header: np.recarray, labels: tuple[str, ...]) -> None:
    """Store up to ten labels; when full, the newest label replaces the last one."""
    if len(labels) > _MAX_LABELS:
        labels = (*labels[: _MAX_LABELS - 1], labels[-1])
    header.label = [lab.encode("ascii", "replace")[:80] for lab in labels] + \
        [b""] * (_MAX_LABELS - len(labels))
    header.nlabl = len(labels)


def _first_line(exc: BaseException) -> str:
    """First line of an exception's message (mrcfile messages can span lines)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
