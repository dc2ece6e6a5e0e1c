"""What a newcomer meets in the first hour: the same map every run, the precision said, a density
scale that keeps contour levels, and clear one-line errors for the usual slips."""

from __future__ import annotations

import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryosamu_cli import grid, mapio
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.enhance import memory
from cryosamu_cli.cli.app import app
from cryosamu_cli.device import native_bf16_feature, precision_reason, resolve_precision
from cryosamu_cli.errors import ResourceError
from cryosamu_cli.examples import write_example_map
from tests.conftest import write_mrc

runner = CliRunner()


def _cryosamu(*argv: str) -> subprocess.CompletedProcess:
    code = "import sys; from cryosamu_cli.cli.app import main; sys.argv[0] = 'cryosamu'; main()"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)


# what auto runs here, and why (bf16 where the CPU computes bf16 natively, else fp32)
AUTO_REASON = precision_reason("auto", torch.device("cpu"))


def test_auto_precision_depends_on_the_device_only():
    cpu = torch.device("cpu")
    # the same answer every time: no timing probe (bf16 where the CPU has native bf16)
    expected = torch.bfloat16 if native_bf16_feature() else None
    assert {resolve_precision("auto", cpu) for _ in range(3)} == {expected}


def test_two_runs_in_separate_processes_write_identical_bytes(tmp_path, tiny_checkpoint):
    source = write_example_map(tmp_path / "example.mrc")
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.mrc"
        done = _cryosamu("enhance", str(source), "-o", str(out), "--weights",
                         str(tiny_checkpoint), "--resolution", "6")
        assert done.returncode == 0, done.stderr
        assert f"({AUTO_REASON})" in done.stdout  # the summary names the precision and why
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    with mrcfile.open(tmp_path / "run0.mrc") as mrc:
        label = bytes(mrc.header.label[mrc.header.nlabl - 1]).decode().strip()
    # the example map has noise in its solvent: the band followed the local resolution
    assert label.endswith(": enhanced, input units, res 6.00 A (--resolution), local, "
                          f"{AUTO_REASON.split(':')[0]}")


def test_output_in_input_units_matches_the_inputs_999th_percentile(shared_data, tmp_path):
    # the default model on a real map: contour levels of the input carry over
    source = shared_data / "pairs/emd-5168/emd_5168_monomer.mrc"
    data, _ = mapio.read_map(source)
    result = enhance.enhance_map(input_path=source, output_path=tmp_path / "in_units.mrc",
                                 resolution=6.6, precision="fp32")
    assert result.density_scale == "input"
    out, _ = mapio.read_map(result.output_path)
    assert grid.normalisation_of(out).scale == pytest.approx(grid.normalisation_of(data).scale,
                                                             rel=1e-4)
    normalised = enhance.enhance_map(input_path=source, output_path=tmp_path / "net.mrc",
                                     resolution=6.6, precision="fp32",
                                     density_scale="normalised")
    on_network_scale, _ = mapio.read_map(normalised.output_path)
    # the same map up to the one factor
    factor = grid.normalisation_of(data).scale / grid.normalisation_of(on_network_scale).scale
    assert np.allclose(out, on_network_scale * factor, atol=1e-5 * float(out.max()))


def test_output_dir_is_made_when_its_parent_exists(tmp_path, tiny_checkpoint):
    source = write_example_map(tmp_path / "example.mrc")
    made = runner.invoke(app, ["enhance", str(source), "--output-dir", str(tmp_path / "new"),
                               "--weights", str(tiny_checkpoint)])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "new" / "example_enhanced.mrc").is_file()
    orphan = runner.invoke(app, ["enhance", str(source), "--output-dir",
                                 str(tmp_path / "no" / "such"), "--weights",
                                 str(tiny_checkpoint)])
    assert orphan.exit_code == 1 and "its parent" in orphan.stderr
    assert len(orphan.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()


def test_usual_slips_are_one_line_errors_with_exit_code_1(tmp_path, tiny_checkpoint):
    source = write_example_map(tmp_path / "example.mrc")
    folder = runner.invoke(app, ["enhance", str(tmp_path), "-o", str(tmp_path / "o.mrc")])
    assert folder.exit_code == 1 and "is a folder, not a map file" in folder.stderr
    for option, value, message in (("--batch-size", "0", "batch size must be at least 1"),
                                   ("--threads", "0", "--threads must be at least 1"),
                                   ("--confidence", "-1", "--confidence needs at least 2")):
        result = runner.invoke(app, ["enhance", str(source), "-o", str(tmp_path / "o.mrc"),
                                     "--weights", str(tiny_checkpoint), option, value])
        assert result.exit_code == 1 and message in result.stderr, (option, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.mrc").exists()


def test_a_map_too_big_for_memory_is_refused_before_any_work(tmp_path, tiny_checkpoint):
    # 40³ voxels of 50 Å: a 1951³ grid at 1 Å (about 330 GiB of work arrays)
    huge = write_mrc(tmp_path / "coarse.mrc",
                     np.random.default_rng(0).random((40, 40, 40)).astype(np.float32),
                     voxel_size=(50.0, 50.0, 50.0))
    result = _cryosamu("enhance", str(huge), "-o", str(tmp_path / "out.mrc"), "--weights",
                       str(tiny_checkpoint))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "1951×1951×1951" in line and "GiB" in line and "4 Å or finer" in line
    assert "Traceback" not in result.stderr and not (tmp_path / "out.mrc").exists()
    with pytest.raises(ResourceError, match="crop the map"):
        memory.check_enhance_fits((400, 400, 400), (1.5, 1.5, 1.5), available=1 << 30)
    memory.check_enhance_fits((100, 100, 100), (1.5, 1.5, 1.5), available=64 << 30)
    assert memory.enhance_bytes((100, 100, 100), (1.0, 1.0, 1.0)) == (
        100 ** 3 * (memory.BYTES_PER_1A_VOXEL + memory.BYTES_PER_INPUT_VOXEL)
        + memory.FIXED_BYTES)
    local = memory.enhance_bytes((100, 100, 100), (1.0, 1.0, 1.0), local_band=True)
    assert local == memory.enhance_bytes((100, 100, 100), (1.0, 1.0, 1.0)) + (
        100 ** 3 * memory.LOCAL_BAND_BYTES_PER_1A_VOXEL)
    # a map that fits with one global band but not locally is told so
    needed = memory.enhance_bytes((400, 400, 400), (1.0, 1.0, 1.0))
    with pytest.raises(ResourceError, match="--band-limit global"):
        memory.check_enhance_fits((400, 400, 400), (1.0, 1.0, 1.0), available=needed + 1,
                                  local_band=True)


def test_a_bad_argument_is_reported_before_torch_is_imported(tmp_path):
    # the checks run before the network is loaded, so the error comes at once
    code = ("import sys; from typer.testing import CliRunner; from cryosamu_cli.cli.app import app;"
            f"r = CliRunner().invoke(app, ['enhance', {str(tmp_path / 'missing.mrc')!r}, '-o',"
            f" {str(tmp_path / 'out.mrc')!r}]); assert r.exit_code == 1, r.output;"
            "assert 'map file not found' in r.stderr; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
