"""ProteinMPNN's structure encoder, its embeddings in prepare-data, and the struct width in train.

Hand-checkable cases need nothing; the published weights come from ../shared/models (tests that
need them skip with a reason where it is absent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryosamu_cli.data import embed
from cryosamu_cli.data import proteinmpnn
from cryosamu_cli.errors import ConfigError, WeightsError
from cryosamu_cli.structure import read_atoms

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
WEIGHTS = SHARED_MODELS / "proteinmpnn" / "v_48_020.pt"
WEIGHTS_SHA256 = "c9cb4a671d79604111231f8dbfc7c590e06f1197453b7a6854ac6661a642f5bd"


@pytest.fixture(scope="module")
def encoder():
    """The encoder with the published weights."""
    if not WEIGHTS.is_file():
        pytest.skip(f"ProteinMPNN weights {WEIGHTS} are absent (../shared/models beside the "
                    "checkout)")
    return proteinmpnn.load_encoder(WEIGHTS)


def ideal_helix(residues: int, rise_A: float = 1.5, turn_deg: float = 100.0) -> np.ndarray:
    """N, CA, C, O of an α-helix-like backbone: each atom on its own helix (radii 1.55, 2.3,
    1.65, 1.9 Å) turned ``turn_deg`` and raised ``rise_A`` per residue."""
    radii = (1.55, 2.3, 1.65, 1.9)
    phase = np.deg2rad((-28.0, 0.0, 28.0, 40.0))
    lift = (-0.9, 0.0, 0.9, 1.8)
    xyz = np.zeros((residues, 4, 3), dtype=np.float32)
    for i in range(residues):
        angle = np.deg2rad(turn_deg) * i + phase
        xyz[i, :, 0] = np.asarray(radii) * np.cos(angle)
        xyz[i, :, 1] = np.asarray(radii) * np.sin(angle)
        xyz[i, :, 2] = rise_A * i + np.asarray(lift)
    return xyz


def test_the_graph_of_a_helix_by_hand():
    xyz = torch.from_numpy(ideal_helix(10))
    ca = xyz[:, 1]
    neighbours = proteinmpnn.nearest_neighbours(ca, k=3)
    assert neighbours.shape == (10, 3)
    assert torch.equal(neighbours[:, 0], torch.arange(10))  # every residue is its own nearest
    # Cα i±1: 3.83 Å, i±3: 5.05 Å, i±2: 5.43 Å (chords of the 2.3 Å radius and the rise), so
    # residue 0 sees 1 then 3, and residue 5 sees 4 and 6 first, as in a real α-helix
    assert neighbours[0].tolist() == [0, 1, 3] and sorted(neighbours[5, 1:].tolist()) == [4, 6]
    assert proteinmpnn.nearest_neighbours(ca, k=48).shape == (10, 10)  # k capped at R
    d = proteinmpnn.edge_distances(ca, ca, neighbours)
    expected = np.linalg.norm(ideal_helix(10)[5, 1] - ideal_helix(10)[neighbours[5, 1], 1])
    assert d[5, 0] == pytest.approx(1e-3, abs=1e-6)  # sqrt(0 + 1e-6) to itself
    assert float(d[5, 1]) == pytest.approx(expected, abs=1e-5)


def test_virtual_cb_sits_at_the_ideal_distance_and_rbf_peaks_at_its_centres():
    positions = proteinmpnn.atom_positions(torch.from_numpy(ideal_helix(4)))
    ca_cb = torch.linalg.norm(positions["CB"] - positions["CA"], dim=-1)
    assert set(positions) == {"N", "CA", "C", "O", "CB"}
    assert torch.all((ca_cb > 1.2) & (ca_cb < 1.9))  # ~1.5 Å for an ideal N–Cα–C angle
    rbf = proteinmpnn.radial_basis(torch.tensor([[2.0, 22.0, 100.0]]))
    assert rbf.shape == (1, 3, 16)
    assert rbf[0, 0, 0] == 1.0 and rbf[0, 1, 15] == 1.0  # exp(0) at the first and last centre
    assert float(rbf[0, 0, 1]) == pytest.approx(np.exp(-((20 / 15) / 1.25) ** 2), rel=1e-5)
    assert float(rbf[0, 2].max()) < 1e-30  # far beyond the last centre


def test_relative_positions_are_clipped_and_other_chains_have_their_own_class():
    encoding = proteinmpnn._PositionalEncoding()
    with torch.no_grad():
        encoding.linear.bias.zero_()
        encoding.linear.weight.zero_()
        encoding.linear.weight[0, 0] = 1.0   # class 0: offset −32 or less
        encoding.linear.weight[1, 64] = 1.0  # class 64: offset +32 or more
        encoding.linear.weight[2, 65] = 1.0  # class 65: another chain
        encoding.linear.weight[3, 32] = 1.0  # class 32: the residue itself
    out = encoding(torch.tensor([[-50, 40, 0, 3]]), torch.tensor([[True, True, True, False]]))
    assert out[0, 0, 0] == 1 and out[0, 1, 1] == 1 and out[0, 2, 3] == 1 and out[0, 3, 2] == 1
    assert out.sum() == 4


def test_a_random_encoder_gives_one_row_per_residue_deterministically():
    torch.manual_seed(0)
    model = proteinmpnn.ProteinMPNNEncoder(neighbours=8).eval()
    backbone = proteinmpnn.Backbone(ideal_helix(12), np.arange(12), np.array([0] * 6 + [1] * 6),
                                    ("A", "B"))
    first, again = model.encode(backbone), model.encode(backbone)
    assert list(first) == ["A", "B"] and first["A"].shape == (6, 128)
    assert all(torch.equal(first[c], again[c]) for c in first)
    pooled = embed.structure_embedding(list(first.values()))
    assert pooled.shape == (embed.EMBEDDING_LENGTH, embed.PROTEINMPNN_DIM)
    assert float(pooled.min()) == 0.0 and float(pooled.max()) == 1.0


def test_backbone_keeps_complete_standard_residues_only(shared_data):
    backbone = proteinmpnn.backbone_of(read_atoms(shared_data / "pairs/emd-0093/6gyn.pdb"))
    assert backbone.chains == ("A", "B", "C", "D") and backbone.xyz.shape == (1980, 4, 3)
    assert np.isfinite(backbone.xyz).all()
    n_ca = np.linalg.norm(backbone.xyz[:, 0] - backbone.xyz[:, 1], axis=1)
    assert np.all(np.abs(n_ca - 1.46) < 0.1)  # N–Cα bond: the atoms are where they belong


def test_published_weights_load_by_name_and_a_wrong_file_is_one_line(encoder, tmp_path):
    assert len(encoder.encoder_layers) == 3 and encoder.neighbours == 48
    assert encoder.features.edge_embedding.weight.shape == (128, 416)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(WEIGHTS.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="not a readable ProteinMPNN checkpoint") as caught:
        proteinmpnn.load_encoder(truncated)
    assert "\n" not in str(caught.value)
    other = tmp_path / "other.pt"
    torch.save({"model_state_dict": {"W_e.weight": torch.zeros(3, 3)}}, other)
    with pytest.raises(WeightsError, match="not ProteinMPNN's encoder weights"):
        proteinmpnn.load_encoder(other)
    with pytest.raises(WeightsError, match="not found"):
        proteinmpnn.load_encoder(tmp_path / "missing.pt")


def test_embeddings_differ_between_proteins_and_ignore_rotation_and_translation(
        encoder, shared_data):
    atoms = read_atoms(shared_data / "structures/1A5T.pdb")
    other = read_atoms(shared_data / "pairs/emd-2566/3J6B_9.pdb")
    embedding = embed.embed_proteinmpnn(atoms, encoder)
    assert embedding.shape == (800, 128) and torch.isfinite(embedding).all()
    assert float((embedding - embed.embed_proteinmpnn(other, encoder)).abs().mean()) > 0.01
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)),
                               )[0].numpy()
    moved = atoms.__class__(**{**atoms.__dict__,
                               "xyz": atoms.xyz @ rotation.T + np.array([31.0, -12.0, 7.5])})
    moved_embedding = embed.embed_proteinmpnn(moved, encoder)
    # The embedding is a set of key/value rows (the cross-attention has no positions): equal
    # as a set of rows, whatever order float noise gives residues of near-equal weight.
    assert float((rows_sorted(moved_embedding) - rows_sorted(embedding)).abs().max()) < 1e-4


def rows_sorted(embedding: torch.Tensor) -> torch.Tensor:
    """The rows of ``embedding`` in lexicographic order (rows compared as a set)."""
    values = embedding.numpy().round(4)
    return embedding[np.lexsort(values.T[::-1])]


def test_prepare_data_with_proteinmpnn_on_two_real_training_pairs(shared_data, tmp_path):
    if not WEIGHTS.is_file():
        pytest.skip(f"ProteinMPNN weights {WEIGHTS} are absent")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("name,map,model,resolution_A,role\n"
                     f"emd-2566,{shared_data}/pairs/emd-2566/2566_3J6B_9.mrc,"
                     f"{shared_data}/pairs/emd-2566/3J6B_9.pdb,3.2,train\n"
                     f"emd-1461,{shared_data}/pairs/emd-1461/emd_1461.mrc,"
                     f"{shared_data}/pairs/emd-1461/rotavirus_vp6.pdb,3.8,train\n")
    out = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "cryosamu_cli.cli.app", "prepare-data",
                           str(pairs), "-o", str(out), "--struct-encoder", "proteinmpnn",
                           "--encoder-weights", str(WEIGHTS)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "structure embeddings: proteinmpnn (128 wide)" in done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["struct_encoder"] == {"name": "proteinmpnn", "dim": 128}
    embeddings = [np.load(out / e["embedding"]).astype(np.float32) for e in manifest["pairs"]]
    assert [e.shape for e in embeddings] == [(800, 128), (800, 128)]
    assert all(np.isfinite(e).all() for e in embeddings)
    assert np.abs(embeddings[0] - embeddings[1]).mean() > 0.01
    assert all(e["struct_encoder"] == "proteinmpnn" for e in manifest["pairs"])

    from cryosamu_cli.data.dataset import CubePairDataset

    data = CubePairDataset(out, "train", with_struct=True)
    assert data.struct_dim == 128 and data[0][2].shape == (800, 128)


def test_resuming_with_an_encoder_adds_embeddings_without_remaking_shards(shared_data,
                                                                         tmp_path):
    from cryosamu_cli.data.prepare import prepare_data

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("name,map,model,resolution_A,role\n"
                     f"emd-2566,{shared_data}/pairs/emd-2566/2566_3J6B_9.mrc,"
                     f"{shared_data}/pairs/emd-2566/3J6B_9.pdb,3.2,train\n")
    out = tmp_path / "data"
    prepare_data(pairs_csv=pairs, output_dir=out)
    shard = out / json.loads((out / "manifest.json").read_text())["pairs"][0]["shard"]
    made = shard.stat().st_mtime_ns
    torch.manual_seed(0)
    model = proteinmpnn.ProteinMPNNEncoder(neighbours=8).eval()
    embedder = embed.StructureEmbedder("proteinmpnn", 128,
                                       lambda atoms: embed.embed_proteinmpnn(atoms, model).numpy())
    manifest = prepare_data(pairs_csv=pairs, output_dir=out, embedder=embedder)
    entry = manifest["pairs"][0]
    assert shard.stat().st_mtime_ns == made
    assert entry["struct_encoder"] == "proteinmpnn" and manifest["struct_encoder"]["dim"] == 128
    stored = np.load(out / entry["embedding"])
    direct = embedder(read_atoms(shared_data / "pairs/emd-2566/3J6B_9.pdb"))
    np.testing.assert_allclose(stored.astype(np.float32), direct, atol=1e-3)  # float16


def test_choosing_the_encoder():
    assert embed.choose_encoder("proteinmpnn") == "proteinmpnn"
    with pytest.raises(ConfigError, match="unknown structure encoder 'esm2'"):
        embed.choose_encoder("esm2")
    with pytest.raises(ConfigError, match="needs --struct-encoder"):
        embed.choose_encoder(None, "weights.pt")


def test_encoder_weights_download_and_check_against_a_local_server(http_server, tmp_path,
                                                                   monkeypatch):
    from cryosamu_cli import weights

    if not WEIGHTS.is_file():
        pytest.skip(f"ProteinMPNN weights {WEIGHTS} are absent")
    base, routes, _ = http_server
    entry = weights.load_manifest().encoder(embed.PROTEINMPNN_WEIGHTS)
    assert entry.sha256 == WEIGHTS_SHA256 and entry.size == WEIGHTS.stat().st_size
    assert entry.url.startswith("https://github.com/dauparas/ProteinMPNN/") and entry.licence
    routes[f"/{entry.file}"] = WEIGHTS.read_bytes()
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(weights.MIRROR_ENV, base)
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    path = weights.resolve_encoder_weights(embed.PROTEINMPNN_WEIGHTS)
    assert path == tmp_path / "cache" / entry.file and weights.sha256_of(path) == WEIGHTS_SHA256
    routes[f"/{entry.file}"] = b"not the weights"
    path.unlink()
    with pytest.raises(WeightsError):
        weights.resolve_encoder_weights(embed.PROTEINMPNN_WEIGHTS)
    assert not path.exists()


@pytest.fixture
def data_with_embeddings(shared_data, tmp_path):
    """A one-pair prepare-data folder with 128-wide (random-encoder) embeddings."""
    from cryosamu_cli.data.prepare import prepare_data

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("name,map,model,resolution_A,role\n"
                     f"emd-2566,{shared_data}/pairs/emd-2566/2566_3J6B_9.mrc,"
                     f"{shared_data}/pairs/emd-2566/3J6B_9.pdb,3.2,train\n")
    torch.manual_seed(0)
    model = proteinmpnn.ProteinMPNNEncoder(neighbours=8).eval()
    embedder = embed.StructureEmbedder("proteinmpnn", 128,
                                       lambda atoms: embed.embed_proteinmpnn(atoms, model).numpy())
    prepare_data(pairs_csv=pairs, output_dir=tmp_path / "data", embedder=embedder)
    return tmp_path / "data"


def test_a_training_step_with_128_wide_embeddings_moves_the_cross_attention(
        data_with_embeddings, tiny_config):
    import dataclasses

    from cryosamu_cli.training import loop as train
    from cryosamu_cli.data.dataset import CubePairDataset
    from cryosamu_cli.model.unet import UNet3D

    torch.manual_seed(0)
    model = UNet3D.from_config(dataclasses.replace(tiny_config, struct_dim=128))
    x, y, struct = CubePairDataset(data_with_embeddings, "train", with_struct=True)[0]
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=10)
    keys = model.mid_cross.attention.k_proj_weight  # 128 → channels: its own projection
    assert keys.shape[1] == 128
    before = keys.detach().clone()
    config = train.TrainConfig(no_struct=False, augment=False, precision="fp32")
    train.train_step(model, (x[None], y[None], struct[None]), optimiser, scheduler, config,
                     None, torch.device("cpu"))
    assert not torch.equal(before, model.mid_cross.attention.k_proj_weight)


def test_a_struct_width_mismatch_is_one_line_and_the_preset_follows_the_data(
        data_with_embeddings, tiny_config, tmp_path):
    from cryosamu_cli.training import loop as train

    config = train.TrainConfig(epochs=1, batch_size=1, no_struct=False, augment=False,
                               precision="fp32", max_steps_per_epoch=1, preset="light",
                               base_channels=8)
    with pytest.raises(ConfigError, match="takes 16-wide structure embeddings but .* holds "
                                          "128-wide ones") as caught:
        train.train(data_dir=data_with_embeddings, run_dir=tmp_path / "run", config=config,
                    model_config=tiny_config)
    assert "\n" not in str(caught.value)
    train.train(data_dir=data_with_embeddings, run_dir=tmp_path / "run", config=config)
    from cryosamu_cli.weights import load_model

    assert load_model(tmp_path / "run" / "best.pt").config.struct_dim == 128


def test_training_with_embeddings_on_data_without_them_is_refused(shared_data, tmp_path):
    from cryosamu_cli.training import loop as train
    from cryosamu_cli.data.prepare import prepare_data

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("name,map,model,resolution_A,role\n"
                     f"emd-2566,{shared_data}/pairs/emd-2566/2566_3J6B_9.mrc,"
                     f"{shared_data}/pairs/emd-2566/3J6B_9.pdb,3.2,train\n")
    prepare_data(pairs_csv=pairs, output_dir=tmp_path / "data")
    with pytest.raises(ConfigError, match="holds no structure embeddings"):
        train.train(data_dir=tmp_path / "data", run_dir=tmp_path / "run",
                    config=train.TrainConfig(no_struct=False, epochs=1))


def test_struct_dropout_trains_the_inference_path_and_is_range_checked(data_with_embeddings,
                                                                      tiny_config, tmp_path):
    import dataclasses

    from cryosamu_cli.training import loop as train
    from cryosamu_cli.data.dataset import CubePairDataset
    from cryosamu_cli.model.unet import UNet3D

    torch.manual_seed(0)
    model = UNet3D.from_config(dataclasses.replace(tiny_config, struct_dim=128))
    x, y, struct = CubePairDataset(data_with_embeddings, "train", with_struct=True)[0]
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=10)
    before = model.mid_cross.attention.k_proj_weight.detach().clone()
    always_dropped = train.TrainConfig(no_struct=False, augment=False, struct_dropout=1.0)
    train.train_step(model, (x[None], y[None], struct[None]), optimiser, scheduler,
                     always_dropped, None, torch.device("cpu"))
    assert torch.equal(before, model.mid_cross.attention.k_proj_weight)  # never attended
    with pytest.raises(ConfigError, match="--struct-dropout must be between 0 and 1"):
        train.train(data_dir=data_with_embeddings, run_dir=tmp_path / "run",
                    config=train.TrainConfig(no_struct=False, struct_dropout=1.5))
