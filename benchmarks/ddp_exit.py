"""Does a two-rank CPU training run (torchrun, gloo) exit cleanly? Counts the runs that end
with a non-zero exit after training, the way CI's ``test_two_ranks_agree_on_a_time_budget``
runs them.

Why it exists: with torch 2.13 a gloo worker thread that frees the tensors of a collective
must take the GIL, and when the process is already shutting down it aborts instead
(SIGABRT, "terminate called without an active exception"). A run whose last exchange was a
gloo collective failed like this now and then (CI, 2026-12-01); ``training.distributed.gather``
now exchanges through the rendezvous store. Rerun this after a torch upgrade.

    python benchmarks/ddp_exit.py --runs 20          # ~20 s a run on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from cryosamu_cli.data import dataset


def tiny_data(folder: Path, edge: int = 48) -> Path:
    """A ``prepare-data`` folder of blurred blobs: two training pairs, one validation pair."""
    rng = np.random.default_rng(0)
    (folder / "shards").mkdir(parents=True)
    entries = []
    for index, split in enumerate(("train", "train", "val")):
        target = ndimage.gaussian_filter(rng.random((edge,) * 3).astype(np.float32) ** 8, 1.5)
        source = ndimage.gaussian_filter(target, 3.0)
        cubes = np.stack([source, target])[None].astype(np.float16)
        dataset.write_shard(folder / "shards" / f"pair{index}.npy", cubes)
        entries.append({"name": f"pair{index}", "split": split, "status": "ok", "cubes": 1,
                        "shard": f"shards/pair{index}.npy"})
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "pairs": entries}))
    return folder


def two_rank_run(data: Path, run: Path) -> subprocess.CompletedProcess:
    """One short two-rank ``cryosamu train`` under torchrun."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "cryosamu_cli.cli.app", "train", str(data),
               "-o", str(run), "--time-budget", "0.05", "--batch-size", "1",
               "--base-channels", "8", "--no-struct", "--precision", "fp32", "--no-augment",
               "--crop-size", "32"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = tiny_data(Path(scratch) / "data")
        failed = 0
        for number in range(args.runs):
            done = two_rank_run(data, Path(scratch) / f"run{number}")
            aborted = "terminate called" in done.stderr
            failed += done.returncode != 0
            print(f"run {number + 1}: exit {done.returncode}"
                  f"{' (abort at exit)' if aborted else ''}", file=sys.stderr, flush=True)
    print(f"two-rank runs that failed: {failed} of {args.runs}")


if __name__ == "__main__":
    main()
