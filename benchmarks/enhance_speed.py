"""Enhance speed: the plain fp32 path against the optimised default, on the same maps.

For each map size (default 128³ and 256³, synthetic, 1 Å/voxel) two runs, each in its own
process so that peak RSS belongs to it alone:

* ``plain``: fp32, batch of 1, contiguous (NCDHW) layout, every cube run (no skipping);
* ``optimised``: what ``cryosamu enhance`` does by default (``--precision auto``,
  ``--batch-size auto``, channels-last 3D, cubes without density skipped);
* ``optimised-bf16`` (and the like), with ``--precisions``: the same with a forced precision.

Printed per run: cubes run/skipped, seconds per cube run, end-to-end seconds, the network's
achieved GFLOP/s (torch's FLOP count of one cube × cubes run / network seconds), peak RSS; per
size and path: the end-to-end speed-up and the output's max absolute difference and
correlation with the plain fp32 output. Once per run of the script: this machine's fp32 and
bf16 matmul rates (4096², best of 3), measured in the same run, and their ratio.

    python benchmarks/enhance_speed.py                     # shipped model, 128³ and 256³
    python benchmarks/enhance_speed.py --sizes 128 --random paper   # a random paper-sized net
    python benchmarks/enhance_speed.py --weights my.pt --device cuda:0
    python benchmarks/enhance_speed.py --sizes 128 --repeats 3    # medians of 3 alternating runs
    python benchmarks/enhance_speed.py --sizes 128 --precisions bf16   # + forced bf16 autocast

The synthetic map is smooth density inside a sphere of 0.4 × the box edge with zeros outside
(like a masked map).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import matrix_tflops, output_agreement, random_checkpoint  # noqa: E402

PATHS = ("plain", "optimised")


def synthetic_map(edge: int, seed: int = 0) -> np.ndarray:
    """Smooth positive density inside a centred sphere, zero outside."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.standard_normal((edge,) * 3).astype(np.float32), 2.0)
    z, y, x = np.ogrid[:edge, :edge, :edge]
    centre = (edge - 1) / 2
    inside = (z - centre) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 < (0.4 * edge) ** 2
    return np.where(inside, volume, 0.0).astype(np.float32)


def matmul_gflops(dtype_name: str, size: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` rate of a ``size``² matrix product in this dtype on the CPU, in
    GFLOP/s."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    return 1000 * matrix_tflops(torch.device("cpu"), dtype, size, repeats)


def plain_enhancer(weights: Path, device: str):
    """The straightforward path: fp32, batch 1, NCDHW layout, no cube skipped."""
    from cryosamu_cli.device import resolve_device
    from cryosamu_cli.enhance.predictor import Enhancer
    from cryosamu_cli.weights import load_model

    torch_device = resolve_device(device)
    model = load_model(weights).to(torch_device)
    return Enhancer(model, torch_device, weights, batch_size=1, skip_threshold=-1.0,
                    precision=None)


def run_one(args: argparse.Namespace) -> dict:
    """Enhance the synthetic map along one path, in this process; write the output map."""
    from cryosamu_cli.benchmark.timing import flops_per_cube, peak_rss_MiB, reset_peak_memory
    from cryosamu_cli.enhance.pipeline import enhance_map
    from cryosamu_cli.enhance.predictor import load_enhancer
    from cryosamu_cli.mapio import GridInfo, write_map

    edge, folder = args.single, Path(args.folder)
    grid = GridInfo((edge,) * 3, (1.0,) * 3, (0.0,) * 3, (0, 0, 0), (float(edge),) * 3,
                    (90.0,) * 3, (edge,) * 3, (1, 2, 3), 1)
    source = folder / f"in_{edge}.mrc"
    if not source.exists():
        write_map(source, synthetic_map(edge), grid)
    if args.path == "plain":
        enhancer = plain_enhancer(Path(args.weights), args.device)
    else:
        precision = args.path.partition("-")[2] or "auto"
        enhancer = load_enhancer(weights=args.weights, device=args.device, precision=precision)
    gflop = flops_per_cube(enhancer.model, enhancer.cube_size, enhancer.device) / 1e9
    reset_peak_memory(enhancer.device)
    started = time.perf_counter()
    result = enhance_map(input_path=source, output_path=folder / f"{args.path}_{edge}.mrc",
                         force=True, enhancer=enhancer)
    seconds = time.perf_counter() - started
    network = result.stage_seconds.get("network", seconds)
    return {"path": args.path, "edge": edge, "device": result.device,
            "precision": enhancer.precision_name, "batch_size": enhancer.batch_size,
            "cubes_run": result.cubes_run, "cubes_skipped": result.cubes_skipped,
            "seconds": round(seconds, 2), "seconds_per_cube": round(network / result.cubes_run, 3),
            "gflop_per_cube": round(gflop, 1),
            "achieved_gflops": round(gflop * result.cubes_run / network, 1),
            "peak_rss_MiB": round(peak_rss_MiB(), 1), "map_MiB": round(edge ** 3 * 4 / 2 ** 20, 1)}


def compare_outputs(folder: Path, edge: int, path: str) -> tuple[float, float]:
    """Max |path − plain| (relative to the plain map's range) and their correlation."""
    from cryosamu_cli.mapio import read_map

    plain = read_map(folder / f"plain_{edge}.mrc")[0]
    agreement = output_agreement(read_map(folder / f"{path}_{edge}.mrc")[0], plain)
    return agreement["max_difference_over_range"], agreement["correlation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256", help="Map edges in voxels, comma-separated.")
    parser.add_argument("--weights", default=None, help="Checkpoint (default: the shipped model).")
    parser.add_argument("--random", default=None, choices=["paper", "light"],
                        help="Time a randomly initialised network of this preset instead.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1,
                        help="Runs of each path per size, alternating; the median is reported.")
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precisions", default="",
                        help="Also run the optimised path with these forced precisions "
                             "(comma-separated: bf16, fp16, fp32), each compared with plain fp32.")
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(run_one(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = _weights(args, folder)
        print(f"weights: {weights}")
        rates = {name: matmul_gflops(name) for name in ("fp32", "bf16")}
        print(f"matmul 4096²: fp32 {rates['fp32']:.1f} GFLOP/s, bf16 {rates['bf16']:.1f} "
              f"GFLOP/s, bf16/fp32 {rates['bf16'] / rates['fp32']:.2f}")
        print(f"{'edge':>5} {'path':>15} {'prec':>5} {'batch':>5} {'run':>4} {'skip':>4} "
              f"{'s/cube':>7} {'total s':>8} {'GFLOP/s':>8} {'%fp32mm':>7} {'%bf16mm':>7} "
              f"{'RSS MiB':>8} {'map MiB':>7}")
        paths = PATHS + tuple(f"optimised-{p}" for p in args.precisions.split(",") if p)
        for edge in (int(s) for s in args.sizes.split(",")):
            runs = _median_runs(edge, weights, args, folder, paths)
            for r in runs.values():
                print(f"{r['edge']:>5} {r['path']:>15} {r['precision']:>5} {r['batch_size']:>5} "
                      f"{r['cubes_run']:>4} {r['cubes_skipped']:>4} {r['seconds_per_cube']:>7} "
                      f"{r['seconds']:>8} {r['achieved_gflops']:>8} "
                      f"{100 * r['achieved_gflops'] / rates['fp32']:>6.0f}% "
                      f"{100 * r['achieved_gflops'] / rates['bf16']:>6.0f}% "
                      f"{r['peak_rss_MiB']:>8} {r['map_MiB']:>7}", flush=True)
            if args.repeats > 1:
                print(f"{edge:>5} end-to-end seconds of every run: " + ", ".join(
                    f"{path} {r['all_seconds']}" for path, r in runs.items()))
            for path in paths[1:]:
                max_abs, correlation = compare_outputs(folder, edge, path)
                speedup = runs["plain"]["seconds"] / runs[path]["seconds"]
                print(f"{edge:>5} {path} vs plain: {speedup:.2f}× faster end to end; output "
                      f"correlation {correlation:.6f}, max |difference| {max_abs:.2e} of the "
                      "range", flush=True)


def _weights(args: argparse.Namespace, folder: Path) -> str:
    """The checkpoint to time: ``--weights``, a random network, or the shipped default."""
    if args.weights:
        return args.weights
    if args.random:
        from cryosamu_cli.model.config import preset_config

        return str(random_checkpoint(folder / "random.pt", config=preset_config(args.random)))
    from cryosamu_cli.weights import resolve_weights

    return str(resolve_weights())


def _median_runs(edge: int, weights: str, args: argparse.Namespace, folder: Path,
                 paths: tuple[str, ...]) -> dict:
    """Each path ``--repeats`` times, alternating (so all see the same machine load); per
    path, the run with the median end-to-end time, and the spread of the times."""
    runs: dict[str, list[dict]] = {path: [] for path in paths}
    for _ in range(args.repeats):
        for path in paths:
            runs[path].append(_run_path(path, edge, weights, args.device, folder))
    chosen = {}
    for path, results in runs.items():
        results.sort(key=lambda r: r["seconds"])
        chosen[path] = {**results[len(results) // 2],
                        "all_seconds": [r["seconds"] for r in results]}
    return chosen


def _run_path(path: str, edge: int, weights: str, device: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--single", str(edge), "--path", path,
                          "--folder", str(folder), "--weights", weights, "--device", device],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{path} run of {edge}³ failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
