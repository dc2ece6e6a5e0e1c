"""``cryosamu benchmark quality``: maps scored against their models (CC_box, CC_mask,
CC_volume, CC_peaks, FSC=0.5, RSCC) with the definitions of phenix.map_model_cc and
phenix.mtriage (:mod:`cryosamu_cli.metrics`); ``backend="cctbx"`` computes them with cctbx
itself. The deposited map, it truncated at the resolution, the cryosamu map and optional
baselines are compared per pair."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryosamu_cli import grid, mapio, metrics
from cryosamu_cli.atomic import write_text_atomic
from cryosamu_cli.enhance import band, local_resolution
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.enhance import predictor
from cryosamu_cli.errors import ConfigError, CryosamuError
from cryosamu_cli.data.pairs import Pair
from cryosamu_cli.structure import read_atoms
from cryosamu_cli.weights import sha256_of

@dataclass
class PairQuality:
    """Scores of every map of one pair (``maps[label] = scores``) or why it was skipped;
    ``nyquist_per_A``: the finest frequency the deposited map's voxels hold."""

    name: str
    resolution_A: float | None
    maps: dict[str, dict] = field(default_factory=dict)
    skipped: str = ""
    nyquist_per_A: float | None = None


def quality_report(*, pairs: Sequence[Pair], weights: str | os.PathLike | None = None,
                   device: str = "auto", backend: str = "native", sharpen: bool = True,
                   full_band: bool = False, bare: bool = False,
                   work_dir: str | os.PathLike | None = None,
                   on_pair: Callable[[str], None] | None = None) -> list[PairQuality]:
    """Score every pair's maps against its model: the deposited map, the deposited map
    truncated at the pair's resolution (what a plain low-pass gives), the cryosamu map as a
    user makes it (``enhance --resolution R`` with ``weights``, default: the pretrained
    model), with ``full_band`` also the network's unlimited output, with ``bare`` the map of
    the bare command (no ``--resolution``: the resolution it finds itself), a global
    B-factor-sharpened baseline and each extra map.

    Maps are enhanced and sharpened into ``work_dir`` (a temporary folder by default) and
    reused from there only when what made them is the same (:func:`_made_by`: the input file,
    the resolution, the weights' SHA-256 and precision). A pair that cannot be scored is
    kept with its reason.
    """
    if backend not in ("native", "cctbx"):
        raise ConfigError(f"unknown backend '{backend}': use native or cctbx")
    enhancer = predictor.load_enhancer(weights=weights, device=device)
    with tempfile.TemporaryDirectory(prefix="cryosamu-quality-") as tmp:
        folder = Path(work_dir) if work_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        report = []
        for pair in pairs:
            if on_pair is not None:
                on_pair(pair.name)
            report.append(_score_pair(pair, folder, enhancer, backend, sharpen, full_band, bare))
        return report


def _score_pair(pair: Pair, folder: Path, enhancer, backend: str, sharpen: bool,
                full_band: bool = False, bare: bool = False) -> PairQuality:
    """Every map of one pair, scored; errors become the pair's ``skipped`` reason."""
    quality = PairQuality(pair.name, pair.resolution_A)
    if pair.resolution_A is None:
        quality.skipped = "no resolution given"
        return quality
    try:
        voxel_size_zyx = mapio.read_map(pair.map_path)[1].voxel_size_zyx
        quality.nyquist_per_A = 1.0 / (2.0 * max(voxel_size_zyx))
        for label, path in _maps_of(pair, folder, enhancer, sharpen, full_band, bare).items():
            quality.maps[label] = score_map(path, pair.model_path, pair.resolution_A, backend)
    except CryosamuError as exc:
        quality.skipped = str(exc)
    return quality


def _maps_of(pair: Pair, folder: Path, enhancer, sharpen: bool,
             full_band: bool = False, bare: bool = False) -> dict[str, Path]:
    """Label → map file for the deposited (as given and truncated), cryosamu, sharpened and
    extra maps."""
    maps = {"deposited": pair.map_path,
            "deposited_truncated": _truncated(pair, folder / f"{pair.name}_truncated.mrc")}
    runs = {"cryosamu": pair.resolution_A, **({"cryosamu_full_band": "none"} if full_band
                                               else {}), **({"cryosamu_bare": None} if bare
                                                             else {})}
    weights_sha256 = sha256_of(enhancer.weights_path)
    for label, resolution in runs.items():
        target = folder / f"{pair.name}_{label}.mrc"
        made_by = _made_by(pair, resolution, weights=weights_sha256,
                           precision=enhancer.precision_name, band_limit=band.BAND_LIMITS[0],
                           follow=local_resolution.FOLLOW, band_edge=list(band.BAND_EDGE))
        # the bare map depends on how the resolution is found (code, files beside the map):
        # made afresh every time
        if resolution is None or not _reusable(target, made_by):
            enhance.enhance_map(input_path=pair.map_path, output_path=target, enhancer=enhancer,
                                resolution=resolution, force=True)
            _remember(target, made_by)
        maps[label] = target
    if sharpen:
        target = folder / f"{pair.name}_bsharpened.mrc"
        made_by = _made_by(pair, pair.resolution_A, map="B-factor sharpened")
        if not _reusable(target, made_by):
            data, grid_info = mapio.read_map(pair.map_path)
            sharpened, b = grid.bfactor_sharpen(data, grid_info.voxel_size_zyx, pair.resolution_A)
            mapio.write_map(target, sharpened, grid_info, note=f"B-factor sharpened, B={b:.0f}",
                            force=True)
            _remember(target, made_by)
        maps["b_sharpened"] = target
    maps.update(pair.extra_maps)
    return maps


def _truncated(pair: Pair, target: Path) -> Path:
    """The deposited map with a hard truncation at the pair's resolution (written once per
    input and resolution)."""
    made_by = _made_by(pair, pair.resolution_A, map="truncated")
    if not _reusable(target, made_by):
        data, grid_info = mapio.read_map(pair.map_path)
        truncated = grid.band_limit(data, grid_info.voxel_size_zyx, pair.resolution_A)
        mapio.write_map(target, truncated, grid_info,
                        note=f"truncated at {pair.resolution_A:g} A", force=True)
        _remember(target, made_by)
    return target


def _made_by(pair: Pair, resolution, **what) -> dict:
    """What a work-dir map is made from: the input file (path, size, modification time), the
    resolution and ``what`` else (weights' SHA-256, precision, kind of map)."""
    stat = Path(pair.map_path).stat()
    return {"input": str(Path(pair.map_path).resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "resolution": resolution, **what}


def _reusable(target: Path, made_by: dict) -> bool:
    """Whether ``target`` exists and was made by exactly ``made_by`` (its ``.json`` record)."""
    record = target.with_suffix(".made-by.json")
    if not (target.is_file() and record.is_file()):
        return False
    try:
        return json.loads(record.read_text()) == made_by
    except (OSError, ValueError):
        return False


def _remember(target: Path, made_by: dict) -> None:
    """Record what made ``target`` beside it."""
    write_text_atomic(target.with_suffix(".made-by.json"), json.dumps(made_by) + "\n")


def score_map(map_path: Path, model_path: Path, resolution_A: float,
              backend: str = "native") -> dict:
    """Scores of one map against a model: ``cc_box``, ``cc_mask``, ``cc_volume``, ``cc_peaks``,
    ``fsc05``, ``fsc`` (curve) and ``rscc`` (per residue)."""
    if backend == "cctbx":
        return cctbx_scores(map_path, model_path, resolution_A)
    data, grid_info = mapio.read_map(map_path)
    return metrics.map_model_scores(data, grid_info, read_atoms(model_path),
                                    resolution_A).to_dict()


def cctbx_scores(map_path: Path, model_path: Path, resolution_A: float) -> dict:
    """The same scores computed by cctbx (``mmtbx.maps.map_model_cc`` and ``mtriage``).

    cctbx runs in a child process (:mod:`cryosamu_cli.benchmark.cctbx_backend`): its boost.python
    libraries crash when loaded into a process that already holds torch.

    Raises:
        CryosamuError: cctbx is not installed, or it failed on these files.
    """
    import subprocess
    import sys

    command = [sys.executable, "-m", "cryosamu_cli.benchmark.cctbx_backend", str(map_path),
               str(model_path), str(resolution_A)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise CryosamuError(f"cctbx failed on {Path(map_path).name}: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


METRICS = ("cc_box", "cc_mask", "cc_volume", "cc_peaks", "fsc05")


def quality_rows(report: Sequence[PairQuality]) -> list[dict]:
    """One flat row per pair and map: the summary metrics (no curves)."""
    rows = []
    for pair in report:
        if pair.skipped:
            rows.append({"pair": pair.name, "map": "", "resolution_A": pair.resolution_A,
                         **{m: None for m in METRICS}, "note": pair.skipped})
        for label, scores in pair.maps.items():
            rows.append({"pair": pair.name, "map": label, "resolution_A": pair.resolution_A,
                         **{m: scores[m] for m in METRICS}, "note": ""})
    return rows
