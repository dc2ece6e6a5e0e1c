"""Enhance speed and memory on synthetic maps: seconds per cube, cubes/s, skipped cubes, peak RSS.

Each map size runs in its own process so that peak RSS belongs to that size alone.

    python benchmarks/enhance_speed.py                      # 128³ and 256³, paper-sized model
    python benchmarks/enhance_speed.py --sizes 128 --base-channels 16 --device cpu
    python benchmarks/enhance_speed.py --weights my.pt --batch-size 8 --device cuda:0

Without ``--weights`` a randomly initialised network of the requested size is timed (the
arithmetic is the same as a trained one's). The synthetic map is smooth density inside a sphere
of 0.4 × the box edge with zeros outside (like a masked map), at 1 Å/voxel.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_checkpoint  # noqa: E402


def synthetic_map(edge: int, seed: int = 0) -> np.ndarray:
    """Smooth positive density inside a centred sphere, zero outside."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.standard_normal((edge,) * 3).astype(np.float32), 2.0)
    z, y, x = np.ogrid[:edge, :edge, :edge]
    centre = (edge - 1) / 2
    inside = (z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 < (0.4 * edge) ** 2
    return np.where(inside, volume, 0.0).astype(np.float32)


def run_one(args: argparse.Namespace) -> dict:
    """Enhance one synthetic map in this process and return its figures."""
    from cryosamu_cli.enhance import enhance_map
    from cryosamu_cli.mapio import GridInfo, write_map

    edge = args.single
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        grid = GridInfo((edge,) * 3, (1.0,) * 3, (0.0,) * 3, (0, 0, 0), (float(edge),) * 3,
                        (90.0,) * 3, (edge,) * 3, (1, 2, 3), 1)
        source = write_map(tmp / "in.mrc", synthetic_map(edge), grid)
        weights = args.weights or random_checkpoint(tmp / "random.pt", args.base_channels)
        started = time.perf_counter()
        result = enhance_map(input_path=source, output_path=tmp / "out.mrc", weights=weights,
                             device=args.device, batch_size=args.batch_size, threads=args.threads)
        seconds = time.perf_counter() - started
    return {"edge": edge, "device": result.device, "batch_size": args.batch_size,
            "cubes_total": result.cubes_total, "cubes_run": result.cubes_run,
            "cubes_skipped": result.cubes_skipped, "seconds": round(seconds, 2),
            "seconds_per_cube": round(seconds / max(result.cubes_run, 1), 3),
            "cubes_per_s": round(result.cubes_run / seconds, 3),
            "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "map_MiB": round(edge ** 3 * 4 / 2 ** 20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256", help="Map edges in voxels, comma-separated.")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(run_one(args)))
        return
    passthrough = ["--base-channels", str(args.base_channels), "--device", args.device,
                   "--batch-size", str(args.batch_size)]
    passthrough += ["--weights", args.weights] if args.weights else []
    passthrough += ["--threads", str(args.threads)] if args.threads else []
    print(f"{'edge':>5} {'device':>7} {'cubes':>6} {'run':>5} {'skip':>5} {'s/cube':>8} "
          f"{'cubes/s':>8} {'total s':>8} {'map MiB':>8} {'peak RSS MiB':>13}")
    for edge in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, *passthrough, "--single", str(edge)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['edge']:>5} {r['device']:>7} {r['cubes_total']:>6} {r['cubes_run']:>5} "
              f"{r['cubes_skipped']:>5} {r['seconds_per_cube']:>8} {r['cubes_per_s']:>8} "
              f"{r['seconds']:>8} {r['map_MiB']:>8} {r['peak_rss_MiB']:>13}", flush=True)


if __name__ == "__main__":
    main()
