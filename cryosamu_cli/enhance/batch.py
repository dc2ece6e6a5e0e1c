"""Many maps with one loaded model (``enhance_many``), spread over several devices (one process
each), and the expansion of the command line's glob patterns."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryosamu_cli.atomic import folder_removed_if_left_empty
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.enhance import resolution as resolution_ops
from cryosamu_cli.enhance.pipeline import EnhanceResult, companion_path
from cryosamu_cli.errors import ConfigError, CryosamuError, DeviceError, OutputError
from cryosamu_cli.enhance.tiling import CORE_SIZE, CUBE_SIZE


@dataclass(frozen=True)
class MapOutcome:
    """What happened to one map of a batch: ``ok``, ``skipped`` or ``failed``."""

    input_path: Path
    output_path: Path
    status: str
    message: str = ""
    result: EnhanceResult | None = None


def output_path_for(input_path: Path, output_dir: Path) -> Path:
    """``OUT/<name>_enhanced.mrc`` for an input ``<name>.map`` (``.gz`` and the like dropped)."""
    return companion_path(output_dir / input_path.name, "enhanced")


def output_paths_for(input_paths: Sequence[Path], output_dir: Path) -> list[Path]:
    """One distinct output per input: ``OUT/<name>_enhanced.mrc``, or, for inputs whose names
    collide (RELION and cryoSPARC job folders all hold ``postprocess.mrc``), the name prefixed
    by as many parent folders as tell them apart (``OUT/job012_postprocess_enhanced.mrc``).

    Raises:
        ConfigError: The same file is listed twice.
    """
    resolved = [Path(p).resolve() for p in input_paths]
    seen: dict[Path, Path] = {}
    for given, real in zip(input_paths, resolved):
        if real in seen:
            raise ConfigError(f"{given} is listed twice (also as {seen[real]}): give each map once")
        seen[real] = given
    names = [output_path_for(p, output_dir) for p in resolved]
    for name in set(names):
        clashing = [i for i, n in enumerate(names) if n == name]
        if len(clashing) > 1:
            for i, unique in zip(clashing, _told_apart([resolved[i] for i in clashing])):
                names[i] = output_dir / f"{unique}_{names[i].name}"
    return names


def _told_apart(paths: list[Path]) -> list[str]:
    """Prefixes that tell apart files whose outputs would share a name: the fewest parent
    folders that differ (``job012``, ``a_run1``), or, in one folder, the file's own name
    (``map.map`` and ``map.mrc``)."""
    for depth in range(1, max(len(p.parts) for p in paths)):
        prefixes = ["_".join(p.parent.parts[-depth:]).lstrip("/") or "root" for p in paths]
        if len(set(prefixes)) == len(paths):
            return prefixes
    return [p.name.replace(".", "_") for p in paths]


def enhance_many(*, input_paths: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 skip_existing: bool = False, force: bool = False,
                 weights: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int | None = None, cube_size: int = CUBE_SIZE, core_size: int = CORE_SIZE,
                 threads: int | None = None, confidence: int = 0, precision: str = "auto",
                 tta: int = 1, resolution: str | float | resolution_ops.ResolutionRequest | None = None,
                 on_map_start: Callable[[Path, int, int], None] | None = None,
                 output_paths: Sequence[Path] | None = None,
                 **map_options: object) -> list[MapOutcome]:
    """Enhance many maps into ``output_dir`` with one loaded model.

    One map failing is recorded and the others go on. With ``skip_existing`` a map whose output
    already exists is left alone, so a re-run after an interruption does only what is missing.

    Args:
        input_paths: Maps to enhance.
        output_dir: Folder for ``<name>_enhanced.mrc`` files (made if its parent exists).
        skip_existing: Leave maps whose output exists untouched.
        force: Overwrite existing outputs (ignored with ``skip_existing``).
        resolution: One value for every map, ``none``, or a CSV of path,resolution (every
            input must be listed); see :func:`cryosamu_cli.enhance.pipeline.enhance_map`.
        on_map_start: Called as ``on_map_start(path, index, count)`` before each map.
        output_paths: The output of each input (default: :func:`output_paths_for`, distinct
            names even for inputs named alike).
        map_options: Passed on to :func:`cryosamu_cli.enhance.pipeline.enhance_map` (mask, strength, progress, ...).

    Raises:
        CryosamuError: Only for problems shared by all maps (output folder, weights, device).
    """
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    enhance.check_map_options(**map_options)
    request = resolution_ops.parse_resolution(resolution)
    resolution_ops.check_listed(request, [Path(p) for p in input_paths])
    targets = list(output_paths or output_paths_for([Path(p) for p in input_paths], output_dir))
    options = dict(weights=weights, batch_size=batch_size, cube_size=cube_size,
                   core_size=core_size, threads=threads, confidence=confidence,
                   precision=precision, tta=tta, resolution=request, **map_options)
    with folder_removed_if_left_empty(output_dir):  # every map failed: no empty folder left
        devices = split_devices(device)
        if len(devices) > 1:
            return _enhance_on_devices(
                devices, input_paths=[Path(p) for p in input_paths], output_dir=output_dir,
                output_paths=targets, skip_existing=skip_existing, force=force, **options)
        return _enhance_in_turn([Path(p) for p in input_paths], targets, device=device,
                                skip_existing=skip_existing, force=force,
                                on_map_start=on_map_start, **options)


def _enhance_in_turn(input_paths: list[Path], targets: list[Path], *, device: str,
                     skip_existing: bool, force: bool,
                     on_map_start: Callable[[Path, int, int], None] | None,
                     weights: str | os.PathLike | None, batch_size: int | None, cube_size: int,
                     core_size: int, threads: int | None, confidence: int, precision: str,
                     tta: int, **map_options: object) -> list[MapOutcome]:
    """The maps one after another in this process, with one model loaded at the first map
    that runs."""
    enhancer = None
    outcomes = []
    for index, (input_path, target) in enumerate(zip(input_paths, targets)):
        if skip_existing and target.exists():
            outcomes.append(MapOutcome(input_path, target, "skipped", "output exists"))
            continue
        if on_map_start is not None:
            on_map_start(input_path, index, len(input_paths))
        from cryosamu_cli.enhance.predictor import load_enhancer

        enhancer = enhancer or load_enhancer(
            weights=weights, device=device, batch_size=batch_size, cube_size=cube_size,
            core_size=core_size, threads=threads, confidence=confidence, precision=precision,
            tta=tta)
        try:
            result = enhance.enhance_map(input_path=input_path, output_path=target,
                                         force=force and not skip_existing,
                                         confidence=confidence, enhancer=enhancer,
                                         **map_options)
            outcomes.append(MapOutcome(input_path, target, "ok", result=result))
        except CryosamuError as exc:
            outcomes.append(MapOutcome(input_path, target, "failed", str(exc)))
    return outcomes


def _check_output_dir(output_dir: Path) -> None:
    """An existing folder, or one that can be made in an existing folder.

    Raises:
        OutputError: It is a file, or its parent folder does not exist either.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"--output-dir {output_dir} is a file, not a folder")
    if not output_dir.exists() and not output_dir.parent.is_dir():
        raise OutputError(f"output folder {output_dir} cannot be made: its parent "
                          f"{output_dir.parent} does not exist")


def split_devices(device: str) -> list[str]:
    """The devices in ``device``: one (``auto``, ``cpu``, ``cuda:N``), a comma-separated list
    (``cuda:0,cuda:1``), or ``cuda:all`` (every visible GPU).

    Raises:
        DeviceError: ``cuda:all`` without a GPU.
    """
    if device.strip().lower() == "cuda:all":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError("--device cuda:all requested but CUDA is not available on this "
                              "machine")
        return [f"cuda:{i}" for i in range(count)]
    return [part.strip() for part in device.split(",") if part.strip()] or ["auto"]


def _enhance_on_devices(devices: list[str], *, input_paths: list[Path], threads: int | None,
                        output_paths: list[Path], **options: object) -> list[MapOutcome]:
    """One worker process per device, each enhancing every ``len(devices)``-th map with its
    own loaded model; outcomes come back in input order. Progress callbacks stay in this
    process (they cannot cross into the workers), so only whole maps are reported."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from cryosamu_cli.device import resolve_device

    for device in set(devices):
        resolve_device(device)  # an unknown or absent device fails before any work
    options = {key: value for key, value in options.items() if not callable(value)}
    if threads is None and all(d == "cpu" for d in devices):
        threads = max(1, (os.cpu_count() or 1) // len(devices))
    shares = [list(range(i, len(input_paths), len(devices))) for i in range(len(devices))]
    by_index: dict[int, MapOutcome] = {}
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(len(devices), mp_context=context) as pool:
        jobs = {pool.submit(enhance_many, input_paths=[input_paths[i] for i in share],
                            output_paths=[output_paths[i] for i in share],
                            device=device, threads=threads, **options): share
                for device, share in zip(devices, shares) if share}
        for job, share in jobs.items():
            by_index.update(zip(share, job.result()))
    return [by_index[i] for i in range(len(input_paths))]


def expand_inputs(patterns: Sequence[str | os.PathLike],
                  download_progress=None) -> list[Path]:
    """Input paths: an existing file as it is (even with ``[`` or ``*`` in its name), glob
    patterns (``'maps/*.map'``, quoted from the shell) expanded, and EMDB IDs (``EMD-1997``,
    ``emd_1997``, ``EMD-1997.map``; never a path with a folder, which is a missing file)
    fetched with their header XML into the cache
    (:func:`cryosamu_cli.download.resolve_emdb_entry`).

    Raises:
        ConfigError: A pattern matches no file.
        DownloadError: An EMDB entry cannot be had.
    """
    import glob

    from cryosamu_cli import download
    from cryosamu_cli.weights import cache_dir

    paths: list[Path] = []
    for pattern in map(str, patterns):
        if Path(pattern).exists():
            paths.append(Path(pattern))
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ConfigError(f"no file matches {pattern}")
            paths.extend(Path(m) for m in matches)
        elif (Path(pattern).parent == Path(".")
              and download.EMDB_ID.match(download.without_map_suffix(pattern))):
            paths.append(download.resolve_emdb_entry(pattern, cache_dir(), download_progress))
        else:
            paths.append(Path(pattern))
    return paths


def default_output_path(argument: str | os.PathLike, input_path: Path) -> Path:
    """Where one map's output goes without ``-o``: ``<name>_enhanced.mrc`` beside the input,
    or in the current folder for a map fetched from EMDB (``emd_1997_enhanced.mrc``)."""
    if Path(argument).exists():
        return output_path_for(input_path, input_path.parent)
    return output_path_for(Path(input_path.name.removesuffix(".gz")), Path.cwd())
