"""Many maps, half maps, masks, confidence maps and strength (built on enhance)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from cryosamu_cli import grid, mapio, metrics
from cryosamu_cli.enhance import batch
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.cli.app import app
from cryosamu_cli.errors import ConfigError, InvalidMapError
from cryosamu_cli.examples import write_example_map
from cryosamu_cli.model.unet import UNet3D
from cryosamu_cli.weights import save_checkpoint
from tests.conftest import smooth_volume, write_mrc

runner = CliRunner()


def _normalised_input(path):
    data, g = mapio.read_map(path)
    norm = grid.normalisation_of(grid.resample_to_spacing(data, g.voxel_size_zyx))
    return grid.normalise(data, norm)


@pytest.fixture
def maps(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    for i in range(2):
        write_mrc(folder / f"good{i}.mrc", np.abs(smooth_volume((30, 28, 26), seed=i)),
                  voxel_size=(1.2, 1.2, 1.2))
    (folder / "bad.mrc").write_bytes(b"\0" * 500)
    return folder


def test_batch_goes_on_after_a_corrupt_map_and_skip_existing_touches_nothing(
        tmp_path, maps, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["enhance", str(maps / "*.mrc"), "--output-dir", str(out),
            "--weights", str(tiny_checkpoint), "--batch-size", "4"]
    first = runner.invoke(app, argv)
    assert first.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good0_enhanced.mrc", "good1_enhanced.mrc"]
    assert "bad.mrc" in first.stderr
    assert "3 maps: 2 enhanced, 0 skipped (output exists), 1 failed" in first.stdout
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    again = runner.invoke(app, [*argv, "--skip-existing"])
    assert again.exit_code == 1  # the corrupt map still fails
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == stamps
    assert "3 maps: 0 enhanced, 2 skipped (output exists), 1 failed" in again.stdout


def test_batch_results_equal_single_runs(tmp_path, maps, tiny_checkpoint):
    outcomes = batch.enhance_many(input_paths=[maps / "good0.mrc", maps / "good1.mrc"],
                                    output_dir=tmp_path, weights=tiny_checkpoint)
    assert [o.status for o in outcomes] == ["ok", "ok"]
    single = enhance.enhance_map(input_path=maps / "good1.mrc", output_path=tmp_path / "s.mrc",
                                 weights=tiny_checkpoint)
    assert np.array_equal(mapio.read_map(single.output_path)[0],
                          mapio.read_map(outcomes[1].output_path)[0])


def test_one_process_per_device_gives_the_single_process_results_in_input_order(
        tmp_path, maps, tiny_checkpoint):
    inputs = [maps / "good0.mrc", maps / "bad.mrc", maps / "good1.mrc"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = batch.enhance_many(input_paths=inputs, output_dir=tmp_path / "one",
                                  weights=tiny_checkpoint, device="cpu", threads=1)
    spread = batch.enhance_many(input_paths=inputs, output_dir=tmp_path / "two",
                                  weights=tiny_checkpoint, device="cpu,cpu", threads=1,
                                  progress=lambda done, total: None)
    assert [o.input_path for o in spread] == inputs
    assert [o.status for o in spread] == ["ok", "failed", "ok"]
    for one, two in zip(single, spread):
        if one.status == "ok":
            assert np.array_equal(mapio.read_map(one.output_path)[0],
                                  mapio.read_map(two.output_path)[0])
    with pytest.raises(batch.DeviceError, match="CUDA"):
        batch.enhance_many(input_paths=inputs, output_dir=tmp_path, device="cpu,cuda:7")


def test_output_choice_is_checked(tmp_path, maps, tiny_checkpoint):
    two = runner.invoke(app, ["enhance", str(maps / "good0.mrc"), str(maps / "good1.mrc"),
                              "-o", str(tmp_path / "o.mrc")])
    assert two.exit_code == 1 and "--output-dir" in two.stderr
    none = runner.invoke(app, ["enhance", str(maps / "good0.mrc"), str(maps / "good1.mrc")])
    assert none.exit_code == 1 and "2 maps need --output-dir" in none.stderr
    both = runner.invoke(app, ["enhance", str(maps / "good0.mrc"), "-o", str(tmp_path / "o.mrc"),
                               "--output-dir", str(tmp_path)])
    assert both.exit_code == 1 and "not both" in both.stderr
    nomatch = runner.invoke(app, ["enhance", str(maps / "*.xyz"), "--output-dir", str(tmp_path)])
    assert nomatch.exit_code == 1 and "no file matches" in nomatch.stderr
    halves = runner.invoke(app, ["enhance", str(maps / "good0.mrc"), str(maps / "good1.mrc"),
                                 "--half2", str(maps / "good1.mrc"), "--output-dir", str(tmp_path)])
    assert halves.exit_code == 1 and "--half2" in halves.stderr


def test_half_map_fsc_matches_the_analytic_expectation():
    # Two halves = one signal + independent white noise of variance s2 each. In every shell
    # the expected FSC is  S / (S + count * s2 * N)  with S the signal's shell power (numpy's
    # unnormalised FFT gives E|noise_k|^2 = s2 * N per Fourier voxel).
    rng = np.random.default_rng(3)
    shape, voxel, s2 = (48, 48, 48), (1.3, 1.3, 1.3), 0.05 ** 2
    signal = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    half1 = signal + rng.normal(scale=np.sqrt(s2), size=shape)
    half2 = signal + rng.normal(scale=np.sqrt(s2), size=shape)
    curve = metrics.fsc(half1, half2, voxel)
    shells, _ = grid.shell_index(shape, voxel)
    keep = shells.ravel() < len(curve.fsc)
    power = np.bincount(shells.ravel()[keep], weights=(np.abs(np.fft.rfftn(signal)) ** 2).ravel()[keep])
    expected = power / (power + curve.voxel_count * s2 * np.prod(shape))
    informative = curve.voxel_count >= 50
    assert np.abs(curve.fsc - expected)[informative].max() < 0.06
    crossing = expected < 0.143
    expected_resolution = 1 / curve.frequency_per_A[np.argmax(crossing)]
    assert curve.resolution_at(0.143) == pytest.approx(expected_resolution, rel=0.1)
    assert curve.fsc[0] == pytest.approx(1.0)


def test_half_maps_are_averaged_and_their_fsc_written(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    signal = np.abs(smooth_volume((40, 40, 40), sigma=2.5))
    halves = [write_mrc(tmp_path / f"h{i}.mrc", signal + rng.normal(scale=0.05, size=signal.shape),
                        voxel_size=(1.1, 1.1, 1.1)) for i in (1, 2)]
    result = enhance.enhance_map(input_path=halves[0], half2_path=halves[1],
                                 output_path=tmp_path / "avg.mrc", weights=tiny_checkpoint)
    report = json.loads((tmp_path / "avg_fsc.json").read_text())
    assert report["threshold"] == 0.143 and report["curve"][0]["fsc"] == pytest.approx(1.0)
    assert report["resolution_A"] == pytest.approx(result.half_map_resolution_A, abs=1e-3)
    assert 2.2 <= report["resolution_A"] < 12
    bad = write_mrc(tmp_path / "shifted.mrc", signal, voxel_size=(1.1, 1.1, 1.1),
                    origin=(5.0, 0.0, 0.0))
    with pytest.raises(InvalidMapError, match="origin"):
        enhance.enhance_map(input_path=halves[0], half2_path=bad, output_path=tmp_path / "x.mrc",
                            weights=tiny_checkpoint)
    assert not (tmp_path / "x.mrc").exists()


@pytest.fixture
def example_and_mask(tmp_path):
    source = write_example_map(tmp_path / "example.mrc")
    data, g = mapio.read_map(source)
    mask = np.zeros(g.shape_zyx, np.float32)
    mask[20:44, 18:38, 18:38] = 1.0
    mask_path = mapio.write_map(tmp_path / "mask.mrc", mask, g)
    return source, mask_path, mask > 0.5


def test_keep_inside_reproduces_the_input_exactly_inside_the_mask(tmp_path, tiny_checkpoint,
                                                                   example_and_mask):
    source, mask_path, inside = example_and_mask
    out = enhance.enhance_map(input_path=source, output_path=tmp_path / "k.mrc",
                              weights=tiny_checkpoint, mask_path=mask_path,
                              mask_mode="keep-inside").output_path
    plain = enhance.enhance_map(input_path=source, output_path=tmp_path / "p.mrc",
                                weights=tiny_checkpoint).output_path
    kept, enhanced, original = (mapio.read_map(out)[0], mapio.read_map(plain)[0],
                                mapio.read_map(source)[0])
    assert np.array_equal(kept[inside], original[inside])  # in the input's own units
    far = ndimage.distance_transform_edt(~inside) >= 3
    assert np.allclose(kept[far], enhanced[far], atol=1e-6)
    seam = ~inside & ~far  # the soft edge lies between the two
    low, high = np.minimum(original, enhanced), np.maximum(original, enhanced)
    assert np.all((kept[seam] >= low[seam] - 1e-6) & (kept[seam] <= high[seam] + 1e-6))


def test_enhance_inside_keeps_the_input_outside_and_runs_fewer_cubes(tmp_path, tiny_checkpoint,
                                                                      example_and_mask):
    source, mask_path, inside = example_and_mask
    result = enhance.enhance_map(input_path=source, output_path=tmp_path / "e.mrc",
                                 weights=tiny_checkpoint, mask_path=mask_path,
                                 mask_mode="enhance-inside")
    out, original = mapio.read_map(result.output_path)[0], mapio.read_map(source)[0]
    far = ndimage.distance_transform_edt(~inside) >= 3
    assert np.array_equal(out[far], original[far])
    assert not np.allclose(out[inside], original[inside])
    assert result.cubes_run < result.cubes_total


def test_mask_on_another_grid_is_refused(tmp_path, tiny_checkpoint, example_and_mask):
    source, _, _ = example_and_mask
    other = write_mrc(tmp_path / "other.mrc", np.ones((10, 10, 10)))
    with pytest.raises(InvalidMapError, match="mask"):
        enhance.enhance_map(input_path=source, output_path=tmp_path / "o.mrc",
                            weights=tiny_checkpoint, mask_path=other)


def test_strength_blends_like_with_like_on_either_density_scale(tmp_path, tiny_checkpoint):
    source = write_example_map(tmp_path / "example.mrc")
    for scale, original in (("input", mapio.read_map(source)[0]),
                            ("normalised", _normalised_input(source))):
        outputs = {}
        for s in (0.0, 0.5, 1.0):
            outputs[s] = mapio.read_map(enhance.enhance_map(
                input_path=source, output_path=tmp_path / f"{scale}{s}.mrc",
                weights=tiny_checkpoint, strength=s, density_scale=scale).output_path)[0]
        assert np.array_equal(outputs[0.0], original)
        assert np.allclose(outputs[0.5], (outputs[1.0] + original) / 2, atol=1e-6)
    with pytest.raises(ConfigError, match="strength"):
        enhance.enhance_map(input_path=source, output_path=tmp_path / "x.mrc",
                            weights=tiny_checkpoint, strength=1.5)
    with pytest.raises(ConfigError, match="density scale 'sigma'"):
        enhance.enhance_map(input_path=source, output_path=tmp_path / "x.mrc",
                            weights=tiny_checkpoint, density_scale="sigma")
    assert not (tmp_path / "x.mrc").exists()


def test_confidence_std_is_zero_without_dropout_and_positive_with_it(tmp_path, tiny_config):
    from dataclasses import replace

    source = write_example_map(tmp_path / "example.mrc")
    std = {}
    for dropout in (0.0, 0.2):
        torch.manual_seed(0)
        ckpt = save_checkpoint(tmp_path / f"d{dropout}.pt",
                               UNet3D.from_config(replace(tiny_config, dropout=dropout)))
        result = enhance.enhance_map(input_path=source, output_path=tmp_path / f"c{dropout}.mrc",
                                     weights=ckpt, confidence=3, batch_size=4)
        assert result.extra_outputs == (tmp_path / f"c{dropout}_std.mrc",)
        std[dropout], g = mapio.read_map(result.extra_outputs[0])
        assert g.shape_zyx == (64, 56, 56)
    assert np.abs(std[0.0]).max() < 1e-5
    assert std[0.2].mean() > 1e-3 and std[0.2].min() >= 0
    with pytest.raises(ConfigError, match="2 passes"):
        enhance.enhance_map(input_path=source, output_path=tmp_path / "x.mrc",
                            weights=tmp_path / "d0.2.pt", confidence=1)


def test_cli_prints_the_cube_count_and_estimate(tmp_path, tiny_checkpoint):
    source = write_example_map(tmp_path / "example.mrc")
    result = runner.invoke(app, ["enhance", str(source), "-o", str(tmp_path / "o.mrc"),
                                 "--weights", str(tiny_checkpoint), "--strength", "0.8",
                                 "--confidence", "2"])
    assert result.exit_code == 0, result.output
    assert "8 cubes to run; about" in result.stderr
    assert (tmp_path / "o_std.mrc").is_file()


def test_maps_named_alike_in_different_folders_get_their_own_outputs(tmp_path, tiny_checkpoint):
    """RELION-style job folders: two postprocess.mrc give two outputs, nothing overwritten,
    also with --force; the same file twice is refused before any work."""
    from typer.testing import CliRunner

    from cryosamu_cli.cli.app import app

    runner = CliRunner()
    maps = []
    for job, seed in (("job012", 1), ("job013", 2)):
        (tmp_path / job).mkdir()
        maps.append(write_mrc(tmp_path / job / "postprocess.mrc",
                              np.abs(smooth_volume((24, 24, 24), seed=seed))))
    out = tmp_path / "out"
    for extra in ([], ["--force"]):
        result = runner.invoke(app, ["enhance", *map(str, maps), "--output-dir", str(out),
                                     "--weights", str(tiny_checkpoint), "--resolution", "6",
                                     *extra])
        assert result.exit_code == 0, result.output
        written = sorted(p.name for p in out.glob("*.mrc"))
        assert written == ["job012_postprocess_enhanced.mrc", "job013_postprocess_enhanced.mrc"]
    first, second = (mapio.read_map(out / name)[0] for name in written)
    assert not np.array_equal(first, second)
    twice = runner.invoke(app, ["enhance", str(maps[0]), str(maps[0]), "--output-dir",
                                str(tmp_path / "twice"), "--weights", str(tiny_checkpoint)])
    assert twice.exit_code == 1 and "listed twice" in twice.output
    assert not (tmp_path / "twice").exists()


def test_quiet_batch_prints_nothing_on_success_and_options_are_checked_unused(tmp_path,
                                                                              tiny_checkpoint):
    from typer.testing import CliRunner

    from cryosamu_cli.cli.app import app

    runner = CliRunner()
    maps = [write_mrc(tmp_path / f"m{i}.mrc", np.abs(smooth_volume((24, 24, 24), seed=i)))
            for i in range(2)]
    quiet = runner.invoke(app, ["enhance", *map(str, maps), "--output-dir", str(tmp_path / "o"),
                                "--weights", str(tiny_checkpoint), "--resolution", "6", "-q"])
    assert quiet.exit_code == 0 and quiet.output == ""
    assert len(list((tmp_path / "o").glob("*.mrc"))) == 2
    for extra in (["-o", str(tmp_path / "x.mrc")], ["--output-dir", str(tmp_path / "y")]):
        unused = runner.invoke(app, ["enhance", *map(str, maps[:1 if "-o" in extra else 2]),
                                     *extra, "--mask-mode", "foo",
                                     "--weights", str(tiny_checkpoint)])
        assert unused.exit_code == 1 and "unknown mask mode 'foo'" in unused.output
    assert not (tmp_path / "x.mrc").exists() and not (tmp_path / "y").exists()


def test_batch_where_every_map_fails_leaves_no_output_folder(tmp_path, maps, tiny_checkpoint):
    out = tmp_path / "out"
    (maps / "bad2.mrc").write_bytes(b"not a map")
    result = runner.invoke(app, ["enhance", str(maps / "bad.mrc"), str(maps / "bad2.mrc"),
                                 "--output-dir", str(out), "--weights", str(tiny_checkpoint)])
    assert result.exit_code == 1
    assert not out.exists()
    kept = tmp_path / "kept"
    result = runner.invoke(app, ["enhance", str(maps / "bad.mrc"), str(maps / "good0.mrc"),
                                 "--output-dir", str(kept), "--weights", str(tiny_checkpoint)])
    assert result.exit_code == 1
    assert [p.name for p in kept.iterdir()] == ["good0_enhanced.mrc"]
