"""Start-up to first cube of a single `cryosamu enhance`, and the cost of --confidence N.

    python benchmarks/enhance_features.py                   # paper-sized random network
    python benchmarks/enhance_features.py --base-channels 16 --passes 0,2,4,8

Start-up runs the real command in a fresh process on the bundled example map and timestamps its
output: the time to the line announcing the cube count and estimate, printed once the first
cube is done. The confidence cost runs the same map in-process with 0 (plain) and N passes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_checkpoint  # noqa: E402


def time_command(argv: list[str], marker: str | None = None) -> tuple[float, float | None]:
    """Wall time of a command, and the time at which a line containing ``marker`` appeared."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    for line in process.stdout:
        if marker and seen is None and marker in line:
            seen = time.perf_counter() - started
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(argv)} failed")
    return time.perf_counter() - started, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--passes", default="0,2,4")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    from cryosamu_cli.enhance.pipeline import enhance_map
    from cryosamu_cli.examples import write_example_map

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = random_checkpoint(tmp / "w.pt", args.base_channels)
        source = write_example_map(tmp / "example.mrc")
        cli = [sys.executable, "-m", "cryosamu_cli.cli.app"]
        help_s, _ = time_command([*cli, "--help"])
        total_s, first_s = time_command([*cli, "enhance", str(source), "-o", str(tmp / "o.mrc"),
                                         "--weights", str(weights), "--device", args.device],
                                        marker="cubes to run")
        print(f"cryosamu --help: {help_s:.2f} s")
        print(f"cryosamu enhance (example map, 8 cubes): first cube done after {first_s:.2f} s, "
              f"total {total_s:.2f} s")
        print(f"{'passes':>7} {'seconds':>8} {'x plain':>8}")
        plain = None
        for passes in (int(p) for p in args.passes.split(",")):
            result = enhance_map(input_path=source, output_path=tmp / f"c{passes}.mrc",
                                 weights=weights, device=args.device, confidence=passes)
            plain = plain or result.seconds
            print(f"{passes:>7} {result.seconds:>8.2f} {result.seconds / plain:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
