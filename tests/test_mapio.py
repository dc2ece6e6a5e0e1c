"""MRC reading and writing: canonical order, exact headers, atomic writes, refusals."""

from __future__ import annotations

import gzip

import mrcfile
import numpy as np
import pytest

from cryosamu_cli import mapio
from cryosamu_cli.errors import InvalidMapError, MapReadError, OutputError
from tests.conftest import SHARED_MAPS, smooth_volume, write_mrc

GEOMETRY = ("shape_zyx", "voxel_size_A", "origin_A", "nstart", "cell_A", "cell_angles",
            "sampling", "axis_order", "space_group")


def _header_fields(path):
    with mrcfile.open(path, permissive=True) as mrc:
        h = mrc.header
        return {"shape": mrc.data.shape, "cella": h.cella.tolist(), "cellb": h.cellb.tolist(),
                "mxyz": (int(h.mx), int(h.my), int(h.mz)),
                "axes": (int(h.mapc), int(h.mapr), int(h.maps)),
                "nstart": (int(h.nxstart), int(h.nystart), int(h.nzstart)),
                "origin": h.origin.tolist(), "ispg": int(h.ispg)}


@pytest.mark.parametrize("relative", SHARED_MAPS)
def test_real_map_round_trip_keeps_every_header_field(shared_data, tmp_path, relative):
    source = shared_data / relative
    data, grid = mapio.read_map(source)
    out = mapio.write_map(tmp_path / "copy.mrc", data, grid)
    again, grid_again = mapio.read_map(out)
    assert np.array_equal(again, data)
    assert _header_fields(out) == _header_fields(source)
    for name in GEOMETRY:
        assert getattr(grid_again, name) == getattr(grid, name), name
    assert grid_again.labels[:-1] == grid.labels
    assert grid_again.labels[-1].startswith("cryosamu ")


def test_axis_order_312_is_canonicalised_and_restored(tmp_path):
    canonical = smooth_volume((12, 10, 8))  # [z, y, x]
    # mapc=3 (columns are z), mapr=1 (rows are x), maps=2 (sections are y): file array [y, x, z]
    file_data = np.transpose(canonical, (1, 2, 0))
    path = write_mrc(tmp_path / "zxy.mrc", file_data, voxel_size=(1.3, 0.9, 1.1),
                     axis_order=(3, 1, 2), nstart=(5, -3, 7), origin=(10.0, -20.0, 30.5))
    data, grid = mapio.read_map(path)
    assert np.array_equal(data, canonical)
    assert grid.axis_order == (3, 1, 2) and grid.axis_order_text == "ZXY"
    out = mapio.write_map(tmp_path / "out.mrc", data * 2, grid)
    assert _header_fields(out) == _header_fields(path)
    with mrcfile.open(out) as mrc:
        assert np.allclose(mrc.data, file_data * 2)


def test_non_zero_origin_edge_case_keeps_axis_order_and_voxels(shared_data):
    data, grid = mapio.read_map(shared_data / "edge-cases/non_zero_origin_map.ccp4")
    assert grid.axis_order == (3, 2, 1)
    assert grid.nstart == (100, 100, 100)
    assert grid.voxel_size_A == pytest.approx((0.74703, 0.72308, 0.73744), abs=1e-4)
    assert data.shape == (32, 40, 30)


def test_gzipped_map_reads_like_the_plain_one(tmp_path):
    path = write_mrc(tmp_path / "m.mrc", smooth_volume((9, 10, 11)))
    (tmp_path / "m.mrc.gz").write_bytes(gzip.compress(path.read_bytes()))
    plain, _ = mapio.read_map(path)
    zipped, _ = mapio.read_map(tmp_path / "m.mrc.gz")
    assert np.array_equal(plain, zipped)


def test_header_stats_are_updated(tmp_path):
    path = write_mrc(tmp_path / "m.mrc", smooth_volume((9, 10, 11)))
    data, grid = mapio.read_map(path)
    out = mapio.write_map(tmp_path / "o.mrc", data + 5, grid)
    with mrcfile.open(out) as mrc:
        assert mrc.header.dmax == pytest.approx(float((data + 5).max()))
        assert mrc.header.dmean == pytest.approx(float((data + 5).mean()), rel=1e-5)


def test_non_orthogonal_cell_is_refused(shared_data):
    with pytest.raises(InvalidMapError, match="non-orthogonal"):
        mapio.read_map(shared_data / "edge-cases/EMD-3001.map")


def test_non_orthogonal_synthetic_cell_is_refused(tmp_path):
    path = write_mrc(tmp_path / "skew.mrc", smooth_volume((8, 8, 8)), cellb=(90.0, 100.0, 90.0))
    with pytest.raises(InvalidMapError, match="non-orthogonal"):
        mapio.read_map(path)


@pytest.mark.parametrize("content, message", [
    (b"not a map at all", "cannot read"),
    (b"x" * 2048, "not an MRC"),
], ids=["too short", "no map id"])
def test_garbage_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.mrc"
    path.write_bytes(content)
    with pytest.raises(MapReadError, match=message):
        mapio.read_map(path)


def test_truncated_map_is_refused(tmp_path):
    path = write_mrc(tmp_path / "m.mrc", smooth_volume((16, 16, 16)))
    full = len(path.read_bytes())  # 1024-byte header + 16³ float32
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(MapReadError, match=f"truncated: its header announces {full:,} bytes, "
                                           f"the file has {full - 1000:,}"):
        mapio.read_map(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(MapReadError, match="not found"):
        mapio.read_map(tmp_path / "absent.mrc")


def test_nan_map_is_refused(tmp_path):
    volume = smooth_volume((8, 8, 8))
    volume[3, 3, 3] = np.nan
    with pytest.raises(InvalidMapError, match="NaN"):
        mapio.read_map(write_mrc(tmp_path / "nan.mrc", volume))


def test_existing_output_is_kept_without_force(tmp_path):
    data, grid = mapio.read_map(write_mrc(tmp_path / "m.mrc", smooth_volume((8, 8, 8))))
    target = tmp_path / "out.mrc"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        mapio.write_map(target, data, grid)
    assert target.read_bytes() == b"precious"
    mapio.write_map(target, data, grid, force=True)
    assert np.array_equal(mapio.read_map(target)[0], data)


def test_failed_write_leaves_no_partial_and_keeps_the_old_file(tmp_path, monkeypatch):
    data, grid = mapio.read_map(write_mrc(tmp_path / "m.mrc", smooth_volume((8, 8, 8))))
    target = tmp_path / "out.mrc"
    target.write_bytes(b"precious")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mapio, "_write_file", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        mapio.write_map(target, data, grid, force=True)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mrc", "out.mrc"]


def test_missing_output_folder_is_refused(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        mapio.check_output_path(tmp_path / "nowhere" / "out.mrc")


def test_labels_stay_at_ten(tmp_path):
    data, grid = mapio.read_map(write_mrc(tmp_path / "m.mrc", smooth_volume((8, 8, 8))))
    full = mapio.GridInfo(**{**grid.__dict__, "labels": tuple(f"label {i}" for i in range(10))})
    _, again = mapio.read_map(mapio.write_map(tmp_path / "o.mrc", data, full))
    assert len(again.labels) == 10
    assert again.labels[:9] == full.labels[:9] and again.labels[9].startswith("cryosamu")


def test_memory_mapped_reading_hands_back_an_independent_copy(tmp_path):
    volume = smooth_volume((12, 10, 8))
    path = write_mrc(tmp_path / "m.mrc", volume)
    data, _ = mapio.read_map(path)
    assert data.flags.owndata and data.flags.writeable and data.dtype == np.float32
    path.unlink()  # the mapping is closed: the array lives on without the file
    assert np.allclose(data, volume)


def test_written_files_get_ordinary_permissions_and_keep_a_replaced_files(tmp_path):
    import os

    from cryosamu_cli.atomic import write_text_atomic

    old_umask = os.umask(0o022)
    try:
        new = write_text_atomic(tmp_path / "new.txt", "x")
        assert new.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        shared = tmp_path / "shared.txt"
        shared.write_text("old")
        shared.chmod(0o664)
        write_text_atomic(shared, "new")
        assert shared.stat().st_mode & 0o777 == 0o664 and shared.read_text() == "new"
    finally:
        os.umask(old_umask)
