"""The resolution-limited output: the filter's transfer function, --resolution parsing and
checks, the half-map resolution as default, and where the choice is recorded."""

from __future__ import annotations

import json
import math

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from cryosamu_cli import grid
from cryosamu_cli.enhance import batch
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.cli.app import app
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.enhance.resolution import (ResolutionChoice, choose_resolution, nyquist_limit_A,
                                     parse_resolution)
from tests.conftest import smooth_volume, write_mrc

runner = CliRunner()
N = 64  # box edge in voxels of 1 Å: plane waves of k cycles per box have s = k / 64 per Å


def _plane_waves(ks: list[int]) -> np.ndarray:
    """A sum of unit cosines along x, y and z with k cycles per box (z, y, x order)."""
    z, y, x = np.meshgrid(*(np.arange(N),) * 3, indexing="ij")
    axes = (x, y, z)
    return sum(np.cos(2 * np.pi * k * axes[i % 3] / N) for i, k in enumerate(ks)).astype(
        np.float32)


def _amplitude(volume: np.ndarray, k: int, axis: int) -> float:
    """Amplitude of the cosine with k cycles along ``axis`` (0 = x, 1 = y, 2 = z)."""
    index = [0, 0, 0]
    index[2 - axis] = k
    return float(2 * abs(np.fft.fftn(volume)[tuple(index)]) / volume.size)


def test_hard_band_limit_keeps_every_frequency_below_the_resolution_and_none_above():
    # 6 Å: s = 1/6 = 10.67 cycles per 64 Å box. k = 5, 8, 10 pass; k = 11, 16, 25 stop.
    volume = _plane_waves([5, 11, 8, 16, 10, 25])
    limited = grid.band_limit(volume, (1.0, 1.0, 1.0), 6.0)
    for i, k in enumerate([5, 11, 8, 16, 10, 25]):
        expected = 1.0 if k / N <= 1 / 6 else 0.0
        assert _amplitude(limited, k, i % 3) == pytest.approx(expected, abs=1e-4), k


def test_cosine_edge_follows_the_documented_raised_cosine():
    # edge (0.8, 1.0) at 8 Å: 1 up to s = 0.1 (6.4 cycles), 0 from s = 0.125 (8 cycles)
    volume = _plane_waves([4, 7, 9])
    limited = grid.band_limit(volume, (1.0, 1.0, 1.0), 8.0, edge=(0.8, 1.0))
    by_hand = 0.5 + 0.5 * math.cos(math.pi * (7 / 64 - 0.1) / 0.025)  # 0.6913
    assert _amplitude(limited, 4, 0) == pytest.approx(1.0, abs=1e-4)
    assert _amplitude(limited, 7, 1) == pytest.approx(by_hand, abs=1e-4)
    assert _amplitude(limited, 9, 2) == pytest.approx(0.0, abs=1e-4)
    weights = grid.low_pass_weights(np.array([0.05, 7 / 64, 0.2]), 8.0, (0.8, 1.0))
    assert weights == pytest.approx([1.0, by_hand, 0.0])


def test_band_limit_respects_anisotropic_voxels():
    # 16 cycles along x on 0.5 Å voxels is s = 0.5 per Å (2 Å): cut at 4 Å; along z on 2 Å
    # voxels 4 cycles is s = 1/32 per Å: kept
    volume = _plane_waves([16, 0, 4])
    limited = grid.band_limit(volume, (2.0, 1.0, 0.5), 4.0)
    assert _amplitude(limited, 16, 0) == pytest.approx(0.0, abs=1e-4)
    assert _amplitude(limited, 4, 2) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("text", ["0", "-3", "nan", "inf", "six", "--resolution"])
def test_bad_resolution_values_are_refused(text):
    with pytest.raises(ConfigError, match="--resolution"):
        parse_resolution(text)


def test_resolution_values_none_and_csv(tmp_path):
    assert parse_resolution("6.6").value_A == 6.6
    assert parse_resolution(4).value_A == 4.0
    assert parse_resolution("None").full_band
    assert not parse_resolution(None).given
    (tmp_path / "maps").mkdir()
    table = tmp_path / "res.csv"
    table.write_text("path,resolution\nmaps/a.mrc,4.5\nb.map,none\n# comment\n")
    request = parse_resolution(str(table))
    a = choose_resolution(request, tmp_path / "maps" / "a.mrc", None, (1.0, 1.0, 1.0))
    assert a == ResolutionChoice(4.5, "resolution CSV")
    elsewhere = choose_resolution(request, tmp_path / "other" / "b.map", None, (1.0,) * 3)
    assert elsewhere.resolution_A is None  # matched by file name; none = full band
    with pytest.raises(ConfigError, match="c.mrc is not listed"):
        choose_resolution(request, tmp_path / "c.mrc", None, (1.0, 1.0, 1.0))
    table.write_text("a.mrc\n")
    with pytest.raises(ConfigError, match="path,resolution"):
        parse_resolution(str(table))


def test_resolution_finer_than_the_map_can_hold_is_refused_half_maps_are_clamped():
    assert nyquist_limit_A((2.02, 2.02, 2.02)) == pytest.approx(4.04)
    assert nyquist_limit_A((0.8, 0.8, 0.8)) == 2.0  # the network's 1 Å grid
    with pytest.raises(ConfigError, match="finer than this map can hold"):
        choose_resolution(parse_resolution("3.5"), "m.mrc", None, (2.02, 2.02, 1.0))
    with pytest.raises(ConfigError, match="finer"):
        choose_resolution(parse_resolution("1.9"), "m.mrc", None, (0.5, 0.5, 0.5))
    given = choose_resolution(parse_resolution("4.04"), "m.mrc", 9.0, (2.02,) * 3)
    assert given == ResolutionChoice(4.04, "--resolution")  # given beats the half maps
    half = choose_resolution(parse_resolution(None), "m.mrc", 3.9, (2.02,) * 3)
    assert half == ResolutionChoice(4.04, "half-map FSC=0.143")
    assert choose_resolution(parse_resolution(None), "m.mrc", None, (1.0,) * 3).source == \
        "not given"


def test_a_map_outside_the_trained_range_gets_one_warning_line(tmp_path, tiny_checkpoint):
    assert choose_resolution(parse_resolution("6"), "m.mrc", None, (1.0,) * 3).warning == ""
    fine = choose_resolution(parse_resolution(None), "m.mrc", 2.8, (1.0,) * 3)
    assert "2.80 Å (half-map FSC=0.143)" in fine.warning and "4–8 Å" in fine.warning
    assert "3.00 Å (--resolution)" in choose_resolution(parse_resolution("3"), "m.mrc", None,
                                                        (1.0,) * 3).warning
    coarse = choose_resolution(parse_resolution(None), "m.mrc", None, (11.4,) * 3)
    assert "11.40 Å voxels hold no detail finer than 22.8 Å" in coarse.warning
    assert coarse.to_dict()["resolution_warning"] == coarse.warning
    source = write_mrc(tmp_path / "in.mrc", np.abs(smooth_volume((20, 20, 20))))
    argv = ["enhance", str(source), "-o", str(tmp_path / "out.mrc"), "--weights",
            str(tiny_checkpoint), "--resolution", "3"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "outside the 4–8 Å the model was trained for" in warnings[0]
    in_range = runner.invoke(app, [*argv[:-1], "6", "--force"])
    assert in_range.exit_code == 0 and "Warning" not in in_range.stderr


def _radial_power_beyond(volume: np.ndarray, voxel_A: float, resolution_A: float) -> float:
    """Fraction of the (mean-removed) power at frequencies above 1/resolution."""
    power = np.abs(np.fft.rfftn(volume - volume.mean())) ** 2
    radius = grid._frequency_radius(volume.shape, (voxel_A,) * 3)
    return float(power[radius > 1.0 / resolution_A].sum() / power.sum())


def test_enhanced_output_is_limited_and_labelled(tmp_path, tiny_checkpoint):
    source = write_mrc(tmp_path / "in.mrc", np.abs(smooth_volume((40, 40, 40), sigma=1.0)),
                       voxel_size=(1.1, 1.1, 1.1))
    limited = enhance.enhance_map(input_path=source, output_path=tmp_path / "lim.mrc",
                                  weights=tiny_checkpoint, resolution="6", band_limit="global")
    full = enhance.enhance_map(input_path=source, output_path=tmp_path / "full.mrc",
                               weights=tiny_checkpoint, resolution="none")
    local = enhance.enhance_map(input_path=source, output_path=tmp_path / "local.mrc",
                                weights=tiny_checkpoint, resolution="6")
    assert limited.resolution == ResolutionChoice(6.0, "--resolution")
    assert full.resolution == ResolutionChoice(None, "--resolution none")
    assert local.resolution == ResolutionChoice(6.0, "--resolution", band="local")
    with mrcfile.open(tmp_path / "lim.mrc") as mrc:
        label = bytes(mrc.header.label[mrc.header.nlabl - 1]).decode().strip()
        out_limited = mrc.data.astype(np.float32)
    with mrcfile.open(tmp_path / "full.mrc") as mrc:
        out_full = mrc.data.astype(np.float32)
    with mrcfile.open(tmp_path / "local.mrc") as mrc:
        local_label = bytes(mrc.header.label[mrc.header.nlabl - 1]).decode().strip()
        out_local = mrc.data.astype(np.float32)
    assert "res 6.00 A (--resolution), " in label and ", local" not in label
    assert "res 6.00 A (--resolution), local" in local_label
    # (beyond 6 Å on the 1.1 Å grid only resampling's small leakage remains)
    assert _radial_power_beyond(out_full, 1.1, 6.0) > 0.05
    assert _radial_power_beyond(out_limited, 1.1, 6.0) < 0.2 * _radial_power_beyond(
        out_full, 1.1, 6.0)
    # locally limited: no region finer than the ladder's finest rung followed half-way
    # (0.775 R), and less beyond R than the full band
    assert _radial_power_beyond(out_local, 1.1, 6.0) < 0.5 * _radial_power_beyond(
        out_full, 1.1, 6.0)
    assert _radial_power_beyond(out_local, 1.1, 0.6 * 6.0) < 0.2 * _radial_power_beyond(
        out_full, 1.1, 0.6 * 6.0)


def test_half_map_resolution_is_used_without_resolution(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    signal = np.abs(smooth_volume((40, 40, 40), sigma=2.5))
    halves = [write_mrc(tmp_path / f"h{i}.mrc", signal + rng.normal(scale=0.05,
                        size=signal.shape), voxel_size=(1.1, 1.1, 1.1)) for i in (1, 2)]
    result = enhance.enhance_map(input_path=halves[0], half2_path=halves[1],
                                 output_path=tmp_path / "avg.mrc", weights=tiny_checkpoint)
    assert result.resolution.source == "half-map FSC=0.143"
    assert result.resolution.resolution_A == pytest.approx(
        max(result.half_map_resolution_A, 2.2))
    report = json.loads((tmp_path / "avg_fsc.json").read_text())
    assert report["output_limited_to"] == result.resolution.to_dict()
    with mrcfile.open(tmp_path / "avg.mrc") as mrc:
        label = bytes(mrc.header.label[mrc.header.nlabl - 1]).decode().strip()
    assert f"res {result.resolution.resolution_A:.2f} A (half-map FSC=0.143)" in label


def test_cli_resolution_reaches_the_library_and_bad_values_are_one_line(tmp_path,
                                                                         tiny_checkpoint):
    source = write_mrc(tmp_path / "in.mrc", np.abs(smooth_volume((20, 20, 20))),
                       voxel_size=(2.0, 2.0, 2.0))
    w = ["--weights", str(tiny_checkpoint)]
    for value, message in (("0", "positive"), ("-2", "positive"), ("x", "not a resolution"),
                           ("3", "finer than this map can hold")):
        result = runner.invoke(app, ["enhance", str(source), "-o", str(tmp_path / "o.mrc"),
                                     "--resolution", value, *w])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.stderr
        assert not (tmp_path / "o.mrc").exists()
    result = runner.invoke(app, ["enhance", str(source), "-o", str(tmp_path / "o.mrc"),
                                 "--resolution", "7.5", *w])
    assert result.exit_code == 0 and "limited to 7.50 Å (--resolution)" in result.stdout
    result = runner.invoke(app, ["enhance", str(source), "-o", str(tmp_path / "p.mrc"), *w])
    assert "the map's resolution cannot be estimated" in " ".join(result.stdout.split())


def test_batch_takes_a_resolution_csv_and_refuses_an_unlisted_map_before_any_work(
        tmp_path, tiny_checkpoint):
    maps = [write_mrc(tmp_path / f"m{i}.mrc", np.abs(smooth_volume((20, 20, 20), seed=i)),
                      voxel_size=(1.5, 1.5, 1.5)) for i in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    table = tmp_path / "res.csv"
    table.write_text("m0.mrc,5.5\n")
    outcomes_or_error = runner.invoke(app, ["enhance", *map(str, maps), "--output-dir", str(out),
                                            "--resolution", str(table), "--weights",
                                            str(tiny_checkpoint)])
    assert outcomes_or_error.exit_code == 1 and "m1.mrc is not listed" in \
        outcomes_or_error.stderr
    assert list(out.iterdir()) == []
    table.write_text("path,resolution\nm0.mrc,5.5\nm1.mrc,none\n")
    outcomes = batch.enhance_many(input_paths=maps, output_dir=out, resolution=str(table),
                                    weights=tiny_checkpoint)
    assert [o.result.resolution for o in outcomes] == [
        ResolutionChoice(5.5, "resolution CSV", band="local"),
        ResolutionChoice(None, "--resolution none")]


def test_the_projects_pairs_csv_gives_resolutions_by_column_name(shared_data, tmp_path):
    request = parse_resolution(str(shared_data / "pairs.csv"))
    monomer = shared_data / "pairs/emd-5168/emd_5168_monomer.mrc"
    assert choose_resolution(request, monomer, None, (1.742,) * 3) == \
        ResolutionChoice(6.6, "resolution CSV")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,resolution_A,map\nfirst,5.0,a.mrc\nsecond,abc,b.mrc\n")
    with pytest.raises(ConfigError, match=r"bad.csv, row 3: .*'abc'"):
        parse_resolution(str(bad))
