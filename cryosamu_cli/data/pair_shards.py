"""One pair → its shard: a real map–model pair (or a degraded copy of it) or a model alone
(simulated, :mod:`cryosamu_cli.data.degrade`) brought to 1 Å, normalised exactly as ``enhance``
does, with its eq. 1 target (heavy atoms, Gaussian of σ = 0.225 × R, θ = 1) on the same grid,
cut into cubes (:mod:`cryosamu_cli.data.dataset`); and the manifest entry that records it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryosamu_cli import grid, mapio, metrics, simulate
from cryosamu_cli.data import degrade, real_degradation
from cryosamu_cli.data.dataset import CUBE_SIZE, PADDING, SPLITS, cut_cube_pairs, write_shard
from cryosamu_cli.errors import ConfigError, CryosamuError
from cryosamu_cli.data.pairs import Pair
from cryosamu_cli.structure import Atoms, protein_filters, read_atoms

TARGET_RESOLUTION_A = 2.0
# Real pairs (3.2-3.9 Å) are degraded into this range for training (degrade_real).
DEGRADE_REAL_RANGE_A = (4.5, 8.0)


@dataclass(frozen=True)
class PrepareOptions:
    """Choices of a ``prepare-data`` run (all recorded in the manifest)."""

    min_resolution_A: float = 2.0
    max_resolution_A: float = 10.0
    min_cc_mask: float = 0.65
    val_fraction: float = 0.1
    dedup_identity: float | None = None
    target_bfactors: bool = False
    target_resolution_A: float | None = TARGET_RESOLUTION_A
    degradation: str = degrade.DEGRADATION_KINDS[0]
    cube_size: int = CUBE_SIZE
    padding: int = PADDING


def parse_target_resolution(text: str) -> float | None:
    """``--target-resolution``: a resolution in Å, or ``input`` (None: each map's own).

    Raises:
        ConfigError: Neither a positive number nor ``input``.
    """
    if text.strip().lower() == "input":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 100:
        raise ConfigError(f"--target-resolution must be a resolution in Å or 'input', "
                          f"got {text}")
    return value


@dataclass(frozen=True)
class SimulationJob:
    """One model to simulate a pair from."""

    name: str
    model_path: Path
    reference: tuple | None  # the basic degradation's noise spectrum
    seed: int
    group: str = ""


@dataclass(frozen=True)
class DegradedPairJob:
    """A real pair brought to a lower resolution (``<pair>-d<k>``)."""

    pair: Pair
    index: int
    resolution_A: float
    low_pass: bool
    seed: int

    @property
    def name(self) -> str:
        return f"{self.pair.name}-d{self.index}"


def prepare_simulated(job: SimulationJob, output_dir: Path, options: PrepareOptions) -> dict:
    """One model → a simulated experimental-like map, its target, and their shard."""
    # repeats of one model share its split, so no structure is in both train and val
    pair = Pair(job.group or job.name, None, job.model_path, None, "")
    entry = {"name": job.name, "split": split_of(pair, options.val_fraction),
             "source": {"model": str(job.model_path), "simulated": True}, "cubes": 0,
             "shard": None}
    started = time.perf_counter()
    try:
        atoms = heavy_atoms(read_atoms(job.model_path))
        filters = protein_filters(atoms)
        if not all(filters.values()):
            failed = ", ".join(k for k, ok in filters.items() if not ok)
            entry.update(status="filtered", filters=filters, reason=f"structure filter: {failed}")
        else:
            rng = np.random.default_rng(job.seed)
            raw, target, grid_info, params = degrade.simulated_pair(
                atoms, job.reference, rng, options.target_resolution_A, options.degradation)
            entry.update(_store(raw, target, grid_info, job.name, output_dir, options),
                         filters=filters, degradation=params.to_dict(),
                         resolution_A=round(params.resolution_A, 3))
    except CryosamuError as exc:
        entry.update(status="failed", reason=str(exc))
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def _store(raw: np.ndarray, target: np.ndarray, grid_info: mapio.GridInfo, name: str,
           output_dir: Path, options: PrepareOptions) -> dict:
    """Normalise a 1 Å map/target pair, cut it and write its shard; the entry fields."""
    norm, target_norm = grid.normalisation_of(raw), grid.normalisation_of(target)
    source = grid.normalise(raw, norm)
    cubes = cut_cube_pairs(source, grid.normalise(target, target_norm), options.cube_size,
                           options.padding)
    shard = write_shard(output_dir / "shards" / f"{name}.npy", cubes)
    return {"status": "ok", "cubes": int(len(cubes)), "shard": str(shard.relative_to(output_dir)),
            "grid": _grid_summary(grid_info),
            "normalisation": {"input_scale": norm.scale, "target_scale": target_norm.scale,
                              "percentile": norm.percentile},
            "counts": {"grid_1A_zyx": list(source.shape), "cubes_kept": int(len(cubes))}}


def prepare_pair(pair: Pair, output_dir: Path, options: PrepareOptions,
                 download_progress=None, degraded: DegradedPairJob | None = None) -> dict:
    """One pair (or a ``degraded`` copy of it) → its shard and manifest entry (status ``ok``,
    ``filtered`` or ``failed``)."""
    entry = {"name": degraded.name if degraded else pair.name,
             "split": split_of(pair, options.val_fraction),
             "source": {"map": str(pair.map_path), "model": str(pair.model_path)},
             "ids": {k: pair.columns.get(k, "") for k in ("emdb", "pdb")},
             "resolution_A": degraded.resolution_A if degraded else pair.resolution_A,
             "cubes": 0, "shard": None}
    started = time.perf_counter()
    try:
        entry.update(_prepare(pair, output_dir, options, entry["split"], download_progress,
                              degraded))
    except CryosamuError as exc:
        entry.update(status="failed", reason=str(exc))
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def _prepare(pair: Pair, output_dir: Path, options: PrepareOptions, split: str,
             download_progress=None, degraded: DegradedPairJob | None = None) -> dict:
    """The named steps of one pair; returns the entry fields it adds."""
    if split == "excluded":
        return {"status": "filtered", "reason": f"role '{pair.split}' is not for training"}
    map_path, model_path = sources(pair, download_progress)
    atoms = heavy_atoms(read_atoms(model_path))
    filters = protein_filters(atoms)
    if not all(filters.values()):  # named before anything else: the model alone decides it
        failed = ", ".join(k for k, ok in filters.items() if not ok)
        return {"filters": filters, "status": "filtered", "reason": f"structure filter: {failed}"}
    resolution = _checked_resolution(pair, options)
    data, grid_info = mapio.read_map(map_path)
    info = {"grid": _grid_summary(grid_info), "filters": filters}
    _check_overlap(atoms, grid_info)
    cc = metrics.cc_mask(data, grid_info, atoms, resolution)
    info["cc_mask"] = round(cc, 4)
    if cc < options.min_cc_mask:
        return {**info, "status": "filtered",
                "reason": f"map-model CC_mask {cc:.3f} below {options.min_cc_mask}"}
    if degraded is not None:
        data, record = real_degradation.degraded_real_map(
            data, grid_info.voxel_size_zyx, degraded.resolution_A, degraded.seed,
            low_pass=degraded.low_pass,
            keep_mask=options.degradation == "realistic" and degraded.index % 4 in (1, 2))
        info["degradation"] = record.to_dict()
        resolution = degraded.resolution_A
    target_resolution = options.target_resolution_A or resolution
    raw, target = map_and_target_on_1A(data, grid_info, atoms, options.target_bfactors,
                                       target_resolution)
    stored = _store(raw, target, grid_info, degraded.name if degraded else pair.name,
                    output_dir, options)
    return {**info, **stored, "grid": _grid_summary(grid_info),
            "target_resolution_A": target_resolution}


def sources(pair: Pair, download_progress=None) -> tuple[Path, Path]:
    """Local map and model files: paths as given, or EMDB/PDB IDs fetched into the cache."""
    from cryosamu_cli import download
    from cryosamu_cli.weights import cache_dir

    def progress_of(label: str):
        if download_progress is None:
            return None
        return lambda done, total: download_progress(label, done, total)

    return (download.resolve_map(pair.map_path, cache_dir(), progress_of(pair.map_path.name)),
            download.resolve_model(pair.model_path, cache_dir(),
                                   progress_of(pair.model_path.name)))


def split_of(pair: Pair, val_fraction: float) -> str:
    """The pair's split: from the CSV (``eval`` → ``test``), else a stable hash of its name."""
    given = pair.split.lower()
    if given in SPLITS:
        return given
    if given == "eval":
        return "test"
    if given:
        return "excluded"
    bucket = int(hashlib.sha256(pair.name.encode()).hexdigest(), 16) % 1000
    return "val" if bucket < val_fraction * 1000 else "train"


def _checked_resolution(pair: Pair, options: PrepareOptions) -> float:
    """The pair's resolution, refused when missing or outside the allowed range."""
    resolution = pair.resolution_A
    if resolution is None:
        raise CryosamuError("no resolution given")
    if not options.min_resolution_A <= resolution <= options.max_resolution_A:
        raise CryosamuError(f"resolution {resolution} Å is outside --min-res "
                            f"{options.min_resolution_A} / --max-res {options.max_resolution_A}")
    return resolution


def heavy_atoms(atoms: Atoms) -> Atoms:
    """The atoms without hydrogens (eq. 1 sums over heavy atoms)."""
    keep = ~np.isin(atoms.element, ["H", "D"])
    return Atoms(atoms.xyz[keep], atoms.element[keep], atoms.atomic_number[keep],
                 atoms.b_iso[keep], atoms.occupancy[keep], atoms.atom_name[keep],
                 atoms.residue_index[keep], atoms.residues)


def _check_overlap(atoms: Atoms, grid_info: mapio.GridInfo, minimum: float = 0.5) -> None:
    """Refuse a model whose atoms mostly lie outside the map box."""
    origin = np.asarray(mapio.grid_origin_xyz(grid_info))
    extent = np.asarray(grid_info.shape_zyx[::-1]) * np.asarray(grid_info.voxel_size_A)
    inside = np.all((atoms.xyz >= origin) & (atoms.xyz <= origin + extent), axis=1).mean()
    if inside < minimum:
        raise CryosamuError(f"map and model do not overlap ({inside:.0%} of atoms in the box)")


def map_and_target_on_1A(data: np.ndarray, grid_info: mapio.GridInfo, atoms: Atoms,
                         with_bfactors: bool = False,
                         target_resolution_A: float = TARGET_RESOLUTION_A,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The map resampled to 1 Å and the eq. 1 target at ``target_resolution_A`` on the same
    grid (both raw); with ``with_bfactors`` each atom's Gaussian is widened by its model
    B-factor."""
    on_1A = grid.resample_to_spacing(data, grid_info.voxel_size_zyx)
    target = simulate.simulate_density(atoms.xyz, atoms.atomic_number, on_1A.shape,
                                       (1.0, 1.0, 1.0), mapio.grid_origin_xyz(grid_info),
                                       target_resolution_A,
                                       extra_b=atoms.b_iso if with_bfactors else None)
    return on_1A, target


def _grid_summary(grid_info: mapio.GridInfo) -> dict:
    """The map's geometry for the manifest."""
    return {"shape_zyx": list(grid_info.shape_zyx), "voxel_size_A": list(grid_info.voxel_size_A),
            "origin_A": list(grid_info.origin_A), "nstart": list(grid_info.nstart),
            "axis_order": list(grid_info.axis_order)}
