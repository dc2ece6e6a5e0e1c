"""``prepare-data``: the pipeline over many pairs. Plans the jobs (real pairs, their degraded
copies, simulated models), drops sequence duplicates, resumes from the manifest, runs the jobs
(:mod:`cryosamu_cli.data.pair_shards`) in worker processes and writes the manifest atomically after
each. Splits come from the CSV (by map, never by cube); pairs marked ``eval`` become ``test`` and
are never in ``train``/``val``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cryosamu_cli import __version__, grid, mapio, simulate
from cryosamu_cli.data import degrade
from cryosamu_cli.atomic import atomic_target, folder_removed_if_left_empty, write_text_atomic
from cryosamu_cli.data.dataset import MANIFEST_FORMAT
from cryosamu_cli.errors import ConfigError, CryosamuError
from cryosamu_cli.data.pair_shards import (DEGRADE_REAL_RANGE_A, DegradedPairJob, PrepareOptions,
                                      SimulationJob, heavy_atoms, prepare_pair,
                                      prepare_simulated, sources)
from cryosamu_cli.data.pairs import Pair, read_pairs
from cryosamu_cli.structure import read_atoms

if TYPE_CHECKING:  # embed imports torch, which a run without embeddings does not need
    from cryosamu_cli.data.embed import StructureEmbedder

PAPER_PAIRS = Path(__file__).resolve().parent / "paper_pairs.csv"


def prepare_data(*, pairs_csv: str | os.PathLike | None = None, output_dir: str | os.PathLike,
                 options: PrepareOptions = PrepareOptions(), workers: int = 1,
                 role: str | None = None, simulate_from: str | os.PathLike | None = None,
                 noise_reference: str | os.PathLike | None = None, seed: int = 0,
                 simulate_repeats: int = 1, degrade_real: int = 0,
                 embedder: StructureEmbedder | None = None,
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
        pairs_csv: Map–model pairs (see :func:`cryosamu_cli.data.pairs.read_pairs`).
        output_dir: Folder for ``manifest.json`` and ``shards/``.
        options: Filters and sizes.
        workers: Pairs prepared in parallel processes.
        role: Keep only CSV rows of this split/role.
        simulate_from: Folder(s) of PDB/mmCIF models to make simulated pairs from
            (:mod:`cryosamu_cli.data.degrade`), named ``sim-<file stem>``.
        noise_reference: A real map whose power spectrum shapes the simulated noise of the
            ``basic`` degradation (needed there with ``simulate_from``; unused by
            ``realistic``).
        seed: Seed of the simulated degradations (each model gets its own stream).
        simulate_repeats: Simulated maps per model, each with its own degradation; the
            repeats are named ``sim-<stem>-r<k>`` and share the split of ``sim-<stem>``.
        degrade_real: Copies of every real pair degraded to a random 4.5–8 Å
            (:func:`cryosamu_cli.data.real_degradation.degraded_real_map`, half of them
            low-passed; with ``options.degradation == "realistic"`` copies 1, 2, 5, 6, … keep a
            masked map's mask), named ``<pair>-d<k>``, in the pair's split, with the
            degradation recorded.
        embedder: Model atoms → ``800 × d`` structure embedding
            (:func:`cryosamu_cli.data.embed.structure_embedder`); saved as
            ``embeddings/<name>.npy`` for every pair that is ``ok``, the encoder recorded in
            the manifest; pairs kept from an earlier run without this encoder's embedding get
            one. None: no embeddings (``--no-struct``).
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
    uses_reference = uses_noise_reference(options.degradation)
    if simulate_from and uses_reference and noise_reference is None:
        raise ConfigError("--simulate-from with --degradation basic needs --noise-reference MAP "
                          "(a real map whose noise spectrum the simulated maps follow)")
    jobs = _jobs(pairs_csv, role, simulate_from, noise_reference if uses_reference else None,
                 seed, simulate_repeats, degrade_real)
    with folder_removed_if_left_empty(output_dir / "shards"):  # a failure leaves no empty folder
        manifest = _load_manifest(output_dir, options)
        done = {e["name"]: e for e in manifest["pairs"] if _is_finished(e, output_dir)}
        todo = [job for job in jobs if job.name not in done]
        manifest["pairs"] = [done[job.name] for job in jobs if job.name in done]
        if options.dedup_identity is not None:
            todo, duplicates = deduplicate(todo, options.dedup_identity)
            manifest["pairs"] += duplicates
        to_embed = [e for e in manifest["pairs"] if _needs_embedding(e, embedder)]
        if embedder is not None:
            manifest["struct_encoder"] = {"name": embedder.name, "dim": embedder.dim}
        if on_plan is not None:
            on_plan(len(todo) + len(to_embed))
        for entry in to_embed:
            _embed_entry(output_dir, entry, embedder)
            _save_manifest(output_dir, manifest)
            if on_pair is not None:
                on_pair(entry)
        for entry in _run_jobs(todo, output_dir, options, workers, download_progress):
            if _needs_embedding(entry, embedder):
                _embed_entry(output_dir, entry, embedder)
            manifest["pairs"].append(entry)
            _save_manifest(output_dir, manifest)
            if on_pair is not None:
                on_pair(entry)
        order = {job.name: i for i, job in enumerate(jobs)}
        manifest["pairs"].sort(key=lambda e: order.get(e["name"], len(order)))
        _save_manifest(output_dir, manifest)
        return manifest


def uses_noise_reference(degradation: str) -> bool:
    """Whether simulations of this degradation kind take their noise spectrum from
    ``--noise-reference`` (``basic``; the ``realistic`` noise follows each map's own signal)."""
    return degradation == "basic"


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


def _degraded_jobs(pair: Pair, count: int, seed: int) -> list[DegradedPairJob]:
    """``count`` seeded degradations of one real pair."""
    rng = np.random.default_rng(seed)
    low, high = DEGRADE_REAL_RANGE_A
    return [DegradedPairJob(pair, k, round(float(rng.uniform(low, high)), 2),
                             bool(k % 2 == 0), seed + k) for k in range(1, count + 1)]


def _simulation_jobs(folder: Path, noise_reference, seed: int,
                     repeats: int = 1) -> list[SimulationJob]:
    """``repeats`` jobs per model file in ``folder``, with the reference noise spectrum
    (None where the degradation does not use one: the realistic noise follows each map's own
    signal)."""
    if repeats < 1:
        raise ConfigError(f"--simulate-repeats must be at least 1, got {repeats}")
    if not folder.is_dir():
        raise ConfigError(f"--simulate-from folder not found: {folder}")
    reference = None
    if noise_reference is not None:
        data, grid_info = mapio.read_map(noise_reference)
        reference = degrade.radial_power_spectrum(data, grid_info.voxel_size_zyx)
    models = sorted(p for p in folder.iterdir()
                    if p.name.lower().endswith((".pdb", ".cif", ".ent", ".pdb.gz", ".cif.gz")))
    jobs = []
    for i, path in enumerate(models):
        group = f"sim-{path.name.split('.')[0]}"
        jobs += [SimulationJob(group if k == 0 else f"{group}-r{k}", path, reference,
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
    if isinstance(job, SimulationJob):
        return job.model_path
    return sources(getattr(job, "pair", job))[1]


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
    if isinstance(job, SimulationJob):
        return prepare_simulated(job, output_dir, options)
    if isinstance(job, DegradedPairJob):
        return prepare_pair(job.pair, output_dir, options, download_progress, degraded=job)
    return prepare_pair(job, output_dir, options, download_progress)


def _needs_embedding(entry: dict, embedder: StructureEmbedder | None) -> bool:
    """Whether an ``ok`` pair lacks an embedding by ``embedder``'s encoder."""
    return (embedder is not None and entry.get("status") == "ok"
            and entry.get("struct_encoder") != embedder.name)


def _embed_entry(output_dir: Path, entry: dict, embedder: StructureEmbedder) -> None:
    """Embed the pair's model and save it (float16) as ``embeddings/<name>.npy``, recording
    the file and the encoder in ``entry``; a model without a backbone gets a note instead."""
    entry["struct_encoder"] = embedder.name
    entry.pop("embedding_note", None)
    try:
        embedding = np.asarray(embedder(heavy_atoms(read_atoms(entry["source"]["model"]))))
    except ValueError as exc:
        entry["embedding"], entry["embedding_note"] = None, str(exc)
        return
    path = output_dir / "embeddings" / f"{entry['name']}.npy"
    path.parent.mkdir(exist_ok=True)
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, embedding.astype(np.float16))
    entry["embedding"] = str(path.relative_to(output_dir))


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
