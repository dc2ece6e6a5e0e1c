"""Map–model metrics against cctbx (phenix.map_model_cc / mtriage) on real pairs, and the
analytic cases."""

from __future__ import annotations

import numpy as np
import pytest

from cryosamu_cli import grid, mapio, metrics, simulate
from cryosamu_cli.benchmark import quality as benchmark_quality
from cryosamu_cli.structure import read_atoms

# (pair folder, map, model, resolution, compare per-residue RSCC too)
REAL_PAIRS = [
    ("emd-5168", "emd_5168_monomer.mrc", "3MFP.pdb", 6.6, True),
    ("emd-1461", "emd_1461.mrc", "rotavirus_vp6.pdb", 3.8, True),
    ("emd-0093", "emd_0093_MAP_m4A_cropped.mrc", "6gyn.pdb", 3.4, False),
    ("emd-1997", "1997.map", "1oel_14mer_fitted_to_emd1997.pdb", 7.0, False),
]


@pytest.fixture(scope="module")
def cctbx_available():
    # find_spec only: importing cctbx here, beside torch, would crash the test process
    import importlib.util

    if importlib.util.find_spec("mmtbx") is None:
        pytest.skip("cctbx-base is not installed (pip install -e '.[test]')")


@pytest.mark.parametrize("folder, map_name, model_name, resolution, with_rscc", REAL_PAIRS,
                         ids=[p[0] for p in REAL_PAIRS])
def test_native_metrics_agree_with_cctbx(shared_data, cctbx_available, folder, map_name,
                                         model_name, resolution, with_rscc):
    map_path = shared_data / "pairs" / folder / map_name
    model_path = shared_data / "pairs" / folder / model_name
    data, grid = mapio.read_map(map_path)
    ours = metrics.map_model_scores(data, grid, read_atoms(model_path), resolution,
                                    with_rscc=with_rscc)
    reference = benchmark_quality.cctbx_scores(map_path, model_path, resolution)
    for key in ("cc_box", "cc_mask", "cc_volume", "cc_peaks"):
        assert getattr(ours, key) == pytest.approx(reference[key], abs=0.01), key
    assert ours.fsc05 == pytest.approx(reference["fsc05"], abs=0.1)
    if with_rscc:
        # cctbx lists alternate conformers as extra residues: compare by (chain, seqid)
        theirs = {}
        for r in reference["rscc"]:
            theirs.setdefault((r["chain"], r["seqid"]), r["cc"])
        mine = {(chain, seqid): cc for chain, seqid, _, cc in ours.rscc}
        common = sorted(set(mine) & set(theirs))
        assert len(common) >= 0.98 * len(mine)
        differences = np.array([mine[key] - theirs[key] for key in common])
        assert np.abs(differences).mean() < 0.01


@pytest.mark.parametrize("resolution", [4.0, 6.6])
def test_our_model_map_is_cctbxs_model_map(shared_data, tmp_path, resolution, cctbx_available):
    """cctbx as the referee: our F_calc model map, scored by mmtbx's map_model_cc against the
    same model, is the map it computes itself (every CC 1, FSC = 0.5 at the resolution)."""
    data, grid = mapio.read_map(shared_data / "pairs/emd-5168/emd_5168_monomer.mrc")
    atoms = read_atoms(shared_data / "pairs/emd-5168/3MFP.pdb")
    model = simulate.model_map(atoms, grid.shape_zyx, grid.voxel_size_A,
                               mapio.grid_origin_xyz(grid), resolution)
    path = mapio.write_map(tmp_path / "model.mrc", model, grid)
    scores = benchmark_quality.cctbx_scores(path, shared_data / "pairs/emd-5168/3MFP.pdb",
                                            resolution)
    for key in ("cc_box", "cc_mask", "cc_volume", "cc_peaks"):
        assert scores[key] == pytest.approx(1.0, abs=1e-3), key
    assert scores["fsc05"] == pytest.approx(resolution, rel=0.05)


def test_model_map_structure_factors_match_direct_summation(shared_data):
    """Referee: a direct sum over atoms with gemmi's electron form factors (International
    Tables C 4.3.2.2), not our table."""
    import gemmi

    atoms = read_atoms(shared_data / "pairs/emd-5168/3MFP.pdb")
    cell = np.array([40.0, 50.0, 60.0])
    h, k, l = np.array([0, 2]), np.array([-1, 3]), np.array([1, 4])
    ours = simulate.structure_factors(atoms, cell, np.zeros(3), (h, k, l))
    for (zi, li), (yi, ki), (xi, hi) in [((0, 1), (0, -1), (0, 0)), ((1, 4), (1, 3), (1, 2))]:
        s2 = (hi / cell[0]) ** 2 + (ki / cell[1]) ** 2 + (li / cell[2]) ** 2
        total = 0j
        for xyz, el, b, occ in zip(atoms.xyz, atoms.element, atoms.b_iso, atoms.occupancy):
            table = gemmi.Element(str(el)).c4322
            f = (np.array(table.a) * np.exp(-(np.array(table.b) + b) * s2 / 4)).sum() * occ
            total += f * np.exp(-2j * np.pi * np.dot([hi, ki, li], xyz / cell))
        assert ours[zi, yi, xi] == pytest.approx(total, rel=1e-9)


def test_molecular_mask_covers_atoms_and_excludes_far_solvent(shared_data):
    data, grid = mapio.read_map(shared_data / "pairs/emd-5168/emd_5168_monomer.mrc")
    atoms = read_atoms(shared_data / "pairs/emd-5168/3MFP.pdb")
    origin = np.array(mapio.grid_origin_xyz(grid))
    inside = simulate.molecular_mask(atoms, grid.shape_zyx, grid.voxel_size_A, tuple(origin))
    index = np.rint((atoms.xyz - origin) / np.array(grid.voxel_size_A)).astype(int)
    ok = np.all((index >= 0) & (index < np.array(grid.shape_zyx[::-1])), axis=1)
    assert inside[index[ok, 2], index[ok, 1], index[ok, 0]].mean() > 0.99
    assert 0.1 < inside.mean() < 0.5


def test_bfactor_sharpening_flattens_a_blurred_spectrum():
    rng = np.random.default_rng(0)
    white = rng.standard_normal((64, 64, 64))
    blurred, _ = _blur(white, 150.0)
    sharpened, b = __import__("cryosamu_cli.grid", fromlist=["x"]).bfactor_sharpen(
        blurred, (1.0, 1.0, 1.0), resolution_A=3.0)
    assert b == pytest.approx(150.0, rel=0.1)
    low = metrics.fsc(white, sharpened, (1.0, 1.0, 1.0))
    assert low.fsc[5:15].min() > 0.99


def _blur(volume, b_factor):
    spectrum = np.fft.rfftn(volume)
    shells, width = grid.shell_index(volume.shape, (1.0, 1.0, 1.0))
    s = shells * width
    return np.fft.irfftn(spectrum * np.exp(-b_factor * s ** 2 / 4), s=volume.shape,
                         axes=(0, 1, 2)), b_factor
