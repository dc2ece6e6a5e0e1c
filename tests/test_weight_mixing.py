"""Checkpoints mixed in weight space (``cryosamu weights mix``): the endpoints bit for bit, the
exact weighted mean between, one network only, and bad input refused without writing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cryosamu_cli.cli.app import app
from cryosamu_cli.errors import WeightsError
from cryosamu_cli.training.weight_mixing import mixed_model, save_mixed_checkpoint
from cryosamu_cli.weights import load_model, save_checkpoint


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny_config):
    """Two seeded tiny networks of one architecture."""
    import torch

    from cryosamu_cli.model.unet import UNet3D

    folder = tmp_path_factory.mktemp("mix")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(folder / f"seed{seed}.pt", UNet3D.from_config(tiny_config)))
    return paths


def _states(*paths):
    return [load_model(path).state_dict() for path in paths]


def test_the_endpoints_are_the_checkpoints_bit_for_bit(two_checkpoints):
    import torch

    first, second = _states(*two_checkpoints)
    only_first = mixed_model(two_checkpoints, [1.0, 0.0]).state_dict()
    only_second = mixed_model(two_checkpoints, [0.0, 1.0]).state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(only_first[k], first[k]) for k in first)
    assert all(torch.equal(only_second[k], second[k]) for k in second)


def test_a_mix_is_the_weighted_mean_of_every_floating_tensor(two_checkpoints, tmp_path):
    import torch

    first, second = _states(*two_checkpoints)
    path = save_mixed_checkpoint(checkpoints=two_checkpoints, shares=[0.25, 0.75],
                                 output=tmp_path / "mixed.pt")
    mixed = load_model(path).state_dict()
    for name, tensor in mixed.items():
        if tensor.is_floating_point():
            expected = 0.25 * first[name].double() + 0.75 * second[name].double()
            assert torch.allclose(tensor.double(), expected, atol=1e-7), name
        else:
            assert torch.equal(tensor, first[name]), name
    saved = torch.load(path, weights_only=True)
    assert [entry["share"] for entry in saved["mixed_from"]] == [0.25, 0.75]


def test_a_mixed_network_enhances_between_its_endpoints(two_checkpoints):
    """The output of the mixed network is a different map from either endpoint's (the weights,
    not the outputs, are averaged, so it is not their mean either), finite and of the same
    shape."""
    import torch

    torch.manual_seed(0)
    cube = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ends = [load_model(p)(cube) for p in two_checkpoints]
        middle = mixed_model(two_checkpoints, [0.5, 0.5])(cube)
    assert middle.shape == cube.shape and torch.isfinite(middle).all()
    assert not torch.allclose(middle, ends[0]) and not torch.allclose(middle, ends[1])


@pytest.mark.parametrize("shares, message", [([0.5], "1 shares for 2 checkpoints"),
                                              ([0.7, 0.7], "sum to 1"),
                                              ([1.5, -0.5], "non-negative")])
def test_bad_shares_are_refused(two_checkpoints, shares, message):
    with pytest.raises(WeightsError, match=message):
        mixed_model(two_checkpoints, shares)


def test_two_architectures_are_refused(two_checkpoints, tiny_config, tmp_path):
    from dataclasses import replace

    from cryosamu_cli.model.unet import UNet3D

    other = save_checkpoint(tmp_path / "wider.pt",
                            UNet3D.from_config(replace(tiny_config, base_channels=16)))
    with pytest.raises(WeightsError, match="not the same architecture"):
        mixed_model([two_checkpoints[0], other], [0.5, 0.5])


def test_cli_mix_writes_the_mix_and_refuses_bad_input_without_writing(two_checkpoints,
                                                                        tmp_path):
    import torch

    runner = CliRunner()
    out = tmp_path / "equal.pt"
    result = runner.invoke(app, ["weights", "mix", *map(str, two_checkpoints), "-o", str(out)])
    assert result.exit_code == 0, result.output
    first, second = _states(*two_checkpoints)
    mixed = load_model(out).state_dict()
    name = next(k for k, v in first.items() if v.is_floating_point())
    assert torch.allclose(mixed[name], (first[name] + second[name]) / 2, atol=1e-7)

    refused = tmp_path / "refused.pt"
    result = runner.invoke(app, ["weights", "mix", *map(str, two_checkpoints), "--share", "0.3",
                                 "-o", str(refused)])
    assert result.exit_code == 1
    assert "Error: 1 shares for 2 checkpoints" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not refused.exists()
