"""Training fit for a short GPU window, checked on the CPU: ``--time-budget`` (cosine over
wall-clock time, checkpoints, resume with a new budget), ``--export-half``, the cubes held on
the device, and a stop with one line when a loss is NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from cryosamu_cli.data import dataset
from cryosamu_cli.training import loop as train
from cryosamu_cli.cli.app import app
from cryosamu_cli.examples import write_example_map
from cryosamu_cli.model.unet import UNet3D
from cryosamu_cli.training.time_budget import TimeBudget
from cryosamu_cli.training import validation
from cryosamu_cli.training.batches import DeviceCubes, LoaderBatches, training_batches
from cryosamu_cli.weights import load_model
from tests.test_train import _config, data_dir  # noqa: F401  (the fixture is shared)

runner = CliRunner()


def test_validation_takes_evenly_spread_cubes():
    assert validation.validation_cubes(10, 4) == [0, 3, 6, 9]
    assert validation.validation_cubes(3, None) == validation.validation_cubes(3, 5) == [0, 1, 2]


def test_budget_cosine_checkpoints_and_end():
    budget = TimeBudget(minutes=1.0, checkpoint_minutes=0.25)
    seen = []
    for seconds in (0.0, 10.0, 15.0, 20.0, 30.0, 46.0, 60.0):
        budget.elapsed = seconds
        seen.append((budget.learning_rate_factor(), budget.checkpoint_due(), budget.spent))
    factors, due, spent = zip(*seen)
    assert factors[0] == 1.0 and factors[4] == pytest.approx(0.5) and factors[-1] == 0.0
    assert list(factors) == sorted(factors, reverse=True)
    assert due == (False, False, True, False, True, True, True)  # every 15 s, once each
    assert spent == (False,) * 6 + (True,)


def test_a_validation_longer_than_the_interval_does_not_make_the_next_checkpoint_due(
        monkeypatch):
    """A 15 s interval and a checkpoint whose validation ends at 31 s: the next checkpoint is
    due 15 s of training later (46 s), not at the next step (32 s)."""
    from cryosamu_cli.training import time_budget

    clock = {"now": 0.0}
    monkeypatch.setattr(time_budget.time, "perf_counter", lambda: clock["now"])
    budget = TimeBudget(minutes=1.0, checkpoint_minutes=0.25)
    budget.start()
    due = []
    for seconds, validation_ends in ((10.0, None), (15.0, 31.0), (32.0, None), (45.0, None),
                                     (46.0, 47.0), (55.0, None), (62.0, 63.0)):
        clock["now"] = seconds
        budget.tick()
        due.append(budget.checkpoint_due())
        if due[-1]:
            clock["now"] = validation_ends
            budget.checkpoint_taken()
    assert due == [False, True, False, False, True, False, True]


def _warm_step_seconds(data_dir, tiny_config) -> float:  # noqa: F811
    """Seconds of one training step of the tiny network on this machine now (after one)."""
    torch.manual_seed(0)
    model = UNet3D.from_config(tiny_config)
    data = dataset.CubePairDataset(data_dir, "train")
    batch = (torch.stack([data[0][0], data[1][0]]), torch.stack([data[0][1], data[1][1]]))
    optimiser = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    config, cpu = _config(crop_size=32), torch.device("cpu")
    train.train_step(model, batch, optimiser, scheduler, config, None, cpu)
    started = time.perf_counter()
    train.train_step(model, batch, optimiser, scheduler, config, None, cpu)
    return time.perf_counter() - started


def _overrun_bound(records: list[dict]) -> float:
    """How far past its budget a run may go, from its own records: its longest stretch of
    steps between validations (the last step is one of them), two of its slowest
    validations, and a second for the rest (so a loaded machine slows the bound as well)."""
    return (max(r["seconds"] for r in records)
            + 2 * max(r["validation_seconds"] for r in records) + 1.0)


def test_time_budget_stops_in_time_and_resume_continues_with_a_new_budget(
        data_dir, tiny_config, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    # room for several steps and two checkpoints however loaded the machine is: the budget
    # grows with this machine's step time, measured now
    budget_s = max(6.0, 10 * _warm_step_seconds(data_dir, tiny_config))
    config = _config(time_budget_minutes=budget_s / 60,
                     checkpoint_minutes=budget_s / 2.4 / 60, learning_rate=1e-3, crop_size=32)
    first = train.train(data_dir=data_dir, run_dir=run, config=config, model_config=tiny_config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the budget is checked before each step; after it come one step and a validation (and at
    # most one checkpoint's validation just before the end): bounded by this run's own times
    assert budget_s <= first["seconds"] <= budget_s + _overrun_bound(records)
    assert len(records) >= 2 and records[-1]["step"] == first["steps"] > 1
    lrs = [r["lr"] for r in records]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * 1e-3  # the cosine spanned it
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert first["epochs"] >= 1  # 3 steps per epoch: several passes fit in the budget

    saved_seconds = torch.load(run / "last.pt", weights_only=True)["progress"]["seconds"]
    second = train.train(data_dir=data_dir, run_dir=run,
                         config=_config(time_budget_minutes=3.0 / 60, learning_rate=1e-3,
                                        crop_size=32),
                         model_config=tiny_config, resume=True)
    assert second["steps"] > first["steps"] and second["epochs"] >= first["epochs"]
    assert second["seconds"] >= saved_seconds + 3.0  # the training time adds up
    state = torch.load(run / "last.pt", weights_only=True)
    assert {int(s["step"]) for s in state["optimiser"]["state"].values()} == {second["steps"]}
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed[:len(records)] == records and len(resumed) > len(records)


def test_half_export_is_half_the_size_and_enhances_like_best(data_dir, tiny_config,
                                                             tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train.train(data_dir=data_dir, run_dir=run, config=_config(export_half=True, crop_size=32),
                model_config=tiny_config)
    full, half = load_model(run / "best.pt"), load_model(run / "best-half.pt")
    assert (run / "best-half.pt").stat().st_size < 0.6 * (run / "best.pt").stat().st_size
    assert all(p.dtype == torch.float32 for p in half.parameters())
    for (name, a), (_, b) in zip(full.state_dict().items(), half.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6), name
    cube = dataset.CubePairDataset(data_dir, "val")[0][0][None]
    with torch.no_grad():
        assert torch.allclose(full(cube), half(cube), atol=1e-2)


def test_device_cubes_give_each_cube_once_per_epoch_across_ranks(data_dir):  # noqa: F811
    data = dataset.CubePairDataset(data_dir, "train")
    ranks = [DeviceCubes(data, batch_size=2, seed=0, rank=r, world=2,
                         device=torch.device("cpu")) for r in range(2)]
    items = [data[i] for i in range(len(data))]
    for epoch in (0, 1):
        seen = []
        for held in ranks:
            held.set_epoch(epoch)
            for inputs, targets in held:
                assert inputs.shape[1:] == (1, 64, 64, 64) and inputs.dtype == torch.float32
                for x, y in zip(inputs, targets):
                    match = [i for i, item in enumerate(items) if torch.equal(item[0], x)]
                    assert len(match) == 1 and torch.equal(items[match[0]][1], y)
                    seen.append(match[0])
        assert sorted(seen) == list(range(len(data)))
    assert len(ranks[0]) == 2 and DeviceCubes.bytes_needed(data) == 6 * 4 * 64 ** 3
    four = [DeviceCubes(data, batch_size=1, seed=0, rank=r, world=4, device=torch.device("cpu"))
            for r in range(4)]
    assert [len(held) for held in four] == [2, 2, 2, 2]  # 6 cubes padded to 8: equal steps
    batches = training_batches(data, batch_size=2, seed=0, rank=0, world=1,
                               device=torch.device("cpu"))
    assert isinstance(batches, LoaderBatches) and len(batches) == 3


def test_a_nan_loss_stops_training_with_one_line_and_no_checkpoint(data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "nan"
    result = runner.invoke(app, ["train", str(data_dir), "-o", str(run), "--epochs", "1",
                                 "--base-channels", "8", "--no-struct", "--precision", "fp32",
                                 "--no-augment", "--learning-rate", "1e30", "--crop-size", "32",
                                 "--max-steps", "2"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "NaN or Inf by step 2 at fp32" in errors[0]
    assert "no checkpoint was written: train again with a lower --learning-rate" in errors[0]
    assert "Traceback" not in result.output
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_cli_time_budget_leaves_a_best_pt_that_enhance_loads(data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "window"
    result = runner.invoke(app, ["train", str(data_dir), "-o", str(run), "--time-budget", "0.05",
                                 "--preset", "light", "--base-channels", "8", "--crop-size", "32",
                                 "--no-struct", "--precision", "fp32", "--export-half",
                                 "--val-cubes", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 3.0 <= summary["seconds"] <= 3.0 + _overrun_bound(records)
    assert "min: train loss" in result.output
    example = write_example_map(tmp_path / "example.mrc")
    enhanced = tmp_path / "enhanced.mrc"
    result = runner.invoke(app, ["enhance", str(example), "-o", str(enhanced), "--weights",
                                 str(run / "best-half.pt")])
    assert result.exit_code == 0, result.output
    assert enhanced.is_file()


def test_the_gpu_training_path_runs_here_with_embeddings(data_dir, tiny_config, tmp_path,
                                                         monkeypatch):  # noqa: F811
    """What `train` does on CUDA — cubes and embeddings held by DeviceCubes, the batch
    augmenter — run end to end on the CPU (only the device differs)."""
    import shutil

    import numpy as np

    from cryosamu_cli.training import augment
    from cryosamu_cli.data.embed import EMBEDDING_LENGTH

    folder = tmp_path / "with_embeddings"
    shutil.copytree(data_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "embeddings").mkdir()
    rng = np.random.default_rng(0)
    for entry in manifest["pairs"]:
        path = folder / "embeddings" / f"{entry['name']}.npy"
        np.save(path, rng.random((EMBEDDING_LENGTH, tiny_config.struct_dim)).astype(np.float16))
        entry["embedding"] = f"embeddings/{entry['name']}.npy"
    manifest["struct_encoder"] = {"name": "test", "dim": tiny_config.struct_dim}
    (folder / "manifest.json").write_text(json.dumps(manifest))

    held = []

    def device_cubes(dataset, **kwargs):
        held.append(DeviceCubes(dataset, **kwargs))
        return held[-1]

    monkeypatch.setattr(train, "training_batches", device_cubes)
    monkeypatch.setattr(train, "input_augmenter", lambda augment_, device: augment.BatchAugmenter())
    run = tmp_path / "run"
    summary = train.train(data_dir=folder, run_dir=run, model_config=tiny_config,
                          config=_config(no_struct=False, augment=True, crop_size=32))
    assert held and held[0].embeddings.shape == (2, EMBEDDING_LENGTH, tiny_config.struct_dim)
    assert summary["steps"] == 3 and np.isfinite(summary["history"][-1]["train_loss"])
    trained = load_model(run / "best.pt")
    torch.manual_seed(0)  # the run's seed: its network before training
    fresh = UNet3D.from_config(tiny_config)
    assert not torch.equal(trained.mid_cross.attention.in_proj_weight,
                           fresh.mid_cross.attention.in_proj_weight)


def test_two_ranks_agree_on_a_time_budget(data_dir, tmp_path):  # noqa: F811
    """Under torchrun every rank stops at the same step (rank 0's clock) and ends with the
    same weights; a rank that stopped alone would leave the other waiting for ever."""
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "cryosamu_cli.cli.app", "train", str(data_dir),
               "-o", str(run), "--time-budget", "0.1", "--checkpoint-minutes", "0.04",
               "--batch-size", "1", "--preset", "light", "--base-channels", "8", "--no-struct",
               "--precision", "fp32", "--no-augment", "--crop-size", "32"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    checksums = summary["final_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1] and summary["steps"] >= 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == summary["steps"] and records[-1]["epoch"] == summary["epochs"]
