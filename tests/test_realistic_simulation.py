"""Simulated maps that look like deposited ones (``--degradation realistic``) and the figures
that compare them with real maps (:mod:`cryosamu_cli.data.map_statistics`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from cryosamu_cli import grid, mapio
from cryosamu_cli.data import degrade, real_degradation
from cryosamu_cli.data import pair_shards
from cryosamu_cli.data import prepare
from cryosamu_cli.cli.app import app
from cryosamu_cli.errors import ConfigError
from cryosamu_cli.data.map_statistics import (background_mask, flat_fraction, map_statistics,
                                         radial_power_spectrum, relative_amplitudes)
from cryosamu_cli.structure import read_atoms

runner = CliRunner()


def _shell_amplitude(volume: np.ndarray, frequency_per_A: float) -> float:
    frequency, power = radial_power_spectrum(volume, (1.0, 1.0, 1.0))
    return float(np.sqrt(np.interp(frequency_per_A, frequency, power)))


def test_relative_amplitudes_and_histogram_figures_of_known_maps():
    rng = np.random.default_rng(0)
    white = rng.standard_normal((64, 64, 64)).astype(np.float32)
    # white noise: the same mean amplitude in every shell
    assert relative_amplitudes(white, (1.0,) * 3, [0.1, 0.3]) == pytest.approx([1, 1], abs=0.1)
    # a Gaussian blur exp(-2 pi^2 sigma^2 s^2) in amplitude, relative to the shell at 1/15 Å
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(white, 1.5)
    expected = np.exp(-2 * np.pi ** 2 * 1.5 ** 2 * (0.2 ** 2 - (1 / 15) ** 2))
    assert relative_amplitudes(blurred, (1.0,) * 3, [0.2])[0] == pytest.approx(expected, rel=0.15)
    assert np.isnan(relative_amplitudes(white, (2.0,) * 3, [0.3])[0])  # beyond Nyquist
    stats = map_statistics(white, (1.0,) * 3, 5.0)
    assert abs(stats.skewness) < 0.05 and abs(stats.kurtosis) < 0.05
    assert stats.below_minus_1sd == pytest.approx(0.1587, abs=0.005)  # the normal's tail
    assert stats.above_2sd == pytest.approx(0.0228, abs=0.003)
    assert stats.flat_fraction < 1e-4 and background_mask(white) is None
    masked = white.copy()
    masked[:, :, :40] = -0.5
    assert flat_fraction(masked) == pytest.approx(40 / 64, abs=1e-6)
    inside, background = background_mask(masked)
    assert background == -0.5 and inside.sum() == 64 * 64 * 24


@pytest.fixture(scope="module")
def lysozyme(shared_data):
    atoms = pair_shards.heavy_atoms(read_atoms(shared_data / "structures" / "1akeA.pdb"))
    data, info = mapio.read_map(shared_data / "unpaired" / "emd_6824.mrc")
    return atoms, radial_power_spectrum(data, info.voxel_size_zyx)


def _draw_with(rng_seed: int, **wanted) -> int:
    """The first seed from ``rng_seed`` whose realistic draw has the wanted properties."""
    for seed in range(rng_seed, rng_seed + 200):
        params = degrade.draw(np.random.default_rng(seed), "realistic")
        if all(bool(getattr(params, key)) == value for key, value in wanted.items()):
            return seed
    raise AssertionError(f"no draw with {wanted}")


def test_realistic_simulation_is_masked_sharpened_and_low_passed_as_drawn(lysozyme):
    atoms, reference = lysozyme
    seed = _draw_with(0, mask_radius_A=True, sharpen_fraction=True)
    raw, target, info, params = degrade.simulated_pair(atoms, reference,
                                                       np.random.default_rng(seed), None,
                                                       "realistic")
    assert params.low_pass and 0.5 <= params.sharpen_fraction <= 1.0
    assert 3.0 <= params.mask_radius_A <= 8.0 and params.b_periphery > 0
    # masked: exactly zero beyond the mask's radius + edge from every atom
    local = atoms.xyz - np.asarray(info.origin_A)
    from scipy.spatial import cKDTree
    z, y, x = np.nonzero(raw == 0)
    assert len(z) > 0.3 * raw.size
    inside_radius = cKDTree(local).query(np.stack([x, y, z], 1))[0] < params.mask_radius_A - 1
    assert not inside_radius.any()
    assert flat_fraction(raw) > 0.3 and np.isfinite(raw).all() and raw.max() > 0
    # low-passed at R (cosine to 0 at 1/R): little beyond R, shells below keep their power
    unmasked_seed = _draw_with(0, mask_radius_A=False, sharpen_fraction=True)
    raw, _, _, params = degrade.simulated_pair(atoms, reference,
                                               np.random.default_rng(unmasked_seed), None,
                                               "realistic")
    beyond = _shell_amplitude(raw, 1.1 / params.resolution_A)
    assert beyond < 0.02 * _shell_amplitude(raw, 0.5 / params.resolution_A)
    # the same seed without the realistic steps keeps its noise beyond R
    basic, _, _, basic_params = degrade.simulated_pair(
        atoms, reference, np.random.default_rng(unmasked_seed), None, "basic")
    assert basic_params.resolution_A == params.resolution_A
    assert (basic_params.sharpen_fraction, basic_params.mask_radius_A,
            basic_params.b_anisotropic, basic_params.b_periphery) == (0, 0, 0, 0)
    assert _shell_amplitude(basic, 1.1 / params.resolution_A) > 0.1 * _shell_amplitude(
        basic, 0.5 / params.resolution_A)


def test_anisotropic_blur_blurs_along_its_direction_only():
    volume = np.zeros((32, 32, 32), np.float32)
    volume[16, 16, 16] = 1.0
    blurred = degrade.anisotropic_blur(volume, 200.0, (1.0, 0.0, 0.0))
    spectrum = np.abs(np.fft.rfftn(blurred))
    # along x (the last axis) the amplitude falls as exp(-B s^2 / 4); along y it does not
    s = 8 / 32
    assert spectrum[0, 0, 8] == pytest.approx(np.exp(-200 * s ** 2 / 4), rel=1e-4)
    assert spectrum[0, 8, 0] == pytest.approx(1.0, rel=1e-4)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-4)


def test_rim_distance_grows_with_the_squared_distance_from_the_centre():
    xyz = np.array([[0.0, 0, 0], [1, 0, 0], [-2, 0, 0], [0, 0, 0]])
    centre_offset = xyz - xyz.mean(0)
    rim = degrade._squared_rim_distance(xyz)
    expected = (centre_offset ** 2).sum(1) / (centre_offset ** 2).sum(1).max()
    assert rim == pytest.approx(expected)
    assert rim.max() == pytest.approx(1.0)


def test_rim_occupancy_fades_the_maps_rim_and_keeps_the_target_whole(lysozyme, monkeypatch):
    atoms, _ = lysozyme
    seed = _draw_with(0, mask_radius_A=False, sharpen_fraction=False, b_anisotropic=False)
    whole = replace(degrade.draw(np.random.default_rng(seed), "realistic"), rim_occupancy=1.0)
    faded = replace(whole, rim_occupancy=0.3)

    def signal_and_target(drawn):
        # the same random draw but for the occupancy: every later random number is the same
        monkeypatch.setattr(degrade, "draw", lambda _rng, _kind: drawn)
        return degrade.simulated_pair(atoms, None, np.random.default_rng(seed), None,
                                      "realistic")

    whole_map, whole_target, info, _ = signal_and_target(whole)
    faded_map, faded_target, _, _ = signal_and_target(faded)
    assert np.array_equal(whole_target, faded_target)  # the target keeps every atom whole
    # at the atoms nearest the centre the two maps agree; at the rim the faded one is weaker
    rim = degrade._squared_rim_distance(atoms.xyz)
    index = np.round((atoms.xyz - np.asarray(info.origin_A))[:, ::-1]).astype(int)

    def at_atoms(volume, chosen):
        return volume[tuple(index[chosen].T)].mean()

    centre, outer = rim < 0.05, rim > 0.8
    assert at_atoms(faded_map, centre) == pytest.approx(at_atoms(whole_map, centre), rel=0.15)
    ratio = at_atoms(faded_map, outer) / at_atoms(whole_map, outer)
    assert 0.3 < ratio < 0.6


def test_degraded_real_map_keeps_the_mask_of_a_masked_map(shared_data):
    data, info = mapio.read_map(shared_data / "pairs/emd-0093/emd_0093_MAP_m4A_cropped.mrc")
    inside, background = background_mask(data)
    kept, record = real_degradation.degraded_real_map(data, info.voxel_size_zyx, 6.0, seed=1,
                                                      keep_mask=True)
    assert record.masked
    far = ~grid.soft_mask(inside, edge_voxels=2.0).astype(bool)
    assert np.all(kept[far] == np.float32(background))
    plain, record = real_degradation.degraded_real_map(data, info.voxel_size_zyx, 6.0, seed=1)
    assert not record.masked and flat_fraction(plain) < 0.01
    # inside the mask both are the same degraded map
    assert np.allclose(kept[inside], plain[inside], atol=1e-5)
    unmasked, _ = mapio.read_map(shared_data / "pairs/emd-1461/rotavirus_vp6-96o.mrc")
    _, record = real_degradation.degraded_real_map(unmasked, (1.23,) * 3, 6.0, seed=1,
                                                   keep_mask=True)
    assert not record.masked


def test_degradation_kind_is_checked_and_recorded(shared_data, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "1akeA.pdb").write_bytes((shared_data / "structures" / "1akeA.pdb").read_bytes())
    reference = str(shared_data / "unpaired/emd_6824.mrc")
    with pytest.raises(ConfigError, match="unknown degradation 'wild'"):
        prepare.prepare_data(output_dir=tmp_path / "x", simulate_from=models,
                             noise_reference=reference,
                             options=pair_shards.PrepareOptions(degradation="wild"))
    result = runner.invoke(app, ["prepare-data", "-o", str(tmp_path / "y"), "--no-struct",
                                 "--simulate-from", str(models), "--noise-reference", reference,
                                 "--degradation", "wild"])
    assert result.exit_code == 1 and "unknown degradation" in result.stderr
    assert not (tmp_path / "y" / "manifest.json").exists()
    manifest = prepare.prepare_data(output_dir=tmp_path / "z", simulate_from=models,
                                    noise_reference=reference, seed=2)
    assert manifest["options"]["degradation"] == "realistic"
    recorded = manifest["pairs"][0]["degradation"]
    assert {"b_periphery", "sharpen_fraction", "mask_radius_A", "b_anisotropic"} <= set(recorded)
    assert recorded == degrade.draw(np.random.default_rng(2), "realistic").to_dict()


def test_realistic_noise_ends_the_information_at_the_drawn_resolution(lysozyme):
    """Step 5, realistic: the noise is set from the map's own signal, so that the
    signal-to-noise ratio at the drawn resolution is that of an FSC = 0.143 shell (the
    reference spectrum's noise left it ~1000x higher), far higher at low resolution, and
    falling beyond R over a flat noise."""
    from cryosamu_cli.simulate import simulate_density

    atoms, _ = lysozyme
    low = atoms.xyz.min(axis=0) - 12.0
    shape = tuple(int(n) for n in (np.ceil(atoms.xyz.max(axis=0) + 12.0 - low) + 1)[::-1])
    signal = simulate_density(atoms.xyz, atoms.atomic_number, shape, (1.0,) * 3, tuple(low),
                              6.0, extra_b=np.full(len(atoms.xyz), 60.0))
    noise = degrade.resolution_calibrated_noise(signal, 6.0, 5.0 * 36.0,
                                                np.random.default_rng(0))
    frequency, signal_power = radial_power_spectrum(signal, (1.0,) * 3)
    _, noise_power = radial_power_spectrum(noise, (1.0,) * 3)
    snr = signal_power / noise_power
    at = lambda resolution_A: float(np.interp(1 / resolution_A, frequency, snr))  # noqa: E731
    assert at(6.0) == pytest.approx(degrade.SNR_AT_RESOLUTION, rel=0.2)
    assert at(9.0) > 5 * degrade.SNR_AT_RESOLUTION  # exp(5 * 36 * (1/36 - 1/81)) ~ 16x
    assert at(15.0) <= degrade.MAX_SNR * 1.3
    assert at(4.0) < 0.1 * degrade.SNR_AT_RESOLUTION  # beyond R the signal fades into noise
    beyond = (frequency > 1 / 5.5) & (frequency < 1 / 3.0)
    assert noise_power[beyond].max() < 1.5 * noise_power[beyond].min()  # flat beyond R
