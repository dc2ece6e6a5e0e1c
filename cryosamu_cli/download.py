"""Streamed downloads with retries, size and checksum checks, and atomic placement; and the
EMDB/PDB look-ups of ``prepare-data``.

Every download streams into a process-unique ``<target>.<pid>.<random>.partial`` beside the
target, which replaces the target only when the transfer is complete (and its SHA-256 matches,
when one is known); the partial file is removed whatever happens.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cryosamu_cli.errors import DownloadError

Progress = Callable[[int, "int | None"], None]
OFFLINE_ENV = "CRYOSAMU_OFFLINE"
EMDB_URL_ENV = "CRYOSAMU_EMDB_URL"
RCSB_URL_ENV = "CRYOSAMU_RCSB_URL"
EMDB_URL = "https://ftp.ebi.ac.uk/pub/databases/emdb/structures"
RCSB_URL = "https://files.rcsb.org/download"
EMDB_ID = re.compile(r"^(?:EMD|EMDB)[-_]?(\d{4,5})$", re.IGNORECASE)
PDB_ID = re.compile(r"^[0-9][0-9A-Za-z]{3}$")
_CHUNK = 1 << 20


def fetch(url: str, target: Path, *, sha256: str | None = None, size: int | None = None,
          retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 30.0,
          progress: Progress | None = None, label: str = "") -> Path:
    """Download ``url`` to ``target`` atomically, retrying connection errors and HTTP 5xx.

    Raises:
        DownloadError: HTTP error, connection lost after the retries, wrong size or checksum.
    """
    import requests

    label = label or url
    for attempt in range(1, retries + 1):
        try:
            return _fetch_once(url, target, sha256, size, timeout_s, progress, label)
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError, _Retry) as exc:
            if attempt == retries:
                reason = str(exc) if isinstance(exc, _Retry) else type(exc).__name__
                raise DownloadError(f"download of {label} from {url} failed after {retries} "
                                    f"attempts ({reason})") from exc
            time.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")


class _Retry(Exception):
    """A transient failure worth another attempt."""


def _fetch_once(url: str, target: Path, sha256: str | None, size: int | None,
                timeout_s: float, progress: Progress | None, label: str) -> Path:
    import requests  # noqa: F401 (imported here so that --help stays fast)

    partial = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            if response.status_code >= 500:
                raise _Retry(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise DownloadError(f"download of {label} from {url} failed: "
                                    f"HTTP {response.status_code}")
            announced = int(response.headers.get("Content-Length") or 0) or None
            digest, received = _stream(response, partial, announced or size, progress)
        _check(label, received, announced, size, digest, sha256)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _stream(response, partial: Path, total: int | None,
            progress: Progress | None) -> tuple[str, int]:
    """Write the body to ``partial`` while hashing it; return (sha256, bytes)."""
    digest, received = hashlib.sha256(), 0
    with open(partial, "wb") as handle:
        for chunk in response.iter_content(chunk_size=_CHUNK):
            handle.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            if progress is not None:
                progress(received, total)
    return digest.hexdigest(), received


def _check(label: str, received: int, announced: int | None, size: int | None, digest: str,
           sha256: str | None) -> None:
    """Refuse a transfer shorter than announced, of the wrong size, or the wrong checksum."""
    expected = size if size is not None else announced
    if expected is not None and received != expected:
        raise DownloadError(f"download of {label} is incomplete: {received} of {expected} bytes")
    if sha256 is not None and digest != sha256:
        raise DownloadError(f"download of {label} has SHA-256 {digest[:12]}…, expected "
                            f"{sha256[:12]}…; the file was discarded")


def is_offline() -> bool:
    """Whether ``CRYOSAMU_OFFLINE`` forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def ensure_writable(folder: Path, hint: str) -> None:
    """Create ``folder`` or explain (with ``hint``) how to choose another one."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.").close()
    except OSError as exc:
        raise DownloadError(f"cache folder {folder} is not writable ({exc.strerror}); "
                            f"{hint}") from exc


def resolve_map(path: Path, cache: Path, progress: Progress | None = None) -> Path:
    """``path`` itself when it exists; else, when its name is an EMDB ID (``EMD-5168``), the
    map fetched from EMDB into ``cache/emdb`` (or found there)."""
    match = EMDB_ID.match(path.name)
    if path.exists() or match is None:
        return path
    number = match.group(1)
    target = cache / "emdb" / f"emd_{number}.map.gz"
    if not target.is_file():
        ensure_writable(target.parent, "set CRYOSAMU_CACHE_DIR to a writable folder")
        fetch(f"{emdb_entry_url(number)}/map/{target.name}", target, progress=progress,
              label=f"EMD-{number}")
    return target


def without_map_suffix(name: str) -> str:
    """``EMD-1997.map`` → ``EMD-1997`` (``.map``, ``.mrc``, optionally ``.gz``, dropped)."""
    return re.sub(r"\.(map|mrc)(\.gz)?$", "", name, flags=re.IGNORECASE)


def emdb_entry_url(number: str) -> str:
    """The EMDB folder of entry ``number`` (``$CRYOSAMU_EMDB_URL`` overrides the server)."""
    return f"{os.environ.get(EMDB_URL_ENV, EMDB_URL).rstrip('/')}/EMD-{number}"


def resolve_emdb_entry(entry: str, cache: Path, progress: Progress | None = None) -> Path:
    """The map of EMDB entry ``entry`` (``EMD-1997``, ``emd_1997``, ``EMD-1997.map``) in
    ``cache/emdb``, fetched with its header XML (``emd-NNNN-v30.xml``, beside it, where the
    resolution is read from) when not there yet.

    Raises:
        DownloadError: Not an EMDB ID; offline (``CRYOSAMU_OFFLINE``) and not cached (says
            what to download); or the download failed.
    """
    match = EMDB_ID.match(without_map_suffix(entry))
    if match is None:
        raise DownloadError(f"{entry} is neither a file nor an EMDB ID (EMD-NNNN)")
    number = match.group(1)
    folder = cache / "emdb"
    map_path, header = folder / f"emd_{number}.map.gz", folder / f"emd-{number}-v30.xml"
    missing = [p for p in (map_path, header) if not p.is_file()]
    if missing and is_offline():  # one line naming every missing file
        raise DownloadError(
            f"EMD-{number} is not in the cache ({folder}) and {OFFLINE_ENV} is set: download "
            f"{' and '.join(p.name for p in missing)} from {emdb_entry_url(number)}/ "
            f"(map/, header/) into that folder, or pass the map's path")
    resolve_emdb_file(number, "header", header.name, cache, progress)
    return resolve_map(Path(f"EMD-{number}"), cache, progress)


def resolve_emdb_file(number: str, subfolder: str, name: str, cache: Path,
                      progress: Progress | None = None) -> Path:
    """The file ``name`` of EMDB entry ``number``'s ``subfolder`` (``header``, ``other`` for
    half maps) in ``cache/emdb``, fetched when not there yet.

    Raises:
        DownloadError: Offline (``CRYOSAMU_OFFLINE``) and not cached, or the download failed.
    """
    target = cache / "emdb" / name
    if target.is_file():
        return target
    if is_offline():
        raise DownloadError(f"{name} of EMD-{number} is not in the cache ({target.parent}) and "
                            f"{OFFLINE_ENV} is set: download it from "
                            f"{emdb_entry_url(number)}/{subfolder}/ into that folder")
    ensure_writable(target.parent, "set CRYOSAMU_CACHE_DIR to a writable folder")
    return fetch(f"{emdb_entry_url(number)}/{subfolder}/{name}", target, progress=progress,
                 label=f"EMD-{number} {name}")


def resolve_model(path: Path, cache: Path, progress: Progress | None = None) -> Path:
    """``path`` itself when it exists; else, when its name is a PDB ID (``3MFP``), the mmCIF
    fetched from RCSB into ``cache/pdb`` (or found there)."""
    if path.exists() or PDB_ID.match(path.name) is None:
        return path
    code = path.name.upper()
    target = cache / "pdb" / f"{code}.cif.gz"
    if not target.is_file():
        ensure_writable(target.parent, "set CRYOSAMU_CACHE_DIR to a writable folder")
        root = os.environ.get(RCSB_URL_ENV, RCSB_URL).rstrip("/")
        fetch(f"{root}/{code}.cif.gz", target, progress=progress, label=code)
    return target
