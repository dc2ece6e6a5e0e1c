"""Atomic file creation: write to a temporary file beside the target, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; move it onto ``path`` if the block succeeds.

    Whatever happens inside the block, no partial file is left and an existing ``path`` is only
    replaced by a complete new file. The new file gets the permissions of the file it replaces,
    or those a plain ``open()`` would give (``0o666`` less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.chmod(tmp_name, _mode_for(path))
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _mode_for(path: Path) -> int:
    """Permission bits for a new file at ``path``."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextmanager
def folder_removed_if_left_empty(path: str | os.PathLike) -> Iterator[Path]:
    """Make the folder ``path`` (and its missing parents) for the block; on leaving it, remove
    again each folder this made that is still empty, so a command that failed before writing
    anything leaves no empty folders behind (what it did write stays, e.g. for ``--resume``).
    """
    path = Path(path)
    made = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        for folder in made:  # the deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it and everything above it
                break
