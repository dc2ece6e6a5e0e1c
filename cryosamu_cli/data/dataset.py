"""The training data on disk and its reader: cube shards and ``CubePairDataset``.

Layout of a ``prepare-data`` folder (written by :mod:`cryosamu_cli.data.prepare`)::

    OUT/manifest.json          every pair: status, split, cubes, grid, normalisation, filters…
    OUT/shards/<name>.npy      float16 array (n_cubes, 2, 64, 64, 64): [input, target]
    OUT/embeddings/<name>.npy  float16 (800, d): the pair's pooled structure embedding, made by
                               the encoder named in the manifest's ``struct_encoder``

Both volumes of a pair are zero-padded by 64 voxels and cut into non-overlapping 64³ cubes;
cubes whose target holds no density (max < 0.05) are dropped. The torch ``Dataset`` reads them
back by random access (§3.1–3.2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cryosamu_cli.atomic import atomic_target
from cryosamu_cli.errors import ConfigError

MANIFEST_FORMAT = 1
CUBE_SIZE = 64
PADDING = 64
MIN_TARGET_DENSITY = 0.05
SPLITS = ("train", "val", "test")


def cut_cube_pairs(source: np.ndarray, target: np.ndarray, cube_size: int = CUBE_SIZE,
                   padding: int = PADDING) -> np.ndarray:
    """Zero-pad both volumes by ``padding`` and cut non-overlapping cubes; keep the cubes whose
    target holds density. Returns ``(n, 2, c, c, c)`` float16 (input, target)."""
    padded = [np.pad(v, [(padding, padding + (-(n + 2 * padding)) % cube_size)
                         for n in v.shape]) for v in (source, target)]
    counts = [n // cube_size for n in padded[0].shape]
    kept = []
    for index in np.ndindex(*counts):
        window = tuple(slice(i * cube_size, (i + 1) * cube_size) for i in index)
        if padded[1][window].max() >= MIN_TARGET_DENSITY:
            kept.append(np.stack([padded[0][window], padded[1][window]]))
    shape = (len(kept), 2) + (cube_size,) * 3
    return np.array(kept, dtype=np.float16).reshape(shape)


def write_shard(path: Path, cubes: np.ndarray) -> Path:
    """Write a shard ``.npy`` atomically."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, cubes)
    return path


class CubePairDataset:
    """Random access to the cube pairs of a ``prepare-data`` folder, one split at a time.

    Shards are memory-mapped: nothing is loaded until a cube is asked for. ``dataset[i]`` is
    ``(input, target)``, each a float32 tensor ``(1, c, c, c)``; with ``with_struct`` it is
    ``(input, target, embedding)`` with the pair's ``L × struct_dim`` embedding (zeros when the
    pair has none). ``struct_dim`` is the width of the folder's embeddings (None: it has none).
    """

    def __init__(self, data_dir: str | os.PathLike, split: str = "train",
                 with_struct: bool = False) -> None:
        self.data_dir = Path(data_dir)
        manifest_path = self.data_dir / "manifest.json"
        if not manifest_path.is_file():
            raise ConfigError(f"{self.data_dir} has no manifest.json (run cryosamu prepare-data)")
        manifest = json.loads(manifest_path.read_text())
        self.cube_size = int(manifest.get("cube_size", CUBE_SIZE))
        entries = [e for e in manifest["pairs"]
                   if e.get("status") == "ok" and e.get("split") == split and e["cubes"]]
        self.names = [e["name"] for e in entries]
        self.with_struct = with_struct
        self._embeddings = [e.get("embedding") for e in entries]
        self.struct_encoder, self.struct_dim = _struct_encoder(manifest)
        self._shards = [np.load(self.data_dir / e["shard"], mmap_mode="r") for e in entries]
        self._index = [(s, c) for s, shard in enumerate(self._shards) for c in range(len(shard))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: int):
        import torch

        shard, cube = self._index[item]
        pair = np.asarray(self._shards[shard][cube], dtype=np.float32)
        tensors = (torch.from_numpy(pair[0:1].copy()), torch.from_numpy(pair[1:2].copy()))
        if not self.with_struct:
            return tensors
        return (*tensors, self.embedding(shard))

    @property
    def pair_count(self) -> int:
        """How many pairs the split's cubes come from."""
        return len(self._shards)

    def pair_cubes(self, pair: int) -> np.ndarray:
        """Pair ``pair``'s cubes, ``(n, 2, c, c, c)`` float16 (memory-mapped)."""
        return self._shards[pair]

    def pair_of_items(self) -> list[int]:
        """For each item, the index of the pair it comes from (in :meth:`pair_cubes` order)."""
        return [pair for pair, _ in self._index]

    def embedding(self, pair: int):
        """Pair ``pair``'s ``L × struct_dim`` float32 embedding tensor (zeros without one)."""
        import torch

        from cryosamu_cli.data.embed import EMBEDDING_LENGTH

        relative = self._embeddings[pair]
        if relative is None:
            return torch.zeros(EMBEDDING_LENGTH, self.struct_dim or 0)
        return torch.from_numpy(np.load(self.data_dir / relative).astype(np.float32))


def _struct_encoder(manifest: dict) -> tuple[str | None, int | None]:
    """Name and width of the folder's structure embeddings; folders written before the encoder
    was recorded hold ESM-IF1's; (None, None) when no pair has an embedding."""
    from cryosamu_cli.data.embed import ESM_IF1_DIM

    recorded = manifest.get("struct_encoder")
    if recorded:
        return recorded["name"], int(recorded["dim"])
    if any(e.get("embedding") for e in manifest["pairs"]):
        return "esm-if1", ESM_IF1_DIM
    return None, None
