"""Gather what ``benchmarks/device_check.sh`` needs on a GPU machine into a folder of the
checkout that git ignores (default ``.device-payload/``), since ``../shared`` does not travel
and at most 64 MiB does.

* ``wheels/``: the packages the GPU machine's image lacks (mrcfile, gemmi, platformdirs), for
  CPython 3.12 on x86-64 Linux, downloaded here with pip;
* ``data/pairs.csv`` and ``data/pairs/``: the real map–model pairs of a pairs CSV (default
  ``training/pairs-v2.csv``; ``eval`` rows are refused), gzipped, with the CSV pointing at them;
* ``data/structures*/``: the structures to simulate from, gzipped;
* ``data/noise_reference.mrc.gz``: the map whose noise spectrum simulation follows.

    python benchmarks/device_payload.py                  # then: du -sh .device-payload
    python benchmarks/device_payload.py --no-wheels      # data only (no package registry)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LIMIT_BYTES = 60 * 2 ** 20  # the working tree travels up to 64 MiB; leave room for the code
WHEELS = ("mrcfile==1.5.4", "gemmi==0.7.5", "platformdirs==4.14.8")  # as tested here
PIP_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                *[arg for n in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                  for arg in ("--platform", n)]]


def gzipped_copy(source: Path, target_folder: Path) -> Path:
    """``source`` in ``target_folder``, gzipped unless it already is; returns the copy."""
    target_folder.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".gz":
        return Path(shutil.copy2(source, target_folder / source.name))
    target = target_folder / (source.name + ".gz")
    with open(source, "rb") as raw, gzip.open(target, "wb", compresslevel=9) as packed:
        shutil.copyfileobj(raw, packed)
    return target


def copy_pairs(pairs_csv: Path, data: Path) -> int:
    """The CSV's pairs, gzipped under ``data/pairs/<name>/``, and ``data/pairs.csv`` naming
    them; returns how many."""
    with open(pairs_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if "eval" in (row.get("role"), row.get("split")):
            raise SystemExit(f"{row['name']} is an eval pair: it never goes into training")
        folder = data / "pairs" / row["name"]
        for column in ("map", "model"):
            copied = gzipped_copy((pairs_csv.parent / row[column]).resolve(), folder)
            row[column] = str(copied.relative_to(data))
    with open(data / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def copy_structures(shared: Path, data: Path) -> int:
    """``structures`` and ``structures-bm5``, gzipped; returns how many files."""
    count = 0
    for name in ("structures", "structures-bm5"):
        for path in sorted((shared / name).iterdir()):
            if path.is_file() and path.suffix in (".pdb", ".cif", ".gz", ".ent"):
                gzipped_copy(path, data / name)
                count += 1
    return count


def download_wheels(folder: Path) -> None:
    """The wheels the GPU image lacks, for its Python (3.12, x86-64 Linux)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *PIP_PLATFORM,
                    "-d", str(folder), *WHEELS], check=True)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".device-payload")
    parser.add_argument("--pairs", type=Path, default=REPO / "training" / "pairs-v2.csv")
    parser.add_argument("--shared", type=Path, default=SHARED_DATA)
    parser.add_argument("--noise-reference", type=Path,
                        default=SHARED_DATA / "unpaired" / "emd_6824.mrc")
    parser.add_argument("--no-wheels", dest="wheels", action="store_false")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    data = args.out / "data"
    pairs = copy_pairs(args.pairs, data)
    structures = copy_structures(args.shared, data)
    reference = gzipped_copy(args.noise_reference, data)
    reference.rename(data / "noise_reference.mrc.gz")
    if args.wheels:
        download_wheels(args.out / "wheels")
    size = folder_bytes(args.out)
    print(f"{args.out}: {pairs} pairs, {structures} structures, "
          f"{size / 2 ** 20:.1f} MiB (limit {LIMIT_BYTES / 2 ** 20:.0f})")
    if size > LIMIT_BYTES:
        raise SystemExit("too large to travel with the checkout: take fewer pairs")


if __name__ == "__main__":
    main()
