"""Whether a map fits in memory: checked before any large array is made.

``enhance`` works on the map resampled to 1 Å: the map itself, its normalised 1 Å copy, the
zero-padded copy the cubes are cut from, the stitched output, the band limit's half spectrum and
the resampling back (by slabs, so the spline prefilter's float64 copies are a slab's) live
together at the peak. ``benchmarks/large_map_memory.py`` measured 23.4 bytes of peak RSS per
voxel of the 1 Å grid on a 400³ map with 1.1 Å voxels (41.3 when every step worked on the
whole map at once); :data:`BYTES_PER_1A_VOXEL` adds room for half maps, masks and ``--confidence``, and
:data:`FIXED_BYTES` is the network and its activations.
"""

from __future__ import annotations

import os

import numpy as np

from cryosamu_cli.errors import ResourceError
from cryosamu_cli.grid import NETWORK_VOXEL_SIZE_A, resampled_shape

BYTES_PER_1A_VOXEL = 32
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


def enhance_bytes(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...]) -> int:
    """About the peak memory of enhancing a map of this shape and voxel size."""
    voxels = int(np.prod(resampled_shape(shape_zyx, voxel_size_zyx), dtype=np.int64))
    return voxels * BYTES_PER_1A_VOXEL + FIXED_BYTES


def check_enhance_fits(shape_zyx: tuple[int, ...], voxel_size_zyx: tuple[float, ...],
                       available: int | None = None) -> None:
    """Refuse, in one line, a map whose 1 Å grid needs more memory than is available.

    Raises:
        ResourceError: It does not fit; the message names the grid, the memory and a way out.
    """
    available = available_bytes() if available is None else available
    needed = enhance_bytes(shape_zyx, voxel_size_zyx)
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
    raise ResourceError(f"the map's {NETWORK_VOXEL_SIZE_A:g} Å grid is {grid_1A} voxels: "
                        f"enhancing it needs about {needed / GIB:.1f} GiB, "
                        f"{available / GIB:.1f} GiB are available; {way_out}")
