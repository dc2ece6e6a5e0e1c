"""``cryosamu train``: a real tiny CPU run, resume, DDP with two processes, and the checkpoint
in ``enhance``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from cryosamu_cli.training import augment
from cryosamu_cli.data import dataset
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.training import loop as train
from cryosamu_cli.examples import write_example_map
from cryosamu_cli.device import native_bf16_feature, resolve_precision
from cryosamu_cli.model.unet import UNet3D
from cryosamu_cli.weights import load_model


def _cube_pair(seed: int, edge: int = 64) -> np.ndarray:
    """A target of sharp blobs and an input that is its blurred, noisy version."""
    rng = np.random.default_rng(seed)
    target = np.zeros((edge,) * 3, np.float32)
    for _ in range(6):
        z, y, x = rng.integers(8, edge - 8, 3)
        target[z, y, x] = 1.0
    target = ndimage.gaussian_filter(target, 1.5)
    target /= target.max()
    source = ndimage.gaussian_filter(target, 3.0) + rng.normal(0, 0.02, target.shape)
    source = np.clip(source / source.max(), 0, 1)
    return np.stack([source, target]).astype(np.float16)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small prepare-data folder: 2 training pairs (3 cubes each), 1 validation pair."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "shards").mkdir()
    entries = []
    for index, split in enumerate(("train", "train", "val")):
        name = f"pair{index}"
        cubes = np.stack([_cube_pair(10 * index + c) for c in range(3 if split == "train" else 1)])
        dataset.write_shard(folder / "shards" / f"{name}.npy", cubes)
        entries.append({"name": name, "split": split, "status": "ok", "cubes": len(cubes),
                        "shard": f"shards/{name}.npy"})
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "pairs": entries}))
    return folder


def _config(**changes):
    base = dict(epochs=1, batch_size=2, learning_rate=3e-3, precision="fp32", augment=False,
                no_struct=True, seed=0)
    return train.TrainConfig(**{**base, **changes})


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(data_dir, tiny_config):
    torch.manual_seed(0)
    model = UNet3D.from_config(tiny_config)
    data = dataset.CubePairDataset(data_dir, "train")
    centre = (..., slice(16, 48), slice(16, 48), slice(16, 48))  # 32³: an 8th of the work
    batch = (torch.stack([data[0][0], data[1][0]])[centre].contiguous(),
             torch.stack([data[0][1], data[1][1]])[centre].contiguous())
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=100)
    config = _config()
    losses = [train.train_step(model, batch, optimiser, scheduler, config, None,
                               torch.device("cpu")) for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0]


def test_run_checkpoints_and_resume_continues(data_dir, tiny_config, tmp_path):
    run = tmp_path / "run"
    first = train.train(data_dir=data_dir, run_dir=run, config=_config(epochs=1),
                        model_config=tiny_config)
    assert first["epochs"] == 1 and first["steps"] == 3  # 6 cubes in batches of 2
    saved = torch.load(run / "last.pt", weights_only=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["val_loss"] is not None
    assert json.loads((run / "best.json").read_text())["model"] == tiny_config.to_dict()

    resumed = train.train(data_dir=data_dir, run_dir=run, config=_config(epochs=2),
                          model_config=tiny_config, resume=True)
    assert resumed["epochs"] == 2 and resumed["steps"] == 6
    assert [r["epoch"] for r in resumed["history"]] == [2]  # epoch 1 was not redone
    # the optimiser continued from the saved state: its step counter went on from 3 to 6
    after = torch.load(run / "last.pt", weights_only=True)
    steps = {k: v["step"] for k, v in after["optimiser"]["state"].items()}
    assert set(steps.values()) == {6.0} or set(int(s) for s in steps.values()) == {6}
    assert int(saved["optimiser"]["state"][0]["step"]) == 3
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_a_failed_run_leaves_no_empty_run_folder(data_dir, tiny_config, tmp_path):
    run = tmp_path / "runs" / "new"
    with pytest.raises(train.ConfigError, match="nothing to resume"):
        train.train(data_dir=data_dir, run_dir=run, config=_config(), model_config=tiny_config,
                    resume=True)
    assert not (tmp_path / "runs").exists()


def test_best_checkpoint_loads_in_enhance(data_dir, tiny_config, tmp_path):
    run = tmp_path / "run"
    train.train(data_dir=data_dir, run_dir=run, config=_config(), model_config=tiny_config)
    model = load_model(run / "best.pt")  # weights_only=True inside
    assert model.config == tiny_config
    source = write_example_map(tmp_path / "example.mrc")
    result = enhance.enhance_map(input_path=source, output_path=tmp_path / "out.mrc",
                                 weights=run / "best.pt")
    assert result.cubes_run == 8


def test_structure_embeddings_reach_the_training_step(data_dir, tiny_config):
    torch.manual_seed(0)
    model = UNet3D.from_config(tiny_config)
    data = dataset.CubePairDataset(data_dir, "train")
    x, y = data[0]
    struct = torch.randn(1, 10, tiny_config.struct_dim)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=10)
    before = model.mid_cross.attention.in_proj_weight.detach().clone()
    train.train_step(model, (x[None], y[None], struct), optimiser, scheduler,
                     _config(no_struct=False), None, torch.device("cpu"))
    assert not torch.equal(before, model.mid_cross.attention.in_proj_weight)


def test_two_process_ddp_run_ends_with_identical_weights(data_dir, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "cryosamu_cli.cli.app", "train", str(data_dir),
               "-o", str(run), "--epochs", "1", "--batch-size", "1", "--preset", "light",
               "--base-channels", "8", "--no-struct", "--precision", "fp32", "--no-augment",
               "--max-steps", "2", "--crop-size", "32"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    checksums = summary["final_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert summary["steps"] == 2
    assert load_model(run / "best.pt").config.base_channels == 8


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    expected = torch.bfloat16 if native_bf16_feature() else None  # by the CPU, no timing
    assert resolve_precision("auto", cpu) is expected
    with pytest.raises(Exception, match="unknown precision"):
        resolve_precision("fp8", cpu)


def test_crop_and_flip_cut_the_same_window_from_input_and_target():
    torch.manual_seed(1)
    volume = torch.arange(2 * 16 ** 3, dtype=torch.float32).reshape(2, 1, 16, 16, 16)
    inputs, targets = augment.crop_and_flip(volume, volume + 0.5, crop_size=8, flip=True)
    assert inputs.shape == targets.shape == (2, 1, 8, 8, 8)
    assert torch.equal(targets - inputs, torch.full_like(inputs, 0.5))  # same voxels in both
    # the crop holds 8³ distinct voxels of the source, each cube from its own batch item
    assert len(torch.unique(inputs[0])) == 512 and inputs[0].max() < 16 ** 3 <= inputs[1].min()
    same, same_targets = augment.crop_and_flip(volume, volume, crop_size=None, flip=False)
    assert torch.equal(same, volume) and torch.equal(same_targets, volume)


def test_flips_reach_every_axis_and_keep_the_values():
    torch.manual_seed(0)
    volume = torch.arange(4 ** 3, dtype=torch.float32).reshape(1, 1, 4, 4, 4)
    seen = set()
    for _ in range(40):
        flipped, _ = augment.crop_and_flip(volume, volume, crop_size=None, flip=True)
        assert torch.equal(flipped.flatten().sort().values, volume.flatten())
        seen.add(tuple(flipped.flatten()[:2].tolist()))
    assert len(seen) > 8  # corners and neighbours move: flips and transpositions both happen


def test_light_preset_trains_on_crops_and_refuses_bad_crop_sizes(data_dir, tmp_path):
    from cryosamu_cli.errors import ConfigError
    from cryosamu_cli.model import preset_config

    light = preset_config("light", base_channels=8)
    assert light.attention_levels == (False, True, True, False) and light.base_channels == 8
    run = tmp_path / "light"
    summary = train.train(data_dir=data_dir, run_dir=run,
                          config=_config(preset="light", base_channels=8, crop_size=32,
                                         augment=True))
    assert summary["steps"] == 3 and np.isfinite(summary["history"][0]["train_loss"])
    assert load_model(run / "best.pt").config == light
    for bad in (30, 72):
        with pytest.raises(ConfigError, match="crop size"):
            train.train(data_dir=data_dir, run_dir=tmp_path / f"bad{bad}",
                        config=_config(preset="light", base_channels=8, crop_size=bad))
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset_config("huge")
