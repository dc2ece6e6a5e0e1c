"""The numerical checks a lent GPU runs (issue 15, items 1–2), each printing its figures and
writing them as JSON; ``benchmarks/device_check.sh`` calls them.

``precision``: a paper-sized network (random weights: the same arithmetic as trained ones) on a
synthetic 128³ map at fp32, bf16 and fp16 through ``cryosamu enhance``'s own pipeline: every
output finite, and each reduced precision's correlation and largest difference (as a share of
the fp32 output's range) against fp32.

``agreement``: one real map enhanced with the shipped model at fp32 on the GPU and on the CPU:
the largest difference as a share of the CPU output's range (the goal: below 1e-3) and the
correlation.

    python benchmarks/device_checks.py precision --json precision.json
    python benchmarks/device_checks.py agreement MAP --json agreement.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import output_agreement, random_checkpoint  # noqa: E402


def enhanced(source: Path, output: Path, **options) -> tuple[np.ndarray | None, str, float]:
    """Enhance ``source`` into ``output``: (the map or None, the error if any, seconds)."""
    from cryosamu_cli import mapio
    from cryosamu_cli.enhance.pipeline import enhance_map
    from cryosamu_cli.errors import CryosamuError

    started = time.perf_counter()
    try:
        enhance_map(input_path=source, output_path=output, force=True, **options)
    except CryosamuError as exc:
        return None, str(exc), time.perf_counter() - started
    return mapio.read_map(output)[0], "", time.perf_counter() - started


def check_precision(device: str, edge: int, preset: str) -> dict:
    """Every precision on a ``preset``-sized random network, against fp32."""
    from cryosamu_cli.benchmark.timing import write_synthetic_map
    from cryosamu_cli.model.config import preset_config

    folder = Path(tempfile.mkdtemp())
    weights = random_checkpoint(folder / f"{preset}.pt", config=preset_config(preset))
    source = write_synthetic_map(folder, edge)
    results, reference = {}, None
    for precision in ("fp32", "bf16", "fp16"):
        data, error, seconds = enhanced(source, folder / f"{precision}.mrc", weights=weights,
                                        device=device, precision=precision, resolution=6.0)
        row = {"finite": data is not None and bool(np.isfinite(data).all()), "error": error,
               "seconds": round(seconds, 2)}
        if precision == "fp32":
            reference = data
        elif data is not None and reference is not None:
            row.update(output_agreement(data, reference))
        results[precision] = row
        print(f"{preset} {edge}³ {precision}: {row}", flush=True)
    return {"check": "precision", "device": device, "preset": preset, "edge": edge,
            "results": results}


def check_agreement(map_path: Path, device: str) -> dict:
    """The shipped model at fp32 on ``device`` against the CPU, on a real map."""
    folder = Path(tempfile.mkdtemp())
    on_device, error, device_seconds = enhanced(map_path, folder / "device.mrc", device=device,
                                                precision="fp32")
    on_cpu, cpu_error, cpu_seconds = enhanced(map_path, folder / "cpu.mrc", device="cpu",
                                              precision="fp32")
    if on_device is None or on_cpu is None:
        raise SystemExit(f"enhance failed: {error or cpu_error}")
    result = {"check": "agreement", "map": str(map_path), "device": device,
              "device_seconds": round(device_seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
              **output_agreement(on_device, on_cpu)}
    result["within_1e-3_of_range"] = result["max_difference_over_range"] < 1e-3
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["precision", "agreement"])
    parser.add_argument("map", nargs="?", type=Path, help="the real map (agreement)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--edge", type=int, default=128)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.check == "precision":
        result = check_precision(args.device, args.edge, args.preset)
    else:
        if args.map is None:
            parser.error("agreement needs a MAP")
        result = check_agreement(args.map, args.device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
