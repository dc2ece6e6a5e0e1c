"""The U-Net itself (tiny configuration) and its checkpoints."""

from __future__ import annotations

import pytest
import torch

from cryosamu_cli.errors import ConfigError, WeightsError
from cryosamu_cli.model import UNetConfig
from cryosamu_cli.model.unet import CrossAttention3D, GroupNorm, LinearAttention3D, UNet3D
from cryosamu_cli.weights import load_model, save_checkpoint


def test_default_config_matches_the_paper():
    cfg = UNetConfig()
    assert cfg.channel_mults == (1, 2, 2, 4) and cfg.num_res_blocks == 2
    assert cfg.attention_levels == (True, True, True, False)
    assert cfg.attention_heads == 4 and cfg.cross_attention_heads == 4
    assert cfg.struct_dim == 512 and cfg.dropout == 0.2


def test_paper_model_has_the_described_modules():
    model = UNet3D.from_config(UNetConfig())
    linear = [m for m in model.modules() if isinstance(m, LinearAttention3D)]
    cross = [m for m in model.modules() if isinstance(m, CrossAttention3D)]
    # three encoder levels, the bottleneck, three decoder levels
    assert len(linear) == 7 and len(cross) == 1
    assert 5e6 < sum(p.numel() for p in model.parameters()) < 2e7


def test_forward_keeps_the_cube_shape_with_and_without_structure(tiny_config):
    torch.manual_seed(0)
    model = UNet3D.from_config(tiny_config).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.inference_mode():
        plain = model(x)
        conditioned = model(x, torch.randn(2, 40, tiny_config.struct_dim))
    assert plain.shape == x.shape and conditioned.shape == x.shape
    assert not torch.allclose(plain, conditioned)  # the embedding reaches the output
    with torch.inference_mode():
        assert torch.equal(model(x), plain)  # eval mode is deterministic


def per_head_linear_attention(module: LinearAttention3D, x: torch.Tensor) -> torch.Tensor:
    """The layer written head by head from its definition (queries softmax-normalised over
    a head's channels, keys over the voxels, context = keysᵀ·values, output = queries·context)."""
    b, _, d, h, w = x.shape
    qkv = module.to_qkv(module.norm(x)).reshape(b, 3, module.heads, module.head_dim, d * h * w)
    q, k, v = qkv.unbind(1)
    q = q.softmax(dim=2) * module.scale
    k = k.softmax(dim=3)
    context = torch.einsum("bhdn,bhen->bhde", k, v)
    out = torch.einsum("bhde,bhdn->bhen", context, q)
    return x + module.to_out(out.reshape(b, -1, d, h, w))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_linear_attention_equals_its_per_head_definition(layout):
    torch.manual_seed(0)
    module = LinearAttention3D(channels=16, heads=4, head_dim=8, groups=8)
    x = (3 * torch.randn(2, 16, 6, 8, 10)).to(memory_format=layout)
    fast, reference = module(x), per_head_linear_attention(module, x)
    assert torch.allclose(fast, reference, atol=1e-5, rtol=1e-5)
    # and it trains the same: equal gradients through the merged matrix products
    grad = torch.autograd.grad(fast.sum(), module.to_qkv.weight)[0]
    reference_grad = torch.autograd.grad(reference.sum(), module.to_qkv.weight)[0]
    assert torch.allclose(grad, reference_grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mostly constant", "far from zero mean"])
def test_group_norm_is_accurate_on_channels_last_tensors(kind):
    torch.manual_seed(0)
    norm = GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 16, 48, 48, 48)
    if kind == "mostly constant":  # a conv's output on a nearly empty cube: biases + sparse density
        x = x * (torch.rand(2, 1, 48, 48, 48) < 0.03) + torch.randn(1, 16, 1, 1, 1)
    else:
        x = x + 30.0
    exact = torch.nn.functional.group_norm(x.double(), 4, norm.weight.double(),
                                           norm.bias.double())
    channels_last = norm(x.contiguous(memory_format=torch.channels_last_3d))
    assert channels_last.is_contiguous(memory_format=torch.channels_last_3d)
    # PyTorch's own channels-last kernel is off by 0.03 and 0.017 on these two inputs
    assert (channels_last.double() - exact).abs().max() < 1e-3
    assert (norm(x).double() - exact).abs().max() < 1e-4  # contiguous: the native kernel
    # and it trains: gradients reach the affine parameters
    channels_last.square().sum().backward()
    assert norm.weight.grad.abs().sum() > 0 and norm.bias.grad.abs().sum() > 0


def test_dropout_is_active_only_in_training(tiny_config):
    torch.manual_seed(0)
    model = UNet3D.from_config(tiny_config)
    x = torch.rand(1, 1, 16, 16, 16)
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_config_round_trips_through_json_dict(tiny_config):
    assert UNetConfig.from_dict(tiny_config.to_dict()) == tiny_config
    with pytest.raises(ConfigError, match="unknown"):
        UNetConfig.from_dict({**tiny_config.to_dict(), "wings": 2})
    with pytest.raises(ConfigError, match="GroupNorm"):
        UNetConfig(base_channels=12)


def test_checkpoint_round_trip_with_weights_only(tiny_config, tmp_path):
    torch.manual_seed(1)
    model = UNet3D.from_config(tiny_config).eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == 1 and raw["config"] == tiny_config.to_dict()
    loaded = load_model(path)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_corrupt_and_mismatched_checkpoints_are_refused(tiny_config, tmp_path):
    good = save_checkpoint(tmp_path / "m.pt", UNet3D.from_config(tiny_config))
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a readable"):
        load_model(truncated)
    state = torch.load(good, weights_only=True)
    state["config"]["base_channels"] = 16
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(WeightsError, match="do not match"):
        load_model(tmp_path / "mismatch.pt")
    torch.save({"format": 7}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="format 1"):
        load_model(tmp_path / "other.pt")
