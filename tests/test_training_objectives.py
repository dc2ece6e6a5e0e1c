"""The correlation loss (hand-made cubes, its gradient) and the EMA of the weights (differs
from the raw weights, loads in enhance, continues across a resumed time-budget run)."""

from __future__ import annotations

import math

import pytest
import torch

from cryosamu_cli.enhance.predictor import load_enhancer
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.training import loop as train
from cryosamu_cli.training.loss import masked_correlation_loss, training_loss
from tests.test_train import _config, data_dir  # noqa: F401  (the fixture is shared)


def _cubes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 8³ target cubes: a dense block (1.0 with a ramp) inside zeros, and an output."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.float64)
    target[:, :, 2:6, 2:6, 2:6] = 0.5 + torch.rand(2, 1, 4, 4, 4, generator=generator,
                                                    dtype=torch.float64)
    output = target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)
    return output, target


def test_correlation_loss_identical_negated_scaled_and_masked():
    output, target = _cubes()
    assert float(masked_correlation_loss(target, target)) == pytest.approx(0.0, abs=1e-12)
    assert float(masked_correlation_loss(-target, target)) == pytest.approx(2.0, abs=1e-12)
    base = float(masked_correlation_loss(output, target))
    assert 0.0 < base < 2.0
    assert float(masked_correlation_loss(3.0 * output + 7.0, target)) == pytest.approx(base)
    outside = output.clone()
    outside[target <= 0.05] = torch.randn(int((target <= 0.05).sum()), dtype=torch.float64)
    assert float(masked_correlation_loss(outside, target)) == pytest.approx(base)
    inside = output.clone()
    inside[target > 0.05] += 0.3 * torch.randn(int((target > 0.05).sum()), dtype=torch.float64)
    assert float(masked_correlation_loss(inside, target)) > base


def test_correlation_loss_by_hand():
    # one cube, mask = the 4 voxels of the target above 0.05: r of (1, 2, 3, 5) with (1, 2, 3, 4)
    target = torch.tensor([[0.0, 0.0, 0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    output = torch.tensor([[9.0, -9.0, 1.0, 2.0, 3.0, 5.0]], dtype=torch.float64)
    x, y = [1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0]
    mx, my = sum(x) / 4, sum(y) / 4
    r = (sum((a - mx) * (b - my) for a, b in zip(x, y))
         / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)))
    import cryosamu_cli.training.loss as loss_module
    old, loss_module.MIN_MASKED_VOXELS = loss_module.MIN_MASKED_VOXELS, 4
    try:
        assert float(masked_correlation_loss(output, target)) == pytest.approx(1 - r, abs=1e-12)
    finally:
        loss_module.MIN_MASKED_VOXELS = old


def test_correlation_loss_gradient_matches_finite_differences():
    output, target = _cubes(1)
    output.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: masked_correlation_loss(o, target), (output,))
    masked_correlation_loss(output, target).backward()
    assert float(output.grad[target <= 0.05].abs().max()) == 0.0  # nothing flows outside


def test_combined_loss_and_its_checks():
    output, target = _cubes()
    plain = training_loss(output, target, "smooth-l1")
    both = training_loss(output, target, "smooth-l1+corr", corr_weight=0.5)
    assert float(both - plain) == pytest.approx(0.5 * float(masked_correlation_loss(output, target)))
    for bad in (dict(loss="l2"), dict(corr_weight=-1.0), dict(ema_decay=1.0)):
        with pytest.raises(ConfigError):
            train.train(data_dir=".", run_dir=".", config=_config(**bad))


def test_ema_differs_from_raw_weights_and_loads_in_enhance(data_dir, tiny_config, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    config = _config(epochs=2, learning_rate=3e-3, crop_size=32, ema_decay=0.5,
                     loss="smooth-l1+corr")
    summary = train.train(data_dir=data_dir, run_dir=run, config=config, model_config=tiny_config)
    assert summary["steps"] == 6 and all("ema_val_loss" in r for r in summary["history"])
    raw = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    last = torch.load(run / "last.pt", weights_only=True)
    ema = torch.load(run / "ema.pt", weights_only=True)["state_dict"]
    assert (run / "best-ema.pt").is_file()
    final = last["state_dict"]
    assert any(not torch.equal(final[k], ema[k]) for k in final if final[k].is_floating_point())
    assert int(last["ema"]["n_averaged"]) == 6
    enhancer = load_enhancer(weights=str(run / "ema.pt"), device="cpu")
    assert enhancer.weights_path == run / "ema.pt"
    assert raw.keys() == ema.keys()


def test_resumed_time_budget_run_continues_the_ema(data_dir, tiny_config, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    config = _config(time_budget_minutes=2.0 / 60, checkpoint_minutes=5.0, crop_size=32,
                     ema_decay=0.9)
    first = train.train(data_dir=data_dir, run_dir=run, config=config, model_config=tiny_config)
    saved = torch.load(run / "last.pt", weights_only=True)["ema"]
    assert int(saved["n_averaged"]) == first["steps"] > 0
    second = train.train(data_dir=data_dir, run_dir=run, config=config, resume=True,
                         model_config=tiny_config)
    resumed = torch.load(run / "last.pt", weights_only=True)["ema"]
    assert int(resumed["n_averaged"]) == second["steps"] > first["steps"]


def test_checkpoints_are_chosen_by_the_real_maps_when_scored_else_by_the_loss(tiny_config,
                                                                             tmp_path):
    """Records whose real-map score and cube loss disagree: best.pt follows real_cc."""
    from cryosamu_cli.model.unet import UNet3D
    from cryosamu_cli.training.run_folder import Progress, log_and_save

    model = UNet3D.from_config(tiny_config)
    optimiser = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    progress = Progress()
    # step 1: worse loss, better maps; step 2: better loss, worse maps; step 3: best maps
    records = [{"val_loss": 0.5, "real_cc": 0.70}, {"val_loss": 0.1, "real_cc": 0.60},
               {"val_loss": 0.9, "real_cc": 0.75}]
    chosen = []
    for step, record in enumerate(records, 1):
        progress.step = step
        log_and_save(record, model, optimiser, scheduler, progress, {}, tmp_path)
        chosen.append(torch.load(tmp_path / "best.pt", weights_only=True)["step"])
    assert chosen == [1, 1, 3]
    assert progress.best_real_cc == 0.75 and progress.best_val_loss == 0.1
    without_maps = Progress()
    (tmp_path / "cubes").mkdir()
    chosen = []
    for step, loss in enumerate((0.5, 0.1, 0.9), 1):
        without_maps.step = step
        log_and_save({"val_loss": loss}, model, optimiser, scheduler, without_maps, {},
                     tmp_path / "cubes")
        chosen.append(torch.load(tmp_path / "cubes" / "best.pt", weights_only=True)["step"])
    assert chosen == [1, 2, 2]


def test_tta_is_the_mean_of_explicitly_flipped_runs_and_tta_1_is_the_plain_run(tiny_checkpoint,
                                                                              tmp_path):
    import numpy as np

    from cryosamu_cli.enhance.pipeline import enhance_map
    from cryosamu_cli.enhance.predictor import TTA_FLIPS, NetworkPredictor
    from cryosamu_cli.weights import load_model
    from tests.conftest import smooth_volume, write_mrc

    model = load_model(tiny_checkpoint)
    cubes = np.stack([np.abs(smooth_volume((32, 32, 32), seed=s)) for s in (1, 2)])
    plain = NetworkPredictor(model, torch.device("cpu"))
    flipped_runs = []
    for dims in TTA_FLIPS:  # numpy axes of a (B, z, y, x) batch: one less than the tensor's
        axes = tuple(d - 1 for d in dims)
        run = plain(np.ascontiguousarray(np.flip(cubes, axes) if axes else cubes))
        flipped_runs.append(np.flip(run, axes) if axes else run)
    tta8 = NetworkPredictor(model, torch.device("cpu"), tta=8)(cubes)
    np.testing.assert_allclose(tta8, np.mean(flipped_runs, axis=0), rtol=0, atol=1e-6)
    assert float(np.abs(tta8 - flipped_runs[0]).max()) > 1e-4  # the flips do change it
    source = write_mrc(tmp_path / "map.mrc", np.abs(smooth_volume((40, 40, 40), seed=3)))
    outputs = []
    for name, options in (("plain", {}), ("tta1", {"tta": 1})):
        enhance_map(input_path=source, output_path=tmp_path / f"{name}.mrc",
                    weights=tiny_checkpoint, device="cpu", resolution=6, **options)
        outputs.append((tmp_path / f"{name}.mrc").read_bytes())
    assert outputs[0] == outputs[1]
    with pytest.raises(ConfigError, match="--tta"):
        NetworkPredictor(model, torch.device("cpu"), tta=9)


def test_training_without_a_validation_split_warns_and_writes_valid_json(data_dir, tiny_config,  # noqa: F811
                                                                        tmp_path):
    import json
    import shutil

    folder = tmp_path / "no-val"
    shutil.copytree(data_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["pairs"] = [p for p in manifest["pairs"] if p["split"] == "train"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    warnings = []
    train.train(data_dir=folder, run_dir=tmp_path / "run", model_config=tiny_config,
                config=_config(crop_size=32, max_steps_per_epoch=1), on_warning=warnings.append)
    assert len(warnings) == 1 and "no validation cubes" in warnings[0]

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["best_val_loss"] is None
