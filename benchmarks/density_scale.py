"""Do the input's contour levels carry over to the enhanced map? Fraction of voxels above the
same threshold in the input and in the output, on each density scale.

    python benchmarks/density_scale.py                      # default model, ~5 min on 2 cores
    python benchmarks/density_scale.py --weights runs/v3/best.pt --maps emd-1997

For each real map (the pairs of ``../shared/data/pairs.csv`` with a resolution, and
emd_6824), thresholds are taken at the input levels enclosing 2 %, 5 % and 10 % of its voxels.
The map is enhanced once (``--resolution`` = its resolution) and written on both scales:
``input`` (the default: output scaled so its 99.9th percentile of positive density is the
input's) and ``normalised`` × s (the old advice: the network's scale times the ``s`` of the
label). Printed: the fraction of output voxels above each input threshold.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from cryosamu_cli import mapio
from cryosamu_cli.enhance import pipeline as enhance
from cryosamu_cli.enhance import predictor
from cryosamu_cli.data.pairs import read_pairs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ENCLOSED = (0.02, 0.05, 0.10)


def maps(shared: Path, names: list[str] | None) -> list[tuple[str, Path, float]]:
    """``(name, map, resolution)`` of the real maps to measure."""
    found = [(p.name, p.map_path, p.resolution_A) for p in read_pairs(shared / "pairs.csv")
             if p.resolution_A is not None and p.columns.get("role") != "io-only"]
    found.append(("emd_6824", shared / "unpaired" / "emd_6824.mrc", 5.8))
    return [m for m in found if names is None or m[0] in names]


def fractions_above(volume: np.ndarray, levels: list[float]) -> list[float]:
    """The fraction of ``volume``'s voxels above each level."""
    return [float(np.mean(volume > level)) for level in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--maps", nargs="*", default=None)
    args = parser.parse_args()
    enhancer = predictor.load_enhancer(weights=args.weights, device="cpu", precision="fp32")
    header = "".join(f"{f'{e:.0%} of input':>14}" for e in ENCLOSED)
    print(f"{'map':<18}{'scale':<14}{header}")
    with tempfile.TemporaryDirectory() as folder:
        for name, path, resolution in maps(args.shared, args.maps):
            data, _ = mapio.read_map(path)
            levels = [float(np.quantile(data, 1 - e)) for e in ENCLOSED]
            written = {}
            for scale in enhance.DENSITY_SCALES:
                result = enhance.enhance_map(input_path=path,
                                             output_path=Path(folder) / f"{name}-{scale}.mrc",
                                             resolution=resolution, density_scale=scale,
                                             enhancer=enhancer)
                written[scale] = mapio.read_map(result.output_path)[0]
                if scale == "normalised":
                    written[scale] = written[scale] * result.normalisation_scale
            for label, volume in (("input", data), ("output, input", written["input"]),
                                  ("output, norm×s", written["normalised"])):
                print(f"{name:<18}{label:<14}"
                      + "".join(f"{f:>14.1%}" for f in fractions_above(volume, levels)))


if __name__ == "__main__":
    main()
