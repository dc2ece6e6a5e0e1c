"""Whether a map fits in memory: checked before any large array is made.

``enhance`` works on the map resampled to 1 Å: the map itself, its normalised 1 Å copy, the
zero-padded copy the cubes are cut from, the stitched output, the band limit's half spectrum and
the resampling back (by slabs, so the spline prefilter's float64 copies are a slab's) live
together at the peak. ``benchmarks/large_map_memory.py`` measured 23.4 bytes of peak RSS per
voxel of the 1 Å grid on a 400³ map with 1.1 Å voxels (41.3 when every step worked on the
whole map at once); :data:`BYTES_PER_1A_VOXEL` adds room for half maps, masks and ``--confidence``, and
:data:`FIXED_BYTES` is the network and its activations.

The local band limit (``enhance``'s default) blends copies of the output band-limited at a
ladder of resolutions: the same benchmark's ``local`` run (noise in the solvent, so the ladder
runs) measured 44.2 bytes per 1 Å voxel, 19 more than the global band's 25.2;
:data:`LOCAL_BAND_BYTES_PER_1A_VOXEL` counts 24. The arrays on the input's own grid that live
through the run (the map, its local resolution) are counted by
:data:`BYTES_PER_INPUT_VOXEL`: they outgrow the 1 Å grid when the voxels are finer than 1 Å.
"""

from __future__ import annotations

import os

import numpy as np

from cryosamu_cli.errors import ResourceError
from cryosamu_cli.grid import NETWORK_VOXEL_SIZE_A, resampled_shape

BYTES_PER_1A_VOXEL = 32
LOCAL_BAND_BYTES_PER_1A_VOXEL = 24
BYTES_PER_INPUT_VOXEL = 8
FIXED_BYTES = 1 << 30
# Voxels coarser than this cannot hold a 4-8 Å map (Nyquist is twice the voxel).
COARSEST_USEFUL_VOXEL_A = 4.0
GIB = float(1 << 30)


def available_bytes() -> int | None:
    """Memory the system can give without swapping (``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def enhance_bytes(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                  local_band: bool = False) -> int:
    """About the peak memory of enhancing a map of this shape and voxel size (with the local
    band limit when ``local_band``)."""
    voxels = int(np.prod(resampled_shape(shape_zyx, voxel_size_zyx), dtype=np.int64))
    per_voxel = BYTES_PER_1A_VOXEL + (LOCAL_BAND_BYTES_PER_1A_VOXEL if local_band else 0)
    input_voxels = int(np.prod(shape_zyx, dtype=np.int64))
    return voxels * per_voxel + input_voxels * BYTES_PER_INPUT_VOXEL + FIXED_BYTES


def check_enhance_fits(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                       available: int | None = None, local_band: bool = False) -> None:
    """Refuse, in one line, a map whose 1 Å grid needs more memory than is available.

    Raises:
        ResourceError: It does not fit; the message names the grid, the memory and a way out.
    """
    available = available_bytes() if available is None else available
    needed = enhance_bytes(shape_zyx, voxel_size_zyx, local_band)
    if available is None or needed <= available:
        return
    grid_1A = "×".join(str(n) for n in resampled_shape(shape_zyx, voxel_size_zyx)[::-1])
    coarsest = max(voxel_size_zyx)
    if coarsest > COARSEST_USEFUL_VOXEL_A:
        way_out = (f"its {coarsest:g} Å voxels cannot hold a 4-8 Å map anyway (Nyquist "
                   f"{2 * coarsest:g} Å); give a map sampled at {COARSEST_USEFUL_VOXEL_A:g} Å "
                   "or finer")
    else:
        way_out = "crop the map to the region of interest, or run on a machine with more memory"
        one_band = enhance_bytes(shape_zyx, voxel_size_zyx)
        if local_band and one_band <= available:
            way_out = (f"give --band-limit global (one band limit: about {one_band / GIB:.1f} "
                       "GiB), " + way_out)
    raise ResourceError(f"the map's {NETWORK_VOXEL_SIZE_A:g} Å grid is {grid_1A} voxels: "
                        f"enhancing it needs about {needed / GIB:.1f} GiB, "
                        f"{available / GIB:.1f} GiB are available; {way_out}")
