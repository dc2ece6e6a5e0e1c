"""Arithmetic that cannot go wrong: the attention under fp16/bf16 autocast, what ``auto``
picks, IEEE fp32 on CUDA for fp32 runs, and a stop with one line on non-finite output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryosamu_cli.cli.app import app
from cryosamu_cli.device import precision_reason, resolve_precision, use_precision
from cryosamu_cli.model.unet import LinearAttention3D, UNet3D
from cryosamu_cli.weights import load_model, save_checkpoint
from tests.conftest import smooth_volume, write_mrc

runner = CliRunner()


def _overflow_case() -> tuple[LinearAttention3D, torch.Tensor]:
    """A small attention layer on a 64³ cube with density in its centre: the keys of the
    empty voxels share one value, so exp(keys) summed over 262,144 voxels passes 65,504."""
    torch.manual_seed(0)
    layer = LinearAttention3D(8, 2, 8, 2).eval()
    x = torch.zeros(1, 8, 64, 64, 64)
    x[..., 16:48, 16:48, 16:48] = torch.rand(1, 8, 32, 32, 32)
    return layer, x


@torch.no_grad()
def test_attention_stays_finite_and_accurate_under_fp16_autocast():
    layer, x = _overflow_case()
    with torch.autocast("cpu", dtype=torch.float16):
        keys = layer.to_qkv(layer.norm(x))[:, 16:32].flatten(2)
        naive_sum = (keys - keys.amax(dim=2, keepdim=True)).exp().sum(dim=2)
    assert keys.dtype == torch.float16 and not torch.isfinite(naive_sum).all()  # the overflow

    reference = layer(x)
    value_range = float(reference.max() - reference.min())
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            out = layer(x).float()
        assert torch.isfinite(out).all()
        assert float((out - reference).abs().max()) < 0.01 * value_range
    assert float((reference - x).abs().max()) > 0.1 * value_range  # the attention matters here


@pytest.mark.parametrize("bf16_supported, expected",
                         [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_is_bf16_on_cuda_devices_that_support_it_else_fp16(monkeypatch, bf16_supported,
                                                                  expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert resolve_precision("auto", torch.device("cuda:0")) is expected
    assert resolve_precision("fp32", torch.device("cuda:0")) is None
    assert resolve_precision("fp16", torch.device("cuda:0")) is torch.float16


@pytest.mark.parametrize("amx, avx512_bf16, expected, reason", [
    (False, True, torch.bfloat16, "bf16: the CPU has avx512_bf16"),
    (True, True, torch.bfloat16, "bf16: the CPU has amx_bf16"),
    (False, False, None, "fp32: the CPU has no native bf16")])
def test_auto_on_a_cpu_follows_its_native_bf16(monkeypatch, amx, avx512_bf16, expected, reason):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is expected
    assert precision_reason("auto", cpu) == reason
    assert precision_reason("fp32", cpu) == "fp32: asked for"


@pytest.mark.parametrize("native", [True, False])
def test_auto_enhance_names_precision_and_reason_and_repeats_its_bytes(tmp_path, tiny_checkpoint,
                                                                        native):
    """Two processes on one machine, with the capability stubbed each way: the same bytes;
    the summary says which precision ran and why, the header label which."""
    import subprocess
    import sys

    source = write_mrc(tmp_path / "map.mrc", np.abs(smooth_volume((40, 40, 40), seed=3)))
    stub = ("import torch; torch.cpu._is_amx_tile_supported = lambda: False; "
            f"torch.cpu._is_avx512_bf16_supported = lambda: {native}; "
            "import sys; from cryosamu_cli.cli.app import main; sys.argv = sys.argv[1:]; main()")
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}.mrc"
        done = subprocess.run([sys.executable, "-c", stub, "cryosamu", "enhance", str(source),
                               "-o", str(out), "--weights", str(tiny_checkpoint),
                               "--resolution", "6"], capture_output=True, text=True,
                              timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    said = done.stdout + done.stderr
    name = "bf16" if native else "fp32"
    expected = "bf16: the CPU has avx512_bf16" if native else "fp32: the CPU has no native bf16"
    assert f"({expected})" in said
    from cryosamu_cli import mapio

    assert mapio.read_map(tmp_path / "out1.mrc")[1].labels[-1].endswith(f", {name}")


@pytest.fixture
def restored_tf32_settings():
    backends = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    before = [backend.fp32_precision for backend in backends]
    yield backends
    for backend, value in zip(backends, before):
        backend.fp32_precision = value


def test_fp32_on_cuda_turns_tf32_off_and_autocast_or_cpu_leave_it(restored_tf32_settings):
    conv, rnn, matmul = restored_tf32_settings
    for backend in restored_tf32_settings:
        backend.fp32_precision = "tf32"
    use_precision(None, torch.device("cpu"))
    use_precision(torch.bfloat16, torch.device("cuda:0"))
    assert {conv.fp32_precision, matmul.fp32_precision} == {"tf32"}
    use_precision(None, torch.device("cuda:0"))
    assert (conv.fp32_precision, rnn.fp32_precision, matmul.fp32_precision) == ("ieee",) * 3


def _broken_checkpoint(tmp_path, tiny_checkpoint, how: str):
    """The tiny network made to overflow fp16 (a huge stem) or to hold a NaN weight."""
    model = load_model(tiny_checkpoint)
    with torch.no_grad():
        if how == "overflow":
            model.stem.weight.mul_(1e6)
        else:
            model.head[-1].bias.fill_(float("nan"))
    assert isinstance(model, UNet3D)
    return save_checkpoint(tmp_path / f"{how}.pt", model)


@pytest.mark.parametrize("how, precision, message", [
    ("overflow", "fp16", "NaN or Inf at fp16 precision (nothing was written); run again with "
                         "--precision fp32"),
    ("nan", "fp32", "NaN or Inf in fp32: its weights or the input map are broken")])
def test_non_finite_output_stops_enhance_with_one_line_and_no_file(tmp_path, tiny_checkpoint,
                                                                    how, precision, message):
    source = write_mrc(tmp_path / "in.mrc", smooth_volume((16, 16, 16), seed=3))
    weights = _broken_checkpoint(tmp_path, tiny_checkpoint, how)
    output = tmp_path / "out.mrc"
    result = runner.invoke(app, ["enhance", str(source), "-o", str(output), "--weights",
                                 str(weights), "--precision", precision, "--device", "cpu",
                                 "--cube-size", "32", "--core-size", "16"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output
    assert not output.exists() and list(tmp_path.glob("out*")) == []


def test_the_overflowing_network_is_finite_in_fp32(tmp_path, tiny_checkpoint):
    """The fp16 case above is an overflow, not broken weights: fp32 enhances it."""
    source = write_mrc(tmp_path / "in.mrc", smooth_volume((16, 16, 16), seed=3))
    weights = _broken_checkpoint(tmp_path, tiny_checkpoint, "overflow")
    output = tmp_path / "out.mrc"
    result = runner.invoke(app, ["enhance", str(source), "-o", str(output), "--weights",
                                 str(weights), "--precision", "fp32", "--device", "cpu",
                                 "--cube-size", "32", "--core-size", "16"])
    assert result.exit_code == 0, result.output
    import mrcfile

    with mrcfile.open(output) as mrc:
        assert np.isfinite(mrc.data).all()
