"""The command line: thin options → keyword arguments, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cryosamu_cli import __version__
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.cli.app import app
from tests.conftest import smooth_volume, write_mrc

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"cryosamu {__version__}"


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from cryosamu_cli.cli.app import app;"
            "r = CliRunner().invoke(app, ['enhance', '--help']); assert r.exit_code == 0;"
            "assert 'Example usage' in r.stdout; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_options_reach_enhance_map_as_keywords(monkeypatch, tmp_path):
    calls = []

    def fake_enhance_map(**kwargs):
        calls.append(kwargs)
        return enhance.EnhanceResult(Path(kwargs["output_path"]), Path("w.pt"), "cpu", 1.0, 8, 6, 2,
                                     1.0)

    monkeypatch.setattr(enhance, "enhance_map", fake_enhance_map)
    result = runner.invoke(app, ["enhance", "in.mrc", "-o", "out.mrc", "--weights", "w.pt",
                                 "--device", "cuda:1", "--batch-size", "6", "--cube-size", "48",
                                 "--core-size", "40", "--threads", "3", "--force"])
    assert result.exit_code == 0, result.output
    (kwargs,) = calls
    hooks = {"progress", "download_progress", "on_estimate"}
    assert {k: v for k, v in kwargs.items() if k not in hooks} == dict(
        input_path=Path("in.mrc"), output_path=Path("out.mrc"), weights=Path("w.pt"),
        device="cuda:1", batch_size=6, cube_size=48, core_size=40, threads=3, force=True,
        half2_path=None, mask_path=None, mask_mode="keep-inside", strength=1.0, confidence=0,
        precision="auto", resolution=None, density_scale="input", band_limit="local",
        write_locres=False, tta=1)
    assert hooks <= set(kwargs)
    assert "6 cubes run, 2 skipped" in result.output
    for argv in ([], ["--batch-size", "auto"]):
        result = runner.invoke(app, ["enhance", "in.mrc", "-o", "out.mrc", *argv])
        assert result.exit_code == 0, result.output
        assert calls[-1]["batch_size"] is None  # auto: the library picks from the device
    result = runner.invoke(app, ["enhance", "in.mrc", "-o", "out.mrc", "--batch-size", "two"])
    assert result.exit_code == 2 and "not auto or a whole number" in result.output


@pytest.fixture
def good_map(tmp_path):
    return write_mrc(tmp_path / "in.mrc", np.abs(smooth_volume((24, 22, 20))))


def _bad_inputs(tmp_path, good_map, checkpoint):
    """(name, argv, expected message) for every bad input of the issue."""
    (tmp_path / "text.mrc").write_text("hello, not a map")
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(good_map.read_bytes()[:-700])
    constant = write_mrc(tmp_path / "constant.mrc", np.full((10, 10, 10), 2.0))
    empty = write_mrc(tmp_path / "empty.mrc", -np.abs(smooth_volume((10, 10, 10))) - 1)
    nan_volume = smooth_volume((10, 10, 10))
    nan_volume[1, 2, 3] = np.inf
    nan = write_mrc(tmp_path / "nan.mrc", nan_volume)
    skew = write_mrc(tmp_path / "skew.mrc", smooth_volume((10, 10, 10)), cellb=(90, 90, 120))
    (tmp_path / "exists.mrc").write_bytes(b"old")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:3000])
    out = str(tmp_path / "out.mrc")
    w = ["--weights", str(checkpoint)]
    return [
        ("missing", [str(tmp_path / "absent.mrc"), "-o", out, *w], "not found"),
        ("not mrc", [str(tmp_path / "text.mrc"), "-o", out, *w], "MRC"),
        ("truncated", [str(truncated), "-o", out, *w], "is truncated"),
        ("constant", [str(constant), "-o", out, *w], "constant"),
        ("empty", [str(empty), "-o", out, *w], "no positive density"),
        ("nan", [str(nan), "-o", out, *w], "NaN or infinite"),
        ("non-orthogonal", [str(skew), "-o", out, *w], "non-orthogonal"),
        ("no folder", [str(good_map), "-o", str(tmp_path / "no" / "out.mrc"), *w],
         "does not exist"),
        ("exists", [str(good_map), "-o", str(tmp_path / "exists.mrc"), *w], "exists"),
        ("corrupt weights", [str(good_map), "-o", out, "--weights", str(corrupt)],
         "not a readable"),
        ("missing weights", [str(good_map), "-o", out, "--weights", str(tmp_path / "x.pt")],
         "not found"),
        ("unknown device", [str(good_map), "-o", out, *w, "--device", "quantum"],
         "unknown device"),
        ("unknown band limit", [str(good_map), "-o", out, *w, "--band-limit", "sideways"],
         "unknown band limit 'sideways': use local or global"),
    ]


def test_every_bad_input_gives_one_line_and_exit_1(tmp_path, good_map, tiny_checkpoint):
    for name, argv, message in _bad_inputs(tmp_path, good_map, tiny_checkpoint):
        before = sorted(p.name for p in tmp_path.iterdir())
        result = runner.invoke(app, ["enhance", *argv])
        assert result.exit_code == 1, (name, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:"), (name, result.stderr)
        assert message in lines[0], (name, lines[0])
        assert "Traceback" not in result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name
    assert (tmp_path / "exists.mrc").read_bytes() == b"old"


def test_unwritable_output_folder(tmp_path, good_map, tiny_checkpoint, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro"
                        else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    result = runner.invoke(app, ["enhance", str(good_map), "-o", str(tmp_path / "ro" / "o.mrc"),
                                 "--weights", str(tiny_checkpoint)])
    assert result.exit_code == 1 and "not writable" in result.stderr


def test_without_weights_it_says_so_in_one_line(tmp_path, good_map, monkeypatch):
    from cryosamu_cli import weights

    monkeypatch.setattr(weights, "load_manifest", lambda path=None: weights.Manifest({}, None))
    result = runner.invoke(app, ["enhance", str(good_map), "-o", str(tmp_path / "o.mrc")])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: no pretrained CryoSAMU model")


def test_example_then_enhance_through_the_cli(tmp_path, tiny_checkpoint):
    example = tmp_path / "bundle.mrc"
    assert runner.invoke(app, ["example", "-o", str(example)]).exit_code == 0
    result = runner.invoke(app, ["enhance", str(example), "-o", str(tmp_path / "e.mrc"),
                                 "--weights", str(tiny_checkpoint), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "8 cubes run, 0 skipped" in result.stdout and (tmp_path / "e.mrc").is_file()


def test_weights_commands(tmp_path, monkeypatch):
    from cryosamu_cli import weights

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")
    listed = runner.invoke(app, ["weights", "list"])
    manifest = weights.load_manifest()
    assert listed.exit_code == 0
    assert all(name in listed.output for name in manifest.entries)
    missing = runner.invoke(app, ["weights", "download", "no-such-model"])
    assert missing.exit_code == 1 and "unknown weights name" in missing.stderr
    default = manifest.default
    here = runner.invoke(app, ["weights", "download", default])  # shipped: nothing to fetch
    assert here.exit_code == 0 and "already here" in here.stdout, here.output
    verified = runner.invoke(app, ["weights", "verify"])
    shipped = {name: e for name, e in manifest.entries.items()
               if (weights.shipped_weights_dir() / e.file).is_file()}
    assert verified.exit_code == 0 and shipped
    for name, entry in shipped.items():
        assert f"{name}: {weights.shipped_weights_dir() / entry.file}: ok" in verified.output
    # a damaged copy in the cache is named, and the command fails
    name, entry = next(iter(shipped.items()))
    damaged = bytearray((weights.shipped_weights_dir() / entry.file).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / entry.file).write_bytes(bytes(damaged))
    verified = runner.invoke(app, ["weights", "verify"])
    assert verified.exit_code == 1
    assert f"{name}: {tmp_path / entry.file}: corrupt" in " ".join(verified.output.split())
