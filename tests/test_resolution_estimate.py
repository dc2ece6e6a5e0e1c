"""The resolution found when not given: estimated from the map (known band limits, real maps
degraded to known resolutions), read from an EMDB header XML, and the order of the sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cryosamu_cli import grid, mapio
from cryosamu_cli.cli.app import app
from cryosamu_cli.data import real_degradation
from cryosamu_cli.enhance import emdb_header, resolution_estimate
from cryosamu_cli.enhance.resolution import (NOT_ESTIMABLE, ResolutionChoice, choose_resolution,
                                              parse_resolution)
from cryosamu_cli.errors import MetadataError, ResolutionUnknownError
from tests.conftest import write_mrc

runner = CliRunner()

# An EMDB header in schema 3's layout (element names and nesting as EMDB writes them; values
# made up for the test).
HEADER_V30 = """<?xml version="1.0" encoding="UTF-8"?>
<emd emdb_id="EMD-1997" version="3.0.8.1">
  <admin><key_dates><deposition>2011-06-01</deposition></key_dates></admin>
  <map format="CCP4" size_kbytes="3907">
    <file>emd_1997.map.gz</file>
    <dimensions><col>100</col><row>100</row><sec>100</sec></dimensions>
    <pixel_spacing><x units="Å">2.02</x><y units="Å">2.02</y><z units="Å">2.02</z></pixel_spacing>
  </map>
  <structure_determination_list>
    <structure_determination structure_determination_id="1">
      <method>singleParticle</method>
      <singleparticle_processing singleparticle_processing_id="1">
        <final_reconstruction>
          <resolution res_type="BY AUTHOR" units="Å">7.0</resolution>
          <resolution_method>FSC 0.5 CUT-OFF</resolution_method>
        </final_reconstruction>
      </singleparticle_processing>
    </structure_determination>
  </structure_determination_list>
  <interpretation>
    <half_map_list>
      <half_map format="CCP4"><file>emd_1997_half_map_1.map.gz</file></half_map>
      <half_map format="CCP4"><file>emd_1997_half_map_2.map.gz</file></half_map>
    </half_map_list>
  </interpretation>
</emd>
"""
HEADER_V19 = """<?xml version="1.0" encoding="UTF-8"?>
<emdEntry accessCode="EMD-5168" version="1.9.6">
  <map><file format="CCP4" sizeKb="3907">emd_5168.map.gz</file>
    <pixelSpacing><pixelX units="A">1.742</pixelX><pixelY units="A">1.742</pixelY>
      <pixelZ units="A">1.742</pixelZ></pixelSpacing></map>
  <processing><reconstruction><resolutionByAuthor>6.6</resolutionByAuthor>
    <resolutionMethod>FSC 0.5</resolutionMethod></reconstruction></processing>
</emdEntry>
"""


def band_limited_noise(resolution_A: float, voxel_A: float = 1.2, size: int = 72,
                       seed: int = 0) -> np.ndarray:
    """White noise low-passed (hard) at ``resolution_A``: a map with an exactly known edge."""
    noise = np.random.default_rng(seed).standard_normal((size,) * 3).astype(np.float32)
    return grid.band_limit(noise, (voxel_A,) * 3, resolution_A)


@pytest.mark.parametrize("resolution_A", [4.5, 6.0, 8.0])
def test_low_passed_noise_gives_its_band_limit(resolution_A):
    estimate = resolution_estimate.estimate_resolution(band_limited_noise(resolution_A),
                                                       (1.2,) * 3)
    assert estimate.method == "post-processing edge"
    assert estimate.resolution_A == pytest.approx(resolution_A, rel=0.08)


@pytest.mark.parametrize("kind", ["raw", "post-processed", "post-processed + masked"])
def test_a_real_map_degraded_to_a_known_resolution(shared_data, kind):
    data, info = mapio.read_map(shared_data / "pairs/emd-0093/emd_0093_MAP_m4A_cropped.mrc")
    voxel = info.voxel_size_zyx
    for resolution_A in (5.0, 7.0):
        degraded, _ = real_degradation.degraded_real_map(data, voxel, resolution_A, seed=3,
                                                         low_pass=kind != "raw",
                                                         keep_mask=kind.endswith("masked"))
        estimate = resolution_estimate.estimate_resolution(degraded, voxel)
        tolerance = 0.2 if kind == "raw" else 0.1
        assert estimate.resolution_A == pytest.approx(resolution_A, rel=tolerance), kind


def test_a_raw_map_at_8_A_is_read_from_the_signals_first_fall_into_the_noise(shared_data):
    # emd-0093 blurred to 8 A with its own spectrum's noise: its measured SNR falls through
    # the threshold at 8 A and, far beyond, a noisy estimate rises back into the fitted range
    # (its original 3.4 A low-pass edge): the line through both read 11.6 A (+45 %)
    data, info = mapio.read_map(shared_data / "pairs/emd-0093/emd_0093_MAP_m4A_cropped.mrc")
    voxel = info.voxel_size_zyx
    degraded, _ = real_degradation.degraded_real_map(data, voxel, 8.0, seed=38, low_pass=False)
    estimate = resolution_estimate.estimate_resolution(degraded, voxel)
    assert estimate.method == "signal/noise in the solvent"
    assert estimate.resolution_A == pytest.approx(8.0, rel=0.1)


def test_the_fitted_shells_are_the_first_fall_through_the_range():
    frequency = np.linspace(0.0, 0.4, 41)
    snr = np.exp(-60.0 * frequency ** 2)  # a B-factor's fall: through 1.2-0.08 at 0.1-0.2
    snr[32:] = 0.5  # a noisy estimate back in the range far beyond
    band = resolution_estimate._fit_band(frequency, snr)
    fitted = frequency[band]
    assert fitted.min() >= 1 / resolution_estimate.COARSEST_A and fitted.max() < 0.21
    assert band.sum() >= 8


def test_a_small_masked_crop_gets_a_weak_edge_with_low_confidence(shared_data):
    # a 47x52x35 masked crop: few shells spread its low-pass edge below the clear-edge slope
    data, info = mapio.read_map(shared_data / "pairs/emd-2566/2566_3J6B_9.mrc")
    voxel = info.voxel_size_zyx
    degraded, _ = real_degradation.degraded_real_map(data, voxel, 6.0, seed=3, keep_mask=True)
    estimate = resolution_estimate.estimate_resolution(degraded, voxel)
    assert estimate.method == "post-processing edge" and not estimate.confident
    assert estimate.resolution_A == pytest.approx(6.0, rel=0.1)


def test_a_masked_maps_flat_outside_is_not_counted_as_quiet_solvent():
    rng = np.random.default_rng(4)
    z, y, x = np.indices((64,) * 3) - 31.5
    radius = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    molecule = grid.band_limit((radius < 12).astype(np.float32) * 3.0, (1.0,) * 3, 6.0)
    noisy = molecule + grid.band_limit(rng.standard_normal((64,) * 3).astype(np.float32),
                                       (1.0,) * 3, 3.0)
    masked = np.where(radius < 28, noisy, 0.0).astype(np.float32)  # solvent inside the mask
    frequency, snr_noisy = resolution_estimate.box_snr(noisy, (1.0,) * 3)
    _, snr_masked = resolution_estimate.box_snr(masked, (1.0,) * 3)
    band = (frequency > 1 / 16) & (frequency < 1 / 7)  # where the sphere has signal
    # the noise is the same inside the mask: so is the signal-to-noise ratio (counting the
    # flat outside as solvent made the noise look quieter: the ratio was 7-15)
    ratio = np.median(snr_masked[band] / snr_noisy[band])
    assert 0.7 < ratio < 1.5


def test_a_map_of_constant_noise_has_no_estimate(tmp_path):
    noise = np.random.default_rng(1).standard_normal((64,) * 3).astype(np.float32)
    with pytest.raises(ResolutionUnknownError, match="--resolution R"):
        resolution_estimate.estimate_resolution(noise, (1.2,) * 3)
    with pytest.raises(ResolutionUnknownError):
        resolution_estimate.estimate_resolution(np.full((40,) * 3, 3.0, np.float32), (1.0,) * 3)
    noise_choice = choose_resolution(parse_resolution(None), tmp_path / "n.mrc", None,
                                     (1.2,) * 3, noise)
    assert noise_choice == ResolutionChoice(6.0, NOT_ESTIMABLE)  # the middle of 4–8 Å
    assert noise_choice.label() == "res 6.00 A (not estimable)"
    assert "cannot be estimated" in noise_choice.summary()


def test_emdb_headers_of_both_schemas(tmp_path):
    (tmp_path / "emd-1997-v30.xml").write_text(HEADER_V30, encoding="utf-8")
    (tmp_path / "emd-5168.xml").write_text(HEADER_V19)
    v30 = emdb_header.read_header(tmp_path / "emd-1997-v30.xml")
    assert (v30.entry, v30.resolution_A, v30.voxel_size_A) == ("EMD-1997", 7.0, (2.02,) * 3)
    assert v30.half_maps == ("emd_1997_half_map_1.map.gz", "emd_1997_half_map_2.map.gz")
    v19 = emdb_header.read_header(tmp_path / "emd-5168.xml")
    assert (v19.entry, v19.resolution_A, v19.voxel_size_A) == ("EMD-5168", 6.6, (1.742,) * 3)
    assert emdb_header.header_beside(tmp_path / "emd_1997.map") == tmp_path / "emd-1997-v30.xml"
    assert emdb_header.header_beside(tmp_path / "EMD-5168.mrc") == tmp_path / "emd-5168.xml"
    assert emdb_header.header_beside(tmp_path / "map.mrc") is None
    (tmp_path / "header").mkdir()
    (tmp_path / "header" / "emd-1234-v30.xml").write_text(HEADER_V30)
    assert emdb_header.header_beside(tmp_path / "emd_1234.map.gz") == \
        tmp_path / "header" / "emd-1234-v30.xml"
    assert [emdb_header.entry_number(n) for n in ("emd_1997.map", "EMD-12345", "1997.map",
                                                  "myemd_12.mrc")] == ["1997", "12345", None, None]


@pytest.mark.parametrize("broken", ["<emd emdb_id='EMD-1'><map>", "<pdbx/>",
                                    HEADER_V30.replace(">7.0<", ">seven<")])
def test_a_broken_header_is_one_error(tmp_path, broken):
    path = tmp_path / "emd-1997.xml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(MetadataError, match="emd-1997.xml"):
        emdb_header.read_header(path)


def test_sources_in_order_given_half_maps_header_estimate(tmp_path):
    data = band_limited_noise(6.0, voxel_A=1.2, size=64)
    voxel = (1.2,) * 3
    map_path = tmp_path / "emd_1997.map"
    (tmp_path / "emd-1997-v30.xml").write_text(HEADER_V30, encoding="utf-8")
    assert choose_resolution(parse_resolution("5.5"), map_path, 4.4, voxel, data) == \
        ResolutionChoice(5.5, "--resolution")
    assert choose_resolution(parse_resolution(None), map_path, 4.4, voxel, data) == \
        ResolutionChoice(4.4, "half-map FSC=0.143")
    from_header = choose_resolution(parse_resolution(None), map_path, None, voxel, data)
    assert from_header == ResolutionChoice(7.0, "EMDB header emd-1997-v30.xml")
    assert from_header.label() == "res 7.00 A (EMDB header)"
    estimated = choose_resolution(parse_resolution(None), tmp_path / "other.mrc", None, voxel,
                                  data)
    assert estimated.source == "estimated from the map"
    assert estimated.resolution_A == pytest.approx(6.0, rel=0.08)
    assert estimated.label().endswith("A (estimated)")


def test_bare_enhance_names_the_estimate_and_says_when_there_is_none(tmp_path, tiny_checkpoint):
    edge_map = tmp_path / "edge.mrc"
    write_mrc(edge_map, band_limited_noise(6.0, size=48), voxel_size=(1.2,) * 3)
    out = tmp_path / "out.mrc"
    result = runner.invoke(app, ["enhance", str(edge_map), "-o", str(out), "--weights",
                                 str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    assert "estimated from the map" in result.output
    assert "(estimated)" in mapio.read_map(out)[1].labels[-1]
    noise_map, noise_out = tmp_path / "noise.mrc", tmp_path / "noise_out.mrc"
    write_mrc(noise_map, np.random.default_rng(2).standard_normal((48,) * 3).astype(np.float32),
              voxel_size=(1.2,) * 3)
    result = runner.invoke(app, ["enhance", str(noise_map), "-o", str(noise_out), "--weights",
                                 str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert ("limited to 6.00 Å, the middle of the range the model was trained for: the map's "
            "resolution cannot be estimated") in said  # no estimate made up, and it says so
    assert "res 6.00 A (not estimable)" in mapio.read_map(noise_out)[1].labels[-1]
    (tmp_path / "emd-4321.xml").write_text("<emd emdb_id='EMD-4321'><map>")
    broken_map, broken_out = tmp_path / "emd_4321.map", tmp_path / "broken_out.mrc"
    write_mrc(broken_map, band_limited_noise(6.0, size=48), voxel_size=(1.2,) * 3)
    result = runner.invoke(app, ["enhance", str(broken_map), "-o", str(broken_out),
                                 "--weights", str(tiny_checkpoint)])
    assert result.exit_code == 1 and "emd-4321.xml" in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one line (wrapped at most)
    assert not broken_out.exists()


def test_enhance_an_emdb_id_through_a_local_mirror_and_offline(shared_data, tmp_path, http_server,
                                                               monkeypatch, tiny_checkpoint):
    import gzip

    base, routes, hits = http_server
    # the entry's map, its central 48³ (2.02 Å voxels as EMDB's): the route, not the network,
    # is under test, and the whole 100³ map costs a minute of CPU per enhance
    data, info = mapio.read_map(shared_data / "pairs/emd-1997/1997.map")
    data = data[26:74, 26:74, 26:74]
    entry_map = write_mrc(tmp_path / "entry.map", data, voxel_size=info.voxel_size_zyx[::-1])
    routes["/emdb/EMD-1997/map/emd_1997.map.gz"] = gzip.compress(entry_map.read_bytes())
    routes["/emdb/EMD-1997/header/emd-1997-v30.xml"] = HEADER_V30.encode()
    monkeypatch.setenv("CRYOSAMU_EMDB_URL", f"{base}/emdb")
    monkeypatch.setenv("CRYOSAMU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CRYOSAMU_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    offline_cache = tmp_path / "empty-cache"
    monkeypatch.setenv("CRYOSAMU_OFFLINE", "1")
    monkeypatch.setenv("CRYOSAMU_CACHE_DIR", str(offline_cache))
    result = runner.invoke(app, ["enhance", "EMD-1997", "--weights", str(tiny_checkpoint)])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "CRYOSAMU_OFFLINE" in said
    assert "emd_1997.map.gz" in said and "emd-1997-v30.xml" in said and not hits
    assert not (tmp_path / "emd_1997_enhanced.mrc").exists()
    monkeypatch.delenv("CRYOSAMU_OFFLINE")
    monkeypatch.setenv("CRYOSAMU_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["enhance", "emd_1997", "--weights", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    written = tmp_path / "emd_1997_enhanced.mrc"
    enhanced, enhanced_info = mapio.read_map(written)
    assert enhanced.shape == (48, 48, 48)
    assert enhanced_info.voxel_size_zyx == pytest.approx((2.02,) * 3)
    assert "res 7.00 A (EMDB header)" in enhanced_info.labels[-1]
    assert "limited to 7.00 Å (EMDB header emd-1997-v30.xml)" in " ".join(result.output.split())
    again = runner.invoke(app, ["enhance", "EMD-1997.map", "-o", "second.mrc", "--weights",
                                str(tiny_checkpoint)])
    assert again.exit_code == 0, again.output
    assert hits == {"/emdb/EMD-1997/map/emd_1997.map.gz": 1,
                    "/emdb/EMD-1997/header/emd-1997-v30.xml": 1}  # the cache serves the rerun
    # --half-maps: the halves the header lists, from the entry's other/ folder; their FSC
    # gives the resolution
    rng = np.random.default_rng(4)
    for number in (1, 2):
        half = tmp_path / f"half{number}.mrc"
        noisy = data + 0.2 * float(data.std()) * rng.standard_normal(data.shape)
        write_mrc(half, noisy, voxel_size=info.voxel_size_zyx[::-1])
        routes[f"/emdb/EMD-1997/other/emd_1997_half_map_{number}.map.gz"] = gzip.compress(
            half.read_bytes())
    halves = runner.invoke(app, ["enhance", "EMD-1997", "--half-maps", "-o", "halves.mrc",
                                 "--weights", str(tiny_checkpoint)])
    assert halves.exit_code == 0, halves.output
    assert "half-map FSC=0.143" in mapio.read_map(tmp_path / "halves.mrc")[1].labels[-1]
    assert (tmp_path / "halves_fsc.json").is_file()
    assert hits["/emdb/EMD-1997/other/emd_1997_half_map_2.map.gz"] == 1


def test_local_resolution_of_two_halves_at_two_resolutions(tmp_path, tiny_checkpoint):
    """Half maps whose left half holds detail to 4.5 Å and right half only to 9 Å: the
    local resolution map shows the two regions, enhance writes it as <output>_locres.mrc with
    --write-locres, and its default band limit passes more detail on the left and less on the
    right than one global band (--band-limit global)."""
    from cryosamu_cli.enhance import local_resolution

    rng = np.random.default_rng(0)
    n = 96
    base = rng.standard_normal((n,) * 3).astype(np.float32)
    fine, coarse = (grid.band_limit(base, (1.0,) * 3, r) for r in (4.5, 9.0))
    zz, yy, xx = np.indices((n,) * 3)
    radius = np.sqrt((zz - n / 2) ** 2 + (yy - n / 2) ** 2 + (xx - n / 2) ** 2)
    side = np.clip((xx - n / 2) / 8 + 0.5, 0, 1)
    signal = ((1 - side) * fine + side * coarse) * np.clip((44 - radius) / 10, 0, 1) * 3
    halves = [signal + 0.5 * rng.standard_normal(signal.shape).astype(np.float32)
              for _ in range(2)]
    local = local_resolution.local_resolution(halves[0], (1.0,) * 3, 6.0, halves[1])
    left = np.median(local[(radius < 30) & (xx < n // 2 - 16)])
    right = np.median(local[(radius < 30) & (xx > n // 2 + 16)])
    assert right > 1.4 * left  # two regions, the coarse one on the right
    assert 0.6 * 6.0 - 1e-4 <= local.min() and local.max() <= 2.0 * 6.0 + 1e-4
    paths = [write_mrc(tmp_path / f"half{i}.mrc", h, voxel_size=(1.0,) * 3)
             for i, h in enumerate(halves)]
    out = tmp_path / "avg.mrc"
    result = runner.invoke(app, ["enhance", str(paths[0]), "--half2", str(paths[1]), "-o",
                                 str(out), "--weights", str(tiny_checkpoint),
                                 "--write-locres"])
    assert result.exit_code == 0, result.output
    written, _ = mapio.read_map(tmp_path / "avg_locres.mrc")
    left_side, right_side = (radius < 30) & (xx < n // 2 - 16), (radius < 30) & (xx > n // 2 + 16)
    assert np.median(written[right_side]) > 1.3 * np.median(written[left_side])
    local_out, local_grid = mapio.read_map(out)
    assert "local" in local_grid.labels[-1] and "each region" in result.output
    report = json.loads((tmp_path / "avg_fsc.json").read_text())
    assert report["output_limited_to"]["band_limit"] == "local"
    one_band = runner.invoke(app, ["enhance", str(paths[0]), "--half2", str(paths[1]), "-o",
                                   str(tmp_path / "global.mrc"), "--weights",
                                   str(tiny_checkpoint), "--band-limit", "global"])
    assert one_band.exit_code == 0, one_band.output
    global_out, global_grid = mapio.read_map(tmp_path / "global.mrc")
    assert "local" not in global_grid.labels[-1]
    assert not (tmp_path / "global_locres.mrc").exists()

    global_A = report["output_limited_to"]["resolution_A"]  # the halves' FSC: about 4.2 Å

    def fine_detail(volume, region):  # the share of a region's power beyond 1 / (1.2 R)
        finer = volume - grid.band_limit(volume, (1.0,) * 3, 1.2 * global_A)
        return float(np.sum(finer[region] ** 2) / np.sum(volume[region] ** 2))

    # the left reads about R, so it keeps the global band's detail; the right (9 Å) loses most
    assert fine_detail(local_out, left_side) > 0.9 * fine_detail(global_out, left_side)
    assert fine_detail(local_out, right_side) < 0.3 * fine_detail(global_out, right_side)


def test_the_band_limit_follows_the_local_values_as_far_as_asked():
    """follow = 0 is the global band exactly; follow = 1 blends the ladder at the local values
    themselves; the default follows half-way (in log resolution); uniform local values are
    the global band whatever follow is."""
    from cryosamu_cli.enhance import local_resolution

    rng = np.random.default_rng(3)
    volume = rng.standard_normal((48,) * 3).astype(np.float32)
    edge = (0.9, 1.1)
    one_band = grid.band_limit(volume, (1.0,) * 3, 6.0, edge)
    coarse = np.full(volume.shape, 6.0 * 1.45, np.float32)  # a rung of the ladder
    assert np.allclose(local_resolution.locally_limited(volume, coarse, 6.0, edge, follow=0.0),
                       one_band, atol=1e-5)
    assert np.allclose(local_resolution.locally_limited(volume, coarse, 6.0, edge, follow=1.0),
                       grid.band_limit(volume, (1.0,) * 3, 6.0 * 1.45, edge), atol=1e-5)
    halfway = np.full(volume.shape, 6.0 * 1.45 ** 2, np.float32)
    assert local_resolution.FOLLOW == 0.5
    assert np.allclose(local_resolution.locally_limited(volume, halfway, 6.0, edge),
                       grid.band_limit(volume, (1.0,) * 3, 6.0 * 1.45, edge), atol=1e-5)
    uniform = np.full(volume.shape, 6.0, np.float32)
    assert local_resolution.is_uniform(uniform)
    assert not local_resolution.is_uniform(np.where(rng.random(volume.shape) > 0.5, 6.0, 9.0))
    assert np.array_equal(local_resolution.locally_limited(volume, uniform, 6.0, edge), one_band)


def test_a_masked_maps_flat_outside_gives_no_local_noise_measure():
    """One masked map (noise only inside a tight mask): the constant outside is no solvent
    noise, so no window is compared with it and every voxel keeps the global resolution."""
    from cryosamu_cli.enhance import local_resolution

    rng = np.random.default_rng(2)
    n = 80
    zz, yy, xx = np.indices((n,) * 3) - n / 2
    radius = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    signal = grid.band_limit(rng.standard_normal((n,) * 3).astype(np.float32), (1.0,) * 3, 5.0)
    noisy = 3 * signal * (radius < 20) + 0.5 * rng.standard_normal((n,) * 3)
    masked = np.where(radius < 24, noisy, 0.0).astype(np.float32)
    _, solvent = resolution_estimate.molecule_and_solvent(masked, (1.0,) * 3)
    assert local_resolution._noise_power(masked, solvent, (1.0,) * 3) is None
    local = local_resolution.local_resolution(masked, (1.0,) * 3, 6.0)
    assert np.all(local == pytest.approx(6.0))
