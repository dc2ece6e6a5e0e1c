"""fp32 against bf16 on this CPU: seconds and map quality of ``enhance`` on every real map of a
pairs CSV that has a model and a resolution.

Each map is enhanced as a user runs it (``cryosamu enhance MAP -o OUT --resolution R``, the
default model) once per precision, in a fresh process (the timing includes start-up, as a
user sees it), and scored by cctbx's map_model_cc (``--backend native`` for our own
implementation). Prints the table of ``docs/performance.md``, "CPU precision".

    python benchmarks/cpu_precision.py ../shared/data/pairs.csv              # ~10 min, 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryosamu_cli.benchmark.quality import score_map
from cryosamu_cli.data.pairs import read_pairs
from cryosamu_cli.device import native_bf16_feature
from cryosamu_cli.errors import CryosamuError

PRECISIONS = ("fp32", "bf16")


def enhanced_seconds(map_path: Path, out: Path, resolution_A: float, precision: str) -> float:
    """Wall-clock seconds of one ``cryosamu enhance`` process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cryosamu_cli.cli.app", "enhance", str(map_path),
                    "-o", str(out), "--resolution", str(resolution_A), "--precision", precision,
                    "--force", "-q"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs_csv")
    parser.add_argument("--backend", default="cctbx", choices=("cctbx", "native"))
    args = parser.parse_args()
    print(f"native bf16 on this CPU: {native_bf16_feature() or 'none'}")
    print("| map | R | fp32 s | bf16 s | bf16/fp32 | fp32 CC_box / CC_mask | "
          "bf16 CC_box / CC_mask |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for pair in read_pairs(args.pairs_csv):
            if pair.resolution_A is None or "io-only" in (pair.columns.get("role"), pair.split):
                continue
            seconds, scores = {}, {}
            for precision in PRECISIONS:
                out = Path(tmp) / f"{pair.name}_{precision}.mrc"
                seconds[precision] = enhanced_seconds(pair.map_path, out, pair.resolution_A,
                                                      precision)
                try:
                    scores[precision] = score_map(out, pair.model_path, pair.resolution_A,
                                                  args.backend)
                except CryosamuError as exc:  # e.g. cctbx's table lacks an atom type
                    scores[precision] = {"note": str(exc)[:60]}
            cells = [f"{scores[p]['cc_box']:.3f} / {scores[p]['cc_mask']:.3f}"
                     if "note" not in scores[p] else scores[p]["note"] for p in PRECISIONS]
            print(f"| {pair.name} | {pair.resolution_A:g} | {seconds['fp32']:.1f} | "
                  f"{seconds['bf16']:.1f} | {seconds['bf16'] / seconds['fp32']:.2f} | "
                  f"{cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
