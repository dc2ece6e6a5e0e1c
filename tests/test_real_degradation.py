"""Real maps degraded to 4–8 Å (data pipeline and validation), targets at the input's
resolution, and training that fine-tunes and chooses its checkpoint on degraded real maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryosamu_cli import grid, mapio, metrics
from cryosamu_cli.data import degrade, map_statistics, real_degradation
from cryosamu_cli.data import pair_shards
from cryosamu_cli.data import prepare
from cryosamu_cli.training import loop as train
from cryosamu_cli.training import validation
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.data.pairs import Pair, read_pairs
from cryosamu_cli.weights import load_model, save_checkpoint
from tests.test_train import _config, data_dir  # noqa: F401  (the fixture is shared)


@pytest.fixture
def small_pair_csv(shared_data, tmp_path):
    path = tmp_path / "pairs.csv"
    folder = shared_data / "pairs" / "emd-2566"
    path.write_text("name,map,model,resolution,split\n"
                    f"mito,{folder}/2566_3J6B_9.mrc,{folder}/3J6B_9.pdb,3.2,val\n")
    return path


def _shell_snr(signal: np.ndarray, noise: np.ndarray, voxel, resolution_A: float) -> float:
    frequency, s_power = degrade.radial_power_spectrum(signal, voxel)
    _, n_power = degrade.radial_power_spectrum(noise, voxel)
    return float(np.interp(1 / resolution_A, frequency, s_power / n_power))


def test_degraded_real_map_has_the_snr_of_an_fsc_0143_shell_at_its_resolution(shared_data):
    data, g = mapio.read_map(shared_data / "pairs/emd-2566/2566_3J6B_9.mrc")
    voxel = g.voxel_size_zyx
    raw, record = real_degradation.degraded_real_map(data, voxel, 6.0, seed=4, low_pass=False)
    blurred, _ = grid.bfactor_sharpen(data, voxel, 1.0, b_factor=-record.b_blur)
    assert record.b_blur == 72.0 and record.resolution_A == 6.0 and not record.low_pass
    # the added noise is what the map lost: signal/noise power at 1/6 Å is 2·0.143/0.857
    snr = _shell_snr(blurred, raw - blurred, voxel, 6.0)
    assert snr == pytest.approx(degrade.SNR_AT_RESOLUTION, rel=0.25)
    again, _ = real_degradation.degraded_real_map(data, voxel, 6.0, seed=4, low_pass=False)
    assert np.array_equal(raw, again)  # seeded
    limited, record = real_degradation.degraded_real_map(data, voxel, 6.0, seed=4)
    assert record.low_pass
    frequency, power = degrade.radial_power_spectrum(limited, voxel)
    _, raw_power = degrade.radial_power_spectrum(raw, voxel)
    beyond = frequency > 1 / 6.0 + 0.01
    assert power[beyond].sum() < 1e-6 * raw_power[beyond].sum()


def test_deposited_like_maps_fall_off_to_the_rim_and_are_low_passed_and_masked(shared_data):
    data, g = mapio.read_map(shared_data / "pairs/emd-1461/rotavirus_vp6-96o.mrc")  # unmasked
    voxel = g.voxel_size_zyx
    made, record = real_degradation.deposited_like_map(data, voxel, 5.0, seed=3)
    assert (record.resolution_A, record.rim_resolution_A) == (5.0, 7.5)
    assert record.low_pass and record.masked
    frequency, power = degrade.radial_power_spectrum(made, voxel)
    assert power[frequency > 1 / 5.0 + 0.01].sum() < 1e-4 * power.sum()  # low-passed at R
    from cryosamu_cli.enhance.resolution_estimate import molecule_and_solvent

    molecule, _ = molecule_and_solvent(data, voxel)
    far = grid.soft_mask(molecule > 0.5, edge_voxels=3.0) == 0
    assert far.mean() > 0.1 and np.abs(made[far]).max() == 0  # masked: nothing far outside
    # the centre keeps more of the map than the rim: correlation with the map at 5 Å
    reference = grid.band_limit(data, voxel, 5.0)
    index = np.indices(data.shape)
    radius = np.sqrt(sum(((index[a] - (n - 1) / 2) * voxel[a]) ** 2
                         for a, n in enumerate(data.shape)))
    inside = molecule > 0.5
    centre = inside & (radius < 0.2 * radius.max())
    rim = inside & (radius > 0.4 * radius.max())  # rim weight 2/3 and more
    assert centre.sum() > 100 and rim.sum() > 100
    assert (metrics.pearson(made[centre], reference[centre])
            > metrics.pearson(made[rim], reference[rim]) + 0.05)
    # a map that was masked keeps its own mask
    masked, g = mapio.read_map(shared_data / "pairs/emd-1461/emd_1461.mrc")
    inside, background = map_statistics.background_mask(masked)
    made, _ = real_degradation.deposited_like_map(masked, g.voxel_size_zyx, 6.0, seed=3)
    outside = grid.soft_mask(inside, edge_voxels=2.0) == 0
    assert outside.mean() > 0.3 and np.all(made[outside] == background)


def test_degraded_real_pairs_in_prepare_data_with_targets_at_their_resolution(small_pair_csv,
                                                                              tmp_path):
    manifest = prepare.prepare_data(pairs_csv=small_pair_csv, output_dir=tmp_path / "d",
                                    degrade_real=2, seed=1,
                                    options=pair_shards.PrepareOptions(target_resolution_A=None))
    entries = {e["name"]: e for e in manifest["pairs"]}
    assert set(entries) == {"mito", "mito-d1", "mito-d2"}
    assert {e["split"] for e in entries.values()} == {"val"}  # the pair's split, by map
    assert entries["mito"]["target_resolution_A"] == 3.2
    for name in ("mito-d1", "mito-d2"):
        entry = entries[name]
        low, high = pair_shards.DEGRADE_REAL_RANGE_A
        assert low <= entry["resolution_A"] <= high and entry["cubes"] > 0
        assert entry["degradation"]["resolution_A"] == entry["resolution_A"]
        assert entry["target_resolution_A"] == entry["resolution_A"]
    assert entries["mito-d1"]["degradation"]["low_pass"] != \
        entries["mito-d2"]["degradation"]["low_pass"]
    # the degraded input is blurrier than the original's and its target matches it:
    # the target at the input's resolution correlates better with the input than a 2 Å one
    sharp = prepare.prepare_data(pairs_csv=small_pair_csv, output_dir=tmp_path / "d2",
                                 degrade_real=2, seed=1,
                                 options=pair_shards.PrepareOptions(target_resolution_A=2.0))
    sharp_entry = {e["name"]: e for e in sharp["pairs"]}["mito-d1"]
    shard = np.load(tmp_path / "d" / entries["mito-d1"]["shard"]).astype(np.float32)
    shard_2A = np.load(tmp_path / "d2" / sharp_entry["shard"]).astype(np.float32)
    assert np.array_equal(shard[:, 0], shard_2A[:, 0])  # the same degraded input
    assert metrics.pearson(shard[:, 0], shard[:, 1]) > metrics.pearson(shard_2A[:, 0],
                                                                       shard_2A[:, 1]) + 0.02
    assert manifest["target"]["resolution_A"] == "the input's"
    assert pair_shards.parse_target_resolution("input") is None
    assert pair_shards.parse_target_resolution("2") == 2.0
    with pytest.raises(ConfigError, match="target-resolution"):
        pair_shards.parse_target_resolution("sharp")


def test_validation_maps_score_the_model_map_as_perfect_and_refuse_eval_pairs(small_pair_csv):
    (vmap, raw, deposited) = validation.validation_maps_from_csv(str(small_pair_csv))
    assert (vmap.name, raw.name, deposited.name) == ("mito@5A", "mito@6.5A-raw",
                                                     "mito@6A-deposited")
    assert [validation.kind_of(m.name) for m in (vmap, raw, deposited)] == [
        "post-processed", "raw", "deposited-like"]
    assert deposited.degradation.rim_resolution_A == 9.0 and deposited.degradation.masked
    perfect = vmap.scores(vmap.model_map, with_fsc=True)
    assert {k: perfect[k] for k in ("cc_box", "cc_mask", "cc_volume", "cc_peaks")} == \
        pytest.approx({"cc_box": 1, "cc_mask": 1, "cc_volume": 1, "cc_peaks": 1})
    assert perfect["fsc05"] < 5.5  # the model map against its own model: FSC 0.5 near 5 Å
    # the degradation's noise and blur cost score: the map before it, low-passed at the same
    # 5 Å, correlates better with the 5 Å model map than its degraded copy does
    (pair,) = read_pairs(small_pair_csv)
    original, info = mapio.read_map(pair.map_path)
    clean = grid.band_limit(original, info.voxel_size_zyx, 5.0)
    deposited = vmap.scores(vmap.data)
    assert vmap.scores(clean)["cc_mask"] > deposited["cc_mask"] + 0.02
    assert 0.2 < deposited["cc_mask"] < 0.95
    evaluation = Pair(pair.name, pair.map_path, pair.model_path, 6.6, "eval")
    with pytest.raises(ConfigError, match="eval pair"):
        validation.validation_maps([evaluation])
    with pytest.raises(ConfigError, match="unknown validation kind 'blurred'"):
        validation.validation_maps([pair], [(5.0, "blurred")])
    with pytest.raises(ConfigError, match="no row with split 'train'"):
        validation.validation_maps_from_csv(str(small_pair_csv), split="train")


def test_a_faded_rim_keeps_the_centre_and_halves_the_rim_above_the_solvent(shared_data):
    data, info = mapio.read_map(shared_data / "pairs/emd-2566/2566_3J6B_9.mrc")
    voxel = info.voxel_size_zyx
    rim = real_degradation.box_rim_weight(data.shape, voxel)
    assert rim.min() < 0.05 and rim.max() == 1.0 and rim[0, 0, 0] == 1.0  # centre to corner
    assert rim[tuple(n // 2 for n in data.shape)] == rim.min()
    faded = real_degradation.faded_rim_map(data, voxel, 0.5)
    solvent = float(np.median(data[rim >= 1.0]))
    # above the solvent: the same at the centre, half at the rim, in between on the way
    assert np.allclose(faded - solvent, (data - solvent) * (1 - 0.5 * rim), atol=1e-4)
    outer = rim >= 1.0
    assert np.allclose(faded[outer] - solvent, 0.5 * (data[outer] - solvent), atol=1e-4)
    unfaded = real_degradation.faded_rim_map(data, voxel, 1.0)
    assert np.array_equal(unfaded, data.astype(np.float32))


def test_weak_rim_validation_maps_are_raw_at_r_and_scored_against_the_whole_model(
        small_pair_csv):
    (pair,) = read_pairs(small_pair_csv)
    (whole, weak) = validation.validation_maps([pair], [(6.5, "raw"), (6.5, "weak-rim")])
    assert weak.name == "mito@6.5A-weak-rim" and validation.kind_of(weak.name) == "weak-rim"
    assert weak.degradation.rim_strength == validation.WEAK_RIM_STRENGTH
    assert not weak.degradation.low_pass and whole.degradation.rim_strength == 1.0
    assert np.array_equal(weak.model_map, whole.model_map)  # the same whole-model target
    # the faded periphery costs score against the whole model
    assert weak.scores(weak.data)["cc_mask"] < whole.scores(whole.data)["cc_mask"]


def test_training_fine_tunes_and_chooses_best_by_the_real_maps(data_dir, tiny_config,  # noqa: F811
                                                                small_pair_csv, tmp_path):
    from cryosamu_cli.model.unet import UNet3D

    torch.manual_seed(5)
    start = save_checkpoint(tmp_path / "start.pt", UNet3D.from_config(tiny_config))
    run = tmp_path / "run"
    summary = train.train(data_dir=data_dir, run_dir=run, model_config=tiny_config,
                          config=_config(epochs=2, learning_rate=0.0,
                                         init_weights=str(start),
                                         validate_on=str(small_pair_csv)))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"real_cc_box", "real_cc_mask", "real_cc"} <= set(r) for r in records)
    # learning rate 0: the weights are the starting checkpoint's, the scores repeat
    last = load_model(run / "last.pt").state_dict()
    for name, tensor in load_model(start).state_dict().items():
        assert torch.equal(tensor, last[name]), name
    assert records[0]["real_cc"] == pytest.approx(records[1]["real_cc"], abs=1e-6)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and best["real_cc"] == pytest.approx(records[0]["real_cc"])
    assert summary["epochs"] == 2
    other = save_checkpoint(tmp_path / "other.pt", UNet3D.from_config(
        tiny_config.__class__(**{**tiny_config.to_dict(), "base_channels": 16})))
    with pytest.raises(ConfigError, match="different network"):
        train.train(data_dir=data_dir, run_dir=tmp_path / "r2", model_config=tiny_config,
                    config=_config(init_weights=str(other)))


def test_validation_enhances_exactly_as_enhance_does(small_pair_csv, tiny_checkpoint, tmp_path):
    # validation.enhanced_like_enhance repeats enhance_map's steps (1 Å grid, normalisation,
    # tiles, band limit, back): this keeps the two from drifting apart
    from cryosamu_cli.enhance import pipeline as enhance
    from cryosamu_cli.enhance.predictor import NetworkPredictor

    (vmap, *_) = validation.validation_maps_from_csv(str(small_pair_csv))
    source = tmp_path / "degraded.mrc"
    mapio.write_map(source, vmap.data, vmap.grid)
    enhance.enhance_map(input_path=source, output_path=tmp_path / "out.mrc",
                        weights=tiny_checkpoint, resolution=vmap.resolution_A,
                        precision="fp32", density_scale="normalised", band_limit="global")
    by_enhance, _ = mapio.read_map(tmp_path / "out.mrc")
    model = load_model(tiny_checkpoint)
    by_validation = validation.enhanced_like_enhance(
        NetworkPredictor(model, torch.device("cpu")), vmap)
    span = float(by_enhance.max() - by_enhance.min())
    assert np.abs(by_validation - by_enhance).max() < 1e-3 * span
