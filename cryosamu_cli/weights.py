"""Pretrained weights: manifest, lookup order, cache, checksummed download, checkpoints.

Lookup order for ``cryosamu enhance``: an explicit ``--weights PATH``; the user cache
(``platformdirs.user_cache_dir("cryosamu")`` or ``$CRYOSAMU_CACHE_DIR``); the copy shipped in
the package; a streamed, SHA-256-checked download into the cache. ``CRYOSAMU_OFFLINE=1`` turns
a download into an error that says how to get the file.

A checkpoint is ``{"format": 1, "config": UNetConfig.to_dict(), "state_dict": ...}`` saved with
``torch.save`` and loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from cryosamu_cli import download
from cryosamu_cli.download import OFFLINE_ENV, is_offline
from cryosamu_cli.atomic import atomic_target, write_text_atomic
from cryosamu_cli.errors import ConfigError, WeightsError

CHECKPOINT_FORMAT = 1
CACHE_ENV = "CRYOSAMU_CACHE_DIR"
MIRROR_ENV = "CRYOSAMU_WEIGHTS_URL"
_CHUNK = 1 << 20

DownloadProgress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained model of the manifest.

    Attributes:
        name: Registry name, e.g. ``cryosamu-light-v1``.
        file: File name in the cache and in the shipped folder.
        url: Where to download it from ("" for a model that only ships inside the package;
            ``$CRYOSAMU_WEIGHTS_URL/<file>`` overrides it, for mirrors).
        sha256: Full SHA-256 of the file.
        size: Size in bytes.
        config: The model's :class:`UNetConfig` as a dictionary.
        description: One line for ``cryosamu weights list``.
    """

    name: str
    file: str
    url: str
    sha256: str
    size: int
    config: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class EncoderWeightsEntry:
    """Published weights of a structure encoder that ``prepare-data`` uses (not a U-Net).

    Attributes:
        name: Registry name, e.g. ``proteinmpnn-v_48_020``.
        file: File name in the cache.
        url: Upstream download address.
        sha256: Full SHA-256 of the file.
        size: Size in bytes.
        licence: The weights' licence.
        description: One line for ``cryosamu weights list``.
    """

    name: str
    file: str
    url: str
    sha256: str
    size: int
    licence: str = ""
    description: str = ""


@dataclass(frozen=True)
class Manifest:
    """The registry of pretrained models (and of the structure encoders' weights) and which
    model ``enhance`` uses by default."""

    entries: dict[str, WeightsEntry]
    default: str | None = None
    encoders: dict[str, EncoderWeightsEntry] = field(default_factory=dict)

    def encoder(self, name: str) -> EncoderWeightsEntry:
        """The structure encoder weights called ``name``.

        Raises:
            WeightsError: No such entry.
        """
        if name not in self.encoders:
            known = ", ".join(sorted(self.encoders)) or "none"
            raise WeightsError(f"unknown encoder weights '{name}' (known: {known})")
        return self.encoders[name]

    def any_entry(self, name: str | None) -> WeightsEntry | EncoderWeightsEntry:
        """A model or encoder entry by name (the default model when ``name`` is None)."""
        return self.encoders[name] if name in self.encoders else self.get(name)

    def get(self, name: str | None = None) -> WeightsEntry:
        """The entry called ``name``, or the default one.

        Raises:
            WeightsError: No such entry, or no default model exists.
        """
        name = name or self.default
        if name is None:
            raise WeightsError("no pretrained CryoSAMU model is shipped with this version; pass "
                               "--weights PATH to a checkpoint made by 'cryosamu train'")
        if name not in self.entries:
            known = ", ".join(sorted(self.entries)) or "none"
            raise WeightsError(f"unknown weights name '{name}' (known: {known})")
        return self.entries[name]


def shipped_weights_dir() -> Path:
    """Folder of the weights shipped with the package (or with the source checkout)."""
    inside_package = Path(__file__).resolve().parent / "weights"
    if (inside_package / "manifest.json").is_file():
        return inside_package
    return Path(__file__).resolve().parents[1] / "weights"


def load_manifest(path: Path | None = None) -> Manifest:
    """Read ``manifest.json`` (by default the shipped one).

    Raises:
        WeightsError: The manifest is missing or malformed.
    """
    path = path or shipped_weights_dir() / "manifest.json"
    try:
        raw = json.loads(Path(path).read_text())
        entries = {name: WeightsEntry(name=name, **fields) for name, fields in raw["models"].items()}
        encoders = {name: EncoderWeightsEntry(name=name, **fields)
                    for name, fields in raw.get("encoders", {}).items()}
        return Manifest(entries=entries, default=raw.get("default"), encoders=encoders)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read weights manifest {path}: {exc}") from exc


def cache_dir() -> Path:
    """Where downloaded weights live: ``$CRYOSAMU_CACHE_DIR`` or the platform's user cache."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("cryosamu"))


def resolve_weights(weights: str | os.PathLike | None = None, *, name: str | None = None,
                    manifest: Manifest | None = None,
                    progress: DownloadProgress | None = None) -> Path:
    """Find the checkpoint to use, downloading it into the cache if needed.

    Args:
        weights: An explicit checkpoint path, used as is when it exists; otherwise a name of
            the manifest (``cryosamu-light-v1``), as DeepEMhancer's ``-p`` takes names.
        name: Manifest entry to use instead of the default.
        manifest: Registry to use (default: the shipped manifest).
        progress: Download progress callback ``(bytes_done, bytes_total)``.

    Raises:
        WeightsError: The explicit file is missing (and is no manifest name), no model is
            available, or offline mode forbids the download.
        DownloadError: The download failed.
    """
    manifest = manifest or load_manifest()
    if weights is not None and not Path(weights).is_file() and str(weights) in manifest.entries:
        name, weights = str(weights), None
    if weights is not None:
        return _existing_file(weights, "weights", known=sorted(manifest.entries))
    return _local_or_downloaded(manifest.get(name), progress, "--weights")


def resolve_encoder_weights(name: str, weights: str | os.PathLike | None = None, *,
                            manifest: Manifest | None = None,
                            progress: DownloadProgress | None = None) -> Path:
    """A structure encoder's weights file: ``weights`` when given, else the manifest entry
    ``name`` from the cache, downloaded (SHA-256 checked) on first use.

    Raises:
        WeightsError: The explicit file is missing, the name is unknown, or offline mode
            forbids the download.
        DownloadError: The download failed.
    """
    if weights is not None:
        return _existing_file(weights, "encoder weights")
    return _local_or_downloaded((manifest or load_manifest()).encoder(name), progress,
                                "--encoder-weights")


def _existing_file(path: str | os.PathLike, what: str, known: list[str] | None = None) -> Path:
    """An explicitly given weights file, which must exist (``known``: the names that would
    have been taken instead, named in the error).

    Raises:
        WeightsError: It does not.
    """
    path = Path(path)
    if not path.is_file():
        names = f" (nor a pretrained model's name: {', '.join(known)})" if known else ""
        raise WeightsError(f"{what} file not found: {path}{names}")
    return path


def local_copy(entry: WeightsEntry | EncoderWeightsEntry) -> Path | None:
    """The cached (or shipped) copy of ``entry`` with the manifest's size, None if there is
    none."""
    for candidate in (cache_dir() / entry.file, shipped_weights_dir() / entry.file):
        if _has_expected_size(candidate, entry):
            return candidate
    return None


def _local_or_downloaded(entry: WeightsEntry | EncoderWeightsEntry,
                         progress: DownloadProgress | None, option: str) -> Path:
    """The local copy of ``entry``, else a download (``option``: the command-line option
    that takes a local file instead)."""
    local = local_copy(entry)
    if local is not None:
        return local
    if is_offline():
        raise WeightsError(
            f"weights '{entry.name}' are not in the cache and {OFFLINE_ENV} is set; run "
            f"'cryosamu weights download {entry.name}' where the internet is reachable, copy "
            f"{entry.file} into {cache_dir()}, or pass {option} PATH")
    return download_weights(entry, progress=progress)


def _has_expected_size(path: Path, entry: WeightsEntry | EncoderWeightsEntry) -> bool:
    """Cheap check made on every load: the file exists with the manifest's size."""
    return path.is_file() and path.stat().st_size == entry.size


def download_weights(entry: WeightsEntry | EncoderWeightsEntry, *, progress: DownloadProgress | None = None,
                     timeout_s: float = 30.0) -> Path:
    """Stream ``entry.url`` into the cache, checking size and SHA-256, and return the file.

    The bytes go to a process-unique ``.partial`` file beside the target, which replaces the
    target only when the checksum matches and is removed whatever happens otherwise.

    Raises:
        DownloadError: HTTP error, connection lost, wrong size or checksum, unwritable cache.
        WeightsError: No address to download from.
    """
    url = download_url(entry)
    target = cache_dir() / entry.file
    download.ensure_writable(target.parent, f"set {CACHE_ENV} to a writable folder")
    return download.fetch(url, target, sha256=entry.sha256, size=entry.size,
                          timeout_s=timeout_s, progress=progress, label=f"'{entry.name}'")


def download_url(entry: WeightsEntry | EncoderWeightsEntry) -> str:
    """Where ``entry`` is downloaded from: the mirror in ``$CRYOSAMU_WEIGHTS_URL``, else the
    manifest's address.

    Raises:
        WeightsError: Neither exists (the model ships only inside the package).
    """
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.file}"
    if entry.url:
        return entry.url
    raise WeightsError(f"weights '{entry.name}' have no download address (they ship inside "
                       f"the cryosamu package only): reinstall cryosamu to restore them, set "
                       f"{MIRROR_ENV} to a folder URL that holds {entry.file}, or pass "
                       "--weights PATH")


def verified_local_copy(entry: WeightsEntry | EncoderWeightsEntry) -> Path | None:
    """A local copy of ``entry`` (cache or package) whose SHA-256 matches, or None."""
    return next((Path(path) for path, status in verify_entry(entry).items() if status == "ok"),
                None)


def sha256_of(path: Path) -> str:
    """Full SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_entry(entry: WeightsEntry | EncoderWeightsEntry) -> dict[str, str]:
    """Re-hash every local copy of ``entry``: ``{path: 'ok' | 'corrupt'}`` (missing ones left out)."""
    results = {}
    for candidate in (cache_dir() / entry.file, shipped_weights_dir() / entry.file):
        if candidate.is_file():
            results[str(candidate)] = "ok" if sha256_of(candidate) == entry.sha256 else "corrupt"
    return results


def save_checkpoint(path: str | os.PathLike, model: Any, extra: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Save ``model`` (a ``UNet3D``) as a format-1 checkpoint, atomically; with ``half`` its
    floating-point tensors are stored as float16 (:func:`load_model` loads them into the
    float32 network)."""
    import torch

    path = Path(path)
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(),
               "state_dict": state, **(extra or {})}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return path


def register_weights(*, checkpoint: str | os.PathLike, name: str, description: str = "",
                     url: str = "", make_default: bool = False,
                     folder: str | os.PathLike | None = None) -> WeightsEntry:
    """Add a trained checkpoint to a weights folder (default: the shipped one) and its manifest.

    The network is loaded (so a broken checkpoint is refused), saved again as a bare format-1
    checkpoint (config and weights only: no optimiser state) as ``<name>.pt``, and listed with
    its SHA-256, size and config; ``make_default`` makes it the model ``enhance`` uses.

    Raises:
        WeightsError: Missing folder, unreadable checkpoint or manifest.
    """
    folder = Path(folder) if folder is not None else shipped_weights_dir()
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder}")
    manifest_path = folder / "manifest.json"
    manifest = _raw_manifest(manifest_path)
    model = load_model(checkpoint)
    target = save_checkpoint(folder / f"{name}.pt", model)
    entry = WeightsEntry(name=name, file=target.name, url=url, sha256=sha256_of(target),
                         size=target.stat().st_size, config=model.config.to_dict(),
                         description=description)
    manifest["models"][name] = {k: v for k, v in asdict(entry).items() if k != "name"}
    if make_default:
        manifest["default"] = name
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return entry


def _raw_manifest(path: Path) -> dict[str, Any]:
    """The manifest file as a dictionary (an empty one when there is none yet).

    Raises:
        WeightsError: The file exists but is not a manifest.
    """
    if not path.is_file():
        return {"format": 1, "default": None, "models": {}}
    load_manifest(path)  # refuses a malformed file with a WeightsError
    return json.loads(path.read_text())


def load_model(path: str | os.PathLike) -> Any:
    """Load a format-1 checkpoint into a ``UNet3D`` (in eval mode, on the CPU).

    Raises:
        WeightsError: The file is not a readable checkpoint, has another format, or its tensors
            do not fit the configuration it declares.
    """
    from cryosamu_cli.model.config import UNetConfig
    from cryosamu_cli.model.unet import UNet3D

    checkpoint = _read_checkpoint(Path(path))
    try:
        model = UNet3D.from_config(UNetConfig.from_dict(checkpoint["config"]))
    except ConfigError as exc:
        raise WeightsError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise WeightsError(f"{path}: the weights do not match the model configuration they "
                           f"declare ({str(exc).splitlines()[0]})") from exc
    return model.eval()


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and a check of the format fields."""
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable cryosamu checkpoint (torch.load with "
                           f"weights_only=True failed: {type(exc).__name__})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is not a cryosamu checkpoint of format {CHECKPOINT_FORMAT}")
    if not isinstance(checkpoint.get("config"), dict) or "state_dict" not in checkpoint:
        raise WeightsError(f"{path} lacks its 'config' or 'state_dict'")
    return checkpoint
