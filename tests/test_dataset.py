"""``prepare-data``: eq. 1 targets, cube shards, splits, manifest, resuming, the Dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cryosamu_cli import grid, mapio, metrics, simulate
from cryosamu_cli.data import dataset
from cryosamu_cli.data import pair_shards
from cryosamu_cli.data import prepare
from cryosamu_cli.cli.app import app
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.data.pairs import Pair
from cryosamu_cli.structure import protein_filters, read_atoms

runner = CliRunner()


@pytest.fixture
def two_pairs_csv(shared_data, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "name,map,model,resolution,split,emdb\n"
        f"vp6,{shared_data}/pairs/emd-1461/emd_1461.mrc,"
        f"{shared_data}/pairs/emd-1461/rotavirus_vp6.pdb,3.8,train,EMD-1461\n"
        f"mito,{shared_data}/pairs/emd-2566/2566_3J6B_9.mrc,"
        f"{shared_data}/pairs/emd-2566/3J6B_9.pdb,3.2,val,EMD-2566\n"
        f"rna,{shared_data}/pairs/emd-35448/35448_8ihl.mrc,"
        f"{shared_data}/pairs/emd-35448/35448_8ihl.cif,3.0,train,\n"
        f"blurry,{shared_data}/pairs/emd-1461/emd_1461.mrc,"
        f"{shared_data}/pairs/emd-1461/rotavirus_vp6.pdb,12,train,\n"
        f"elsewhere,{shared_data}/pairs/emd-2566/2566_3J6B_9.mrc,"
        f"{shared_data}/pairs/emd-1461/rotavirus_vp6.pdb,3.8,train,\n")
    return path


def test_whole_run_manifest_matches_the_shards(two_pairs_csv, tmp_path):
    out = tmp_path / "data"
    result = runner.invoke(app, ["prepare-data", str(two_pairs_csv), "-o", str(out),
                                 "--no-struct"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["pairs"]}
    assert entries["vp6"]["status"] == "ok" and entries["mito"]["status"] == "ok"
    assert entries["rna"]["status"] == "filtered" and "protein_only" in entries["rna"]["reason"]
    assert entries["blurry"]["status"] == "failed" and "--max-res" in entries["blurry"]["reason"]
    assert entries["elsewhere"]["status"] == "failed"
    assert "do not overlap" in entries["elsewhere"]["reason"]
    for name in ("vp6", "mito"):
        shard = np.load(out / entries[name]["shard"], mmap_mode="r")
        assert shard.shape == (entries[name]["cubes"], 2, 64, 64, 64) and shard.dtype == np.float16
        assert entries[name]["cubes"] > 0 and entries[name]["cc_mask"] >= 0.65
    assert entries["vp6"]["ids"]["emdb"] == "EMD-1461"
    assert manifest["target"]["resolution_A"] == 2.0
    assert "vp6" in result.stderr and "filtered" in result.stderr


def test_resume_skips_finished_pairs(two_pairs_csv, tmp_path):
    out = tmp_path / "data"
    first = prepare.prepare_data(pairs_csv=two_pairs_csv, output_dir=out, workers=2)
    assert {e["name"]: e["status"] for e in first["pairs"]} == {
        "vp6": "ok", "mito": "ok", "rna": "filtered", "blurry": "failed", "elsewhere": "failed"}
    shard = out / "shards" / "vp6.npy"
    stamp = shard.stat().st_mtime_ns
    seen = []
    second = prepare.prepare_data(pairs_csv=two_pairs_csv, output_dir=out,
                                  on_pair=lambda e: seen.append(e["name"]))
    assert shard.stat().st_mtime_ns == stamp
    assert sorted(seen) == ["blurry", "elsewhere"]  # only the failed ones are retried
    names = ["vp6", "mito", "rna", "blurry", "elsewhere"]  # the CSV's order, whatever finished first
    assert [e["name"] for e in first["pairs"]] == names == [e["name"] for e in second["pairs"]]


def test_an_interrupted_first_run_leaves_no_empty_folders(two_pairs_csv, tmp_path):
    def interrupt(count):
        raise KeyboardInterrupt  # Ctrl-C before the first pair finishes

    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_data(pairs_csv=two_pairs_csv, output_dir=tmp_path / "new" / "data",
                             on_plan=interrupt)
    assert not (tmp_path / "new").exists()


def test_a_pair_the_protein_filter_refuses_says_so_even_without_a_resolution(shared_data,
                                                                               tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("name,map,model,resolution,split\n"
                        f"rna,{shared_data}/pairs/emd-35448/35448_8ihl.mrc,"
                        f"{shared_data}/pairs/emd-35448/35448_8ihl.cif,,train\n")
    (entry,) = prepare.prepare_data(pairs_csv=csv_path, output_dir=tmp_path / "d")["pairs"]
    assert entry["status"] == "filtered" and "protein_only" in entry["reason"]
    shown = runner.invoke(app, ["prepare-data", "--help"], env={"COLUMNS": "200"})
    assert "basic only, and required there" in " ".join(shown.stdout.split())


def test_dataset_reads_back_the_cubes_written_and_splits_are_by_map(two_pairs_csv, tmp_path):
    out = tmp_path / "data"
    manifest = prepare.prepare_data(pairs_csv=two_pairs_csv, output_dir=out)
    train = dataset.CubePairDataset(out, "train")
    val = dataset.CubePairDataset(out, "val")
    assert train.names == ["vp6"] and val.names == ["mito"]
    assert set(train.names).isdisjoint(val.names)
    shard = np.load(out / "shards" / "vp6.npy")
    last = len(train) - 1
    source, target = train[last]
    assert source.shape == (1, 64, 64, 64) and str(source.dtype) == "torch.float32"
    assert np.array_equal(source.numpy()[0], shard[last, 0].astype(np.float32))
    assert np.array_equal(target.numpy()[0], shard[last, 1].astype(np.float32))
    assert len(train) == next(e["cubes"] for e in manifest["pairs"] if e["name"] == "vp6")


def test_cube_pairs_round_trip_and_padding():
    rng = np.random.default_rng(0)
    source = rng.random((70, 40, 30)).astype(np.float32)
    target = np.zeros_like(source)
    target[5:10, 5:10, 5:10] = 1.0
    cubes = dataset.cut_cube_pairs(source, target, cube_size=32, padding=32)
    # padded by 32 (and up to whole cubes): only the cube holding the blob is kept, and it
    # starts where the unpadded volume starts
    assert cubes.shape == (1, 2, 32, 32, 32)
    assert np.array_equal(cubes[0, 0, :, :, :30], source[:32, :32, :30].astype(np.float16))
    assert cubes[0, 1].astype(np.float32).sum() == pytest.approx(125.0)
    far = np.zeros_like(target)
    far[40:45, 35:38, 27:29] = 1.0  # in the cube covering x 0..31 of (z 32..63, y 32..63)
    edge = dataset.cut_cube_pairs(source, far, 32, 32)
    assert edge.shape[0] == 1
    assert np.array_equal(edge[0, 0, :, :8, :30], source[32:64, 32:40, :30].astype(np.float16))
    assert not edge[0, 0, :, 8:, :].any() and not edge[0, 0, :, :, 30:].any()  # padding


def test_splits_follow_the_csv_and_keep_eval_out_of_training():
    def pair(name, split):
        return Pair(name, None, None, 5.0, split)

    assert pair_shards.split_of(pair("a", "val"), 0.1) == "val"
    assert pair_shards.split_of(pair("a", "eval"), 0.1) == "test"
    assert pair_shards.split_of(pair("a", "io-only"), 0.1) == "excluded"
    unsplit = [pair_shards.split_of(pair(f"map{i}", ""), 0.2) for i in range(200)]
    assert set(unsplit) == {"train", "val"} and 20 < unsplit.count("val") < 60
    assert pair_shards.split_of(pair("map7", ""), 0.2) == pair_shards.split_of(pair("map7", ""), 0.2)


@pytest.mark.parametrize("resolution, with_b", [(2.0, True), (4.0, False), (6.0, False)])
def test_eq1_agrees_with_gemmi(shared_data, resolution, with_b):
    # gemmi's DensityCalculatorE (electron form factors, the model's B-factors) against eq. 1
    # (Z-weighted Gaussians), both low-passed at the resolution, on 3MFP. Measured: at 2 Å,
    # 0.967 with the model's B-factors in eq. 1 (--target-bfactors) and 0.928 without (the
    # B-factors matter at 2 Å); 0.973 at 4 Å and 0.981 at 6 Å with eq. 1 as written.
    gemmi = pytest.importorskip("gemmi")
    path = shared_data / "pairs/emd-5168/3MFP.pdb"
    atoms = read_atoms(path)
    low = atoms.xyz.min(0) - 8
    cell = np.ceil(atoms.xyz.max(0) + 8 - low)
    structure = gemmi.read_structure(str(path))
    structure.setup_entities()
    for site in structure[0].all():
        site.atom.pos = gemmi.Position(*(np.array(site.atom.pos.tolist()) - low))
    structure.cell = gemmi.UnitCell(*cell, 90, 90, 90)
    structure.spacegroup_hm = "P 1"
    calculator = gemmi.DensityCalculatorE()
    calculator.d_min = 2.0
    calculator.rate = 1.0
    calculator.set_grid_cell_and_spacegroup(structure)
    calculator.put_model_density_on_grid(structure[0])
    theirs = np.transpose(np.array(calculator.grid, copy=False), (2, 1, 0))
    voxel = tuple(cell / np.array(theirs.shape[::-1]))
    ours = simulate.simulate_density(atoms.xyz - low, atoms.atomic_number, theirs.shape, voxel,
                                     (0.0, 0.0, 0.0), resolution,
                                     extra_b=atoms.b_iso if with_b else None)
    shells, width = grid.shell_index(theirs.shape, voxel[::-1])
    keep = shells * width < 1.0 / resolution

    def low_pass(volume):
        return np.fft.irfftn(np.fft.rfftn(volume) * keep, s=volume.shape, axes=(0, 1, 2))

    assert metrics.pearson(low_pass(ours), low_pass(theirs)) >= 0.95


def test_protein_filters_on_real_models(shared_data):
    rna = protein_filters(read_atoms(shared_data / "pairs/emd-35448/35448_8ihl.cif"))
    assert rna["protein_only"] is False and rna["has_protein"] is True
    actin = protein_filters(read_atoms(shared_data / "pairs/emd-5168/3MFP.pdb"))
    assert all(actin.values())


def test_structure_embeddings_with_random_esm_if1_weights(shared_data, tmp_path):
    pytest.importorskip("esm", reason="fair-esm is not installed (pip install -e '.[test]')")
    from cryosamu_cli.data import embed

    model, alphabet = embed.load_esm_if1(random_weights=True)
    assert 1.3e8 < sum(p.numel() for p in model.parameters()) < 1.5e8  # the 142M architecture
    csv_path = tmp_path / "one.csv"
    csv_path.write_text("name,map,model,resolution,split\n"
                        f"mito,{shared_data}/pairs/emd-2566/2566_3J6B_9.mrc,"
                        f"{shared_data}/pairs/emd-2566/3J6B_9.pdb,3.2,train\n")
    calls = []

    def embed_esm(atoms):
        calls.append(len(atoms))
        return embed.embed_structure(atoms, model, alphabet).numpy()

    embedder = embed.StructureEmbedder("esm-if1", embed.ESM_IF1_DIM, embed_esm)
    manifest = prepare.prepare_data(pairs_csv=csv_path, output_dir=tmp_path / "d",
                                    embedder=embedder)
    assert manifest["struct_encoder"] == {"name": "esm-if1", "dim": 512}
    (entry,) = manifest["pairs"]
    stored = np.load(tmp_path / "d" / entry["embedding"])
    assert stored.shape == (800, 512) and stored.dtype == np.float16 and len(calls) == 1
    direct = embedder(read_atoms(shared_data / "pairs/emd-2566/3J6B_9.pdb"))
    assert np.allclose(stored.astype(np.float32), direct, atol=1e-3)  # deterministic
    data = dataset.CubePairDataset(tmp_path / "d", "train", with_struct=True)
    source, target, embedding = data[0]
    assert embedding.shape == (800, 512) and source.shape == (1, 64, 64, 64)


def test_torch_scatter_stand_in_matches_index_add():
    pytest.importorskip("torch_geometric")
    import sys

    import torch

    from cryosamu_cli.data import embed

    embed._provide_torch_scatter()
    scatter_add = sys.modules["torch_scatter"].scatter_add
    index = torch.tensor([0, 2, 2, 1, 0])
    src = torch.arange(10.0).reshape(5, 2)
    expected = torch.zeros(4, 2).index_add_(0, index, src)
    assert torch.equal(scatter_add(src, index, dim=0, dim_size=4), expected)
    assert torch.equal(scatter_add(torch.ones(5), index, dim_size=3), torch.tensor([2.0, 1, 2]))


def test_simulated_pairs_from_models(shared_data, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("1akeA.pdb", "1aki.cif"):
        (models / name).write_bytes((shared_data / "structures" / name).read_bytes())
    out = tmp_path / "sim"
    reference = shared_data / "unpaired/emd_6824.mrc"
    result = runner.invoke(app, ["prepare-data", "-o", str(out), "--no-struct",
                                 "--simulate-from", str(models), "--noise-reference",
                                 str(reference), "--seed", "3"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["pairs"]}
    assert set(entries) == {"sim-1akeA", "sim-1aki"}
    for entry in entries.values():
        assert entry["status"] == "ok" and entry["cubes"] > 0
        assert 4.0 <= entry["degradation"]["resolution_A"] <= 8.0
        shard = np.load(out / entry["shard"], mmap_mode="r")
        assert shard.shape[0] == entry["cubes"]
        source, target = shard[0, 0].astype(np.float32), shard[0, 1].astype(np.float32)
        assert 0.2 < metrics.pearson(source, target) < 0.98  # related, but degraded
    again = prepare.prepare_data(output_dir=tmp_path / "again", simulate_from=models,
                                 noise_reference=reference, seed=3)
    assert [e["degradation"] for e in again["pairs"]] == [
        entries[e["name"]]["degradation"] for e in again["pairs"]]
    missing = runner.invoke(app, ["prepare-data", "-o", str(out), "--no-struct",
                                  "--simulate-from", str(models), "--degradation", "basic"])
    assert missing.exit_code == 1 and "--noise-reference" in missing.stderr
    # the first run gave a reference to the (default) realistic degradation, which ignores it
    assert "used by --degradation basic only" in " ".join(result.stderr.split())
    # the realistic noise follows each map's own signal: no reference needed, same draws
    without = prepare.prepare_data(output_dir=tmp_path / "without", simulate_from=models,
                                   seed=3)
    assert [e["degradation"] for e in without["pairs"]] == [
        entries[e["name"]]["degradation"] for e in without["pairs"]]


def test_simulate_repeats_draw_new_degradations_in_the_split_of_their_model(shared_data,
                                                                              tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "1akeA.pdb").write_bytes((shared_data / "structures" / "1akeA.pdb").read_bytes())
    reference = shared_data / "unpaired/emd_6824.mrc"
    manifest = prepare.prepare_data(output_dir=tmp_path / "sim", simulate_from=models,
                                    noise_reference=reference, seed=3, simulate_repeats=3)
    entries = {e["name"]: e for e in manifest["pairs"]}
    assert set(entries) == {"sim-1akeA", "sim-1akeA-r1", "sim-1akeA-r2"}
    assert len({e["split"] for e in entries.values()}) == 1
    assert len({e["degradation"]["resolution_A"] for e in entries.values()}) == 3
    single = prepare.prepare_data(output_dir=tmp_path / "one", simulate_from=models,
                                  noise_reference=reference, seed=3)
    assert single["pairs"][0]["degradation"] == entries["sim-1akeA"]["degradation"]
    with pytest.raises(ConfigError, match="at least 1"):
        prepare.prepare_data(output_dir=tmp_path / "none", simulate_from=models,
                             noise_reference=reference, simulate_repeats=0)


def test_shaped_noise_follows_the_reference_spectrum(shared_data):
    from cryosamu_cli.data import degrade

    data, grid_info = mapio.read_map(shared_data / "unpaired/emd_6824.mrc")
    frequency, power = degrade.radial_power_spectrum(data, grid_info.voxel_size_zyx)
    noise = degrade.shaped_noise((80, 80, 80), 1.0, (frequency, power),
                                 np.random.default_rng(0))
    f_noise, p_noise = degrade.radial_power_spectrum(noise, (1.0, 1.0, 1.0))
    inside = (f_noise > 0.02) & (f_noise < frequency[-1])
    ratio = p_noise[inside] / np.interp(f_noise[inside], frequency, power)
    assert ratio.std() / ratio.mean() < 0.25  # same shape, up to a scale


def test_ids_are_downloaded_from_emdb_and_rcsb(shared_data, tmp_path, http_server, monkeypatch):
    import gzip

    import gemmi

    from cryosamu_cli import download

    base, routes, hits = http_server
    monkeypatch.setenv("CRYOSAMU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(download.EMDB_URL_ENV, f"{base}/emdb")
    monkeypatch.setenv(download.RCSB_URL_ENV, f"{base}/pdb")
    map_bytes = gzip.compress((shared_data / "pairs/emd-2566/2566_3J6B_9.mrc").read_bytes())
    structure = gemmi.read_structure(str(shared_data / "pairs/emd-2566/3J6B_9.pdb"))
    cif = structure.make_mmcif_document().as_string().encode()
    routes["/emdb/EMD-2566/map/emd_2566.map.gz"] = lambda n: 503 if n == 1 else map_bytes
    routes["/pdb/3J6B.cif.gz"] = gzip.compress(cif)
    routes["/emdb/EMD-9999/map/emd_9999.map.gz"] = ("cut", map_bytes)
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("name,map,model,resolution,split\n"
                        "by-id,EMD-2566,3J6B,3.2,train\n"
                        "cut,EMD-9999,3J6B,3.2,train\n")
    seen = {}
    manifest = prepare.prepare_data(
        pairs_csv=csv_path, output_dir=tmp_path / "d",
        download_progress=lambda label, done, total: seen.__setitem__(label, (done, total)))
    entries = {e["name"]: e for e in manifest["pairs"]}
    assert entries["by-id"]["status"] == "ok" and entries["by-id"]["cubes"] > 0
    assert seen["EMD-2566"] == (len(map_bytes), len(map_bytes))
    assert hits["/emdb/EMD-2566/map/emd_2566.map.gz"] == 2  # a 503, then a retry
    assert entries["cut"]["status"] == "failed"
    assert "failed after 3 attempts (ChunkedEncodingError)" in entries["cut"]["reason"]
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached == ["3J6B.cif.gz", "emd_2566.map.gz"]  # nothing partial left


def test_paper_tables_ship_with_the_package():
    from cryosamu_cli.data.pairs import read_pairs

    pairs = read_pairs(prepare.PAPER_PAIRS)
    counts = {s: sum(p.split == s for p in pairs) for s in ("train", "val", "test")}
    assert counts == {"train": 245, "val": 62, "test": 75}  # as listed in Tables S1-S3
    assert all(4.0 <= p.resolution_A <= 8.0 for p in pairs)
    first = pairs[0]
    assert (first.map_path.name, first.model_path.name, first.resolution_A) == (
        "EMD-21388", "6VU8", 4.14)


def test_deduplication_keeps_one_model_per_protein(shared_data):
    pytest.importorskip("biotite")
    from cryosamu_cli.structure import sequence_identity

    folder = shared_data / "pairs"
    jobs = [Pair("vp6", folder / "emd-1461/emd_1461.mrc", folder / "emd-1461/rotavirus_vp6.pdb",
                 3.8, "train"),
            Pair("mito", folder / "emd-2566/2566_3J6B_9.mrc", folder / "emd-2566/3J6B_9.pdb",
                 3.2, "train"),
            Pair("vp6-again", folder / "emd-1461/rotavirus_vp6-96o.mrc",
                 folder / "emd-1461/rotavirus_vp6_fitted.pdb", 3.8, "train")]
    kept, dropped = prepare.deduplicate(jobs, 0.3)
    assert [j.name for j in kept] == ["vp6", "mito"]
    (entry,) = dropped
    assert entry["name"] == "vp6-again" and entry["status"] == "filtered"
    assert "sequence identity with vp6" in entry["reason"]
    assert sequence_identity("ACDEFGHIKL", "ACDEFGHIKL") == 1.0
    assert sequence_identity("ACDEFGHIKLMNPQ", "ACDWFGHIKLMNPQ") == pytest.approx(13 / 14)


def test_target_bfactors_blur_the_target(shared_data):
    data, grid_info = mapio.read_map(shared_data / "pairs/emd-2566/2566_3J6B_9.mrc")
    atoms = read_atoms(shared_data / "pairs/emd-2566/3J6B_9.pdb")
    _, plain = pair_shards.map_and_target_on_1A(data, grid_info, atoms)
    _, blurred = pair_shards.map_and_target_on_1A(data, grid_info, atoms, with_bfactors=True)
    assert plain.shape == blurred.shape
    assert blurred.sum() == pytest.approx(plain.sum(), rel=0.02)  # same mass, spread wider
    assert blurred.max() < plain.max()
