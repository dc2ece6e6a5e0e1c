"""``prepare-data``: map–model pairs → 1 Å grids, simulated targets (eq. 1) and cube shards,
and the torch ``Dataset`` that reads them back by random access (§3.1–3.2).

Layout of an output folder::

    OUT/manifest.json          every pair: status, split, cubes, grid, normalisation, filters…
    OUT/shards/<name>.npy      float16 array (n_cubes, 2, 64, 64, 64): [input, target]

Each map is resampled to 1 Å and normalised exactly as ``enhance`` does; the target is eq. 1
(heavy atoms, Gaussian of σ = 0.225 × 2 Å, θ = 1) on the same 1 Å grid, normalised the same
way. Both are zero-padded by 64 voxels and cut into non-overlapping 64³ cubes; cubes whose
target holds no density (max < 0.05) are dropped. Models alone can also be turned into
simulated pairs (``simulate_from``; the degradation model is in :mod:`cryosamu_cli.degrade`). Splits come from the CSV (by map, never by
cube); pairs marked ``eval`` become ``test`` and are never in ``train``/``val``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryosamu_cli import __version__, degrade, grid, mapio, metrics, simulate
from cryosamu_cli.atomic import atomic_target, write_text_atomic
from cryosamu_cli.errors import ConfigError, CryosamuError
from cryosamu_cli.pairs import Pair, read_pairs
from cryosamu_cli.structure import Atoms, protein_filters, read_atoms

MANIFEST_FORMAT = 1
TARGET_RESOLUTION_A = 2.0
CUBE_SIZE = 64
PADDING = 64
MIN_TARGET_DENSITY = 0.05
PAPER_PAIRS = Path(__file__).resolve().parent / "data" / "paper_pairs.csv"
SPLITS = ("train", "val", "test")


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


def prepare_data(*, pairs_csv: str | os.PathLike | None = None, output_dir: str | os.PathLike,
                 options: PrepareOptions = PrepareOptions(), workers: int = 1,
                 role: str | None = None, simulate_from: str | os.PathLike | None = None,
                 noise_reference: str | os.PathLike | None = None, seed: int = 0,
                 simulate_repeats: int = 1, degrade_real: int = 0,
                 embedder: Callable[[Atoms], np.ndarray] | None = None,
                 on_plan: Callable[[int], None] | None = None,
                 on_pair: Callable[[dict], None] | None = None,
                 download_progress: Callable[[str, int, int | None], None] | None = None,
                 ) -> dict:
    """Turn every pair of ``pairs_csv`` (and every model of ``simulate_from``) into cube
    shards; resumable.

    Pairs already ``ok`` (with their shard) or ``filtered`` in an existing manifest are kept;
    the others are (re)done. One failing pair is recorded with its reason and the rest go on.
    The manifest is rewritten atomically after every pair.

    Args:
        pairs_csv: Map–model pairs (see :func:`cryosamu_cli.pairs.read_pairs`).
        output_dir: Folder for ``manifest.json`` and ``shards/``.
        options: Filters and sizes.
        workers: Pairs prepared in parallel processes.
        role: Keep only CSV rows of this split/role.
        simulate_from: Folder(s) of PDB/mmCIF models to make simulated pairs from
            (:mod:`cryosamu_cli.degrade`), named ``sim-<file stem>``.
        noise_reference: A real map whose power spectrum shapes the simulated noise (needed
            with ``simulate_from``).
        seed: Seed of the simulated degradations (each model gets its own stream).
        simulate_repeats: Simulated maps per model, each with its own degradation; the
            repeats are named ``sim-<stem>-r<k>`` and share the split of ``sim-<stem>``.
        degrade_real: Copies of every real pair degraded to a random 4.5–8 Å
            (:func:`cryosamu_cli.degrade.degraded_real_map`, half of them low-passed; with
            ``options.degradation == "realistic"`` copies 1, 2, 5, 6, … keep a masked map's
            mask), named ``<pair>-d<k>``, in the pair's split, with the degradation recorded.
        embedder: Model atoms → ``800 × 512`` structure embedding (ESM-IF1 + pooling,
            :func:`cryosamu_cli.embed.embed_structure`); saved as ``embeddings/<name>.npy``
            for every pair that is ``ok``. None: no embeddings (``--no-struct``).
        on_plan: Called with the number of pairs to prepare (after resuming and dedup).
        on_pair: Called with each finished pair's manifest entry.
        download_progress: ``(label, bytes_done, bytes_total)`` for EMDB/PDB downloads (with
            ``workers == 1``; worker processes download silently).

    Returns:
        The manifest.

    Raises:
        ConfigError: Nothing to prepare, or a missing noise reference.
    """
    output_dir = Path(output_dir)
    degrade.check_kind(options.degradation)
    jobs = _jobs(pairs_csv, role, simulate_from, noise_reference, seed, simulate_repeats,
                 degrade_real)
    (output_dir / "shards").mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(output_dir, options)
    done = {e["name"]: e for e in manifest["pairs"] if _is_finished(e, output_dir)}
    todo = [job for job in jobs if job.name not in done]
    manifest["pairs"] = [done[job.name] for job in jobs if job.name in done]
    if options.dedup_identity is not None:
        todo, duplicates = deduplicate(todo, options.dedup_identity)
        manifest["pairs"] += duplicates
    if on_plan is not None:
        on_plan(len(todo))
    for entry in _run_jobs(todo, output_dir, options, workers, download_progress):
        if embedder is not None and entry["status"] == "ok":
            entry["embedding"] = _write_embedding(output_dir, entry, embedder)
        manifest["pairs"].append(entry)
        _save_manifest(output_dir, manifest)
        if on_pair is not None:
            on_pair(entry)
    order = {job.name: i for i, job in enumerate(jobs)}
    manifest["pairs"].sort(key=lambda e: order.get(e["name"], len(order)))
    _save_manifest(output_dir, manifest)
    return manifest


@dataclass(frozen=True)
class _SimulationJob:
    """One model to simulate a pair from."""

    name: str
    model_path: Path
    reference: tuple
    seed: int
    group: str = ""


# Real pairs (3.2-3.9 Å) are degraded into this range for training (degrade_real).
DEGRADE_REAL_RANGE_A = (4.5, 8.0)


@dataclass(frozen=True)
class _DegradedPairJob:
    """A real pair brought to a lower resolution (``<pair>-d<k>``)."""

    pair: Pair
    index: int
    resolution_A: float
    low_pass: bool
    seed: int

    @property
    def name(self) -> str:
        return f"{self.pair.name}-d{self.index}"


def _jobs(pairs_csv, role, simulate_from, noise_reference, seed, repeats: int = 1,
          degrade_real: int = 0) -> list:
    """The real pairs of the CSV (and their degraded copies) and the simulation jobs."""
    if pairs_csv is None and simulate_from is None:
        raise ConfigError("give a pairs CSV, --simulate-from DIR, or both")
    if str(pairs_csv) == "paper":
        pairs_csv = PAPER_PAIRS
    jobs: list = []
    for number, pair in enumerate(read_pairs(pairs_csv, role=role) if pairs_csv else []):
        jobs.append(pair)
        jobs += _degraded_jobs(pair, degrade_real, seed + 1000 * (number + 1))
    folders = simulate_from if isinstance(simulate_from, (list, tuple)) else [simulate_from]
    simulated: list = []
    for folder in (f for f in folders if f is not None):
        simulated += _simulation_jobs(Path(folder), noise_reference, seed + len(simulated),
                                      repeats)
    return jobs + simulated


def _degraded_jobs(pair: Pair, count: int, seed: int) -> list[_DegradedPairJob]:
    """``count`` seeded degradations of one real pair."""
    rng = np.random.default_rng(seed)
    low, high = DEGRADE_REAL_RANGE_A
    return [_DegradedPairJob(pair, k, round(float(rng.uniform(low, high)), 2),
                             bool(k % 2 == 0), seed + k) for k in range(1, count + 1)]


def _simulation_jobs(folder: Path, noise_reference, seed: int,
                     repeats: int = 1) -> list[_SimulationJob]:
    """``repeats`` jobs per model file in ``folder``, with the reference noise spectrum."""
    if repeats < 1:
        raise ConfigError(f"--simulate-repeats must be at least 1, got {repeats}")
    if not folder.is_dir():
        raise ConfigError(f"--simulate-from folder not found: {folder}")
    if noise_reference is None:
        raise ConfigError("--simulate-from needs --noise-reference MAP (a real map whose noise "
                          "spectrum the simulated maps follow)")
    data, grid_info = mapio.read_map(noise_reference)
    reference = degrade.radial_power_spectrum(data, grid_info.voxel_size_zyx)
    models = sorted(p for p in folder.iterdir()
                    if p.name.lower().endswith((".pdb", ".cif", ".ent", ".pdb.gz", ".cif.gz")))
    jobs = []
    for i, path in enumerate(models):
        group = f"sim-{path.name.split('.')[0]}"
        jobs += [_SimulationJob(group if k == 0 else f"{group}-r{k}", path, reference,
                                seed + i * repeats + k, group) for k in range(repeats)]
    return jobs


def deduplicate(jobs: list, threshold: float) -> tuple[list, list[dict]]:
    """Keep one pair per group of models sharing more than ``threshold`` sequence identity
    (greedy, in order; any pair of chains counts). Returns the kept jobs and a ``filtered``
    manifest entry for each dropped one."""
    from cryosamu_cli.structure import chain_sequences, max_chain_identity

    kept, kept_sequences, dropped = [], [], []
    for job in jobs:
        try:
            sequences = chain_sequences(read_atoms(_model_of(job)))
        except CryosamuError:
            kept.append(job)  # its own failure is reported when it is prepared
            continue
        match = next(((other, identity) for other, seqs in zip(kept, kept_sequences)
                      if (identity := max_chain_identity(sequences, seqs)) > threshold), None)
        if match is None:
            kept.append(job)
            kept_sequences.append(sequences)
        else:
            dropped.append({"name": job.name, "status": "filtered", "cubes": 0, "shard": None,
                            "split": "excluded", "reason": f"{match[1]:.0%} sequence identity "
                            f"with {match[0].name}"})
    return kept, dropped


def _model_of(job) -> Path:
    """The local model file of a job (fetching a PDB ID when needed)."""
    if isinstance(job, _SimulationJob):
        return job.model_path
    return _sources(getattr(job, "pair", job))[1]


def _run_jobs(jobs: list, output_dir: Path, options: PrepareOptions, workers: int,
              download_progress=None):
    """Yield each job's manifest entry, in parallel processes when ``workers > 1``."""
    if workers <= 1:
        for job in jobs:
            yield _prepare_job(job, output_dir, options, download_progress)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_prepare_job, job, output_dir, options) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _prepare_job(job, output_dir: Path, options: PrepareOptions,
                 download_progress=None) -> dict:
    """Dispatch a real pair or a simulation job."""
    if isinstance(job, _SimulationJob):
        return prepare_simulated(job, output_dir, options)
    if isinstance(job, _DegradedPairJob):
        return prepare_pair(job.pair, output_dir, options, download_progress, degraded=job)
    return prepare_pair(job, output_dir, options, download_progress)


def prepare_simulated(job: _SimulationJob, output_dir: Path, options: PrepareOptions) -> dict:
    """One model → a simulated experimental-like map, its target, and their shard."""
    # repeats of one model share its split, so no structure is in both train and val
    pair = Pair(job.group or job.name, None, job.model_path, None, "")
    entry = {"name": job.name, "split": split_of(pair, options.val_fraction),
             "source": {"model": str(job.model_path), "simulated": True}, "cubes": 0,
             "shard": None}
    started = time.perf_counter()
    try:
        atoms = _heavy_atoms(read_atoms(job.model_path))
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
                 download_progress=None, degraded: _DegradedPairJob | None = None) -> dict:
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
             download_progress=None, degraded: _DegradedPairJob | None = None) -> dict:
    """The named steps of one pair; returns the entry fields it adds."""
    if split == "excluded":
        return {"status": "filtered", "reason": f"role '{pair.split}' is not for training"}
    resolution = _checked_resolution(pair, options)
    map_path, model_path = _sources(pair, download_progress)
    data, grid_info = mapio.read_map(map_path)
    atoms = _heavy_atoms(read_atoms(model_path))
    filters = protein_filters(atoms)
    info = {"grid": _grid_summary(grid_info), "filters": filters}
    if not all(filters.values()):
        failed = ", ".join(k for k, ok in filters.items() if not ok)
        return {**info, "status": "filtered", "reason": f"structure filter: {failed}"}
    _check_overlap(atoms, grid_info)
    cc = metrics.cc_mask(data, grid_info, atoms, resolution)
    info["cc_mask"] = round(cc, 4)
    if cc < options.min_cc_mask:
        return {**info, "status": "filtered",
                "reason": f"map-model CC_mask {cc:.3f} below {options.min_cc_mask}"}
    if degraded is not None:
        data, record = degrade.degraded_real_map(
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


def _sources(pair: Pair, download_progress=None) -> tuple[Path, Path]:
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


def _heavy_atoms(atoms: Atoms) -> Atoms:
    """The atoms without hydrogens (eq. 1 sums over heavy atoms)."""
    keep = ~np.isin(atoms.element, ["H", "D"])
    return Atoms(atoms.xyz[keep], atoms.element[keep], atoms.atomic_number[keep],
                 atoms.b_iso[keep], atoms.occupancy[keep], atoms.atom_name[keep],
                 atoms.residue_index[keep], atoms.residues)


def _check_overlap(atoms: Atoms, grid_info: mapio.GridInfo, minimum: float = 0.5) -> None:
    """Refuse a model whose atoms mostly lie outside the map box."""
    origin = np.asarray(metrics.grid_origin_xyz(grid_info))
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
                                       (1.0, 1.0, 1.0), metrics.grid_origin_xyz(grid_info),
                                       target_resolution_A,
                                       extra_b=atoms.b_iso if with_bfactors else None)
    return on_1A, target


def cut_cube_pairs(source: np.ndarray, target: np.ndarray, cube_size: int = CUBE_SIZE,
                   padding: int = PADDING) -> np.ndarray:
    """Zero-pad both volumes by ``padding`` and cut non-overlapping cubes; keep the cubes whose
    target holds density. Returns ``(n, 2, c, c, c)`` float16 (input, target)."""
    padded = [np.pad(v, [(padding, padding + (-(n + 2 * padding)) % cube_size)
                         for n in v.shape]) for v in (source, target)]
    counts = [n // cube_size for n in padded[0].shape]
    kept = []
    for index in np.ndindex(*counts):
        window = tuple(slice(i * cube_size, (i + 1) * cube_size) for i in index)
        if padded[1][window].max() >= MIN_TARGET_DENSITY:
            kept.append(np.stack([padded[0][window], padded[1][window]]))
    shape = (len(kept), 2) + (cube_size,) * 3
    return np.array(kept, dtype=np.float16).reshape(shape)


def write_shard(path: Path, cubes: np.ndarray) -> Path:
    """Write a shard ``.npy`` atomically."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, cubes)
    return path


def _write_embedding(output_dir: Path, entry: dict, embedder) -> str | None:
    """Embed the pair's model and save it (float16); None when the model has no backbone."""
    try:
        embedding = np.asarray(embedder(_heavy_atoms(read_atoms(entry["source"]["model"]))))
    except ValueError as exc:
        entry["embedding_note"] = str(exc)
        return None
    path = output_dir / "embeddings" / f"{entry['name']}.npy"
    path.parent.mkdir(exist_ok=True)
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, embedding.astype(np.float16))
    return str(path.relative_to(output_dir))


def _grid_summary(grid_info: mapio.GridInfo) -> dict:
    """The map's geometry for the manifest."""
    return {"shape_zyx": list(grid_info.shape_zyx), "voxel_size_A": list(grid_info.voxel_size_A),
            "origin_A": list(grid_info.origin_A), "nstart": list(grid_info.nstart),
            "axis_order": list(grid_info.axis_order)}


def _is_finished(entry: dict, output_dir: Path) -> bool:
    """Whether a manifest entry needs no redoing."""
    if entry.get("status") == "ok":
        return bool(entry.get("shard")) and (output_dir / entry["shard"]).is_file()
    return entry.get("status") == "filtered"


def _load_manifest(output_dir: Path, options: PrepareOptions) -> dict:
    """The existing manifest (for resuming) or a new one."""
    path = output_dir / "manifest.json"
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON; remove it to start afresh") from exc
        if manifest.get("format") == MANIFEST_FORMAT:
            return manifest
    return {"format": MANIFEST_FORMAT, "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "voxel_size_A": 1.0,
            "cube_size": options.cube_size, "padding": options.padding,
            "normalisation": {"percentile": grid.NORMALISATION_PERCENTILE, "clip": [0, 1]},
            "target": {"equation": 1,
                       "resolution_A": options.target_resolution_A or "the input's",
                       "sigma_per_resolution": simulate.SIGMA_PER_RESOLUTION, "theta": 1.0,
                       "atoms": "heavy atoms, weight Z",
                       "model_bfactors": options.target_bfactors},
            "options": options.__dict__, "pairs": []}


def _save_manifest(output_dir: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_text_atomic(output_dir / "manifest.json", json.dumps(manifest, indent=1) + "\n")


class CubePairDataset:
    """Random access to the cube pairs of a ``prepare-data`` folder, one split at a time.

    Shards are memory-mapped: nothing is loaded until a cube is asked for. ``dataset[i]`` is
    ``(input, target)``, each a float32 tensor ``(1, c, c, c)``; with ``with_struct`` it is
    ``(input, target, embedding)`` with the pair's ``L × 512`` embedding (zeros when the pair
    has none).
    """

    def __init__(self, data_dir: str | os.PathLike, split: str = "train",
                 with_struct: bool = False) -> None:
        self.data_dir = Path(data_dir)
        manifest_path = self.data_dir / "manifest.json"
        if not manifest_path.is_file():
            raise ConfigError(f"{self.data_dir} has no manifest.json (run cryosamu prepare-data)")
        manifest = json.loads(manifest_path.read_text())
        self.cube_size = int(manifest.get("cube_size", CUBE_SIZE))
        entries = [e for e in manifest["pairs"]
                   if e.get("status") == "ok" and e.get("split") == split and e["cubes"]]
        self.names = [e["name"] for e in entries]
        self.with_struct = with_struct
        self._embeddings = [e.get("embedding") for e in entries]
        self._shards = [np.load(self.data_dir / e["shard"], mmap_mode="r") for e in entries]
        self._index = [(s, c) for s, shard in enumerate(self._shards) for c in range(len(shard))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: int):
        import torch

        shard, cube = self._index[item]
        pair = np.asarray(self._shards[shard][cube], dtype=np.float32)
        tensors = (torch.from_numpy(pair[0:1].copy()), torch.from_numpy(pair[1:2].copy()))
        if not self.with_struct:
            return tensors
        return (*tensors, self._embedding(shard))

    def _embedding(self, shard: int):
        import torch

        from cryosamu_cli.embed import EMBEDDING_DIM, EMBEDDING_LENGTH

        relative = self._embeddings[shard]
        if relative is None:
            return torch.zeros(EMBEDDING_LENGTH, EMBEDDING_DIM)
        return torch.from_numpy(np.load(self.data_dir / relative).astype(np.float32))
