"""Where training batches come from: the split's cubes held on the GPU when they fit, else a
``DataLoader`` (workers and pinned memory on CUDA; the plain loader on a CPU).

Both are iterables of batches ``(input, target[, embedding])`` with ``len`` (batches per
epoch) and ``set_epoch`` (a new shuffle per epoch, the same on every rank).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from cryosamu_cli.data.dataset import CubePairDataset

# The share of the GPU's free memory the training cubes may take (the rest is for the network).
DEVICE_CUBES_FRACTION = 0.4
MAX_LOADER_WORKERS = 8


def training_batches(dataset: CubePairDataset, *, batch_size: int, seed: int, rank: int,
                     world: int, device: torch.device):
    """The batches of one process: :class:`DeviceCubes` on CUDA when the cubes fit in
    ``DEVICE_CUBES_FRACTION`` of the free memory, else :class:`LoaderBatches`."""
    if device.type == "cuda" and _fits_on_device(dataset, device):
        return DeviceCubes(dataset, batch_size=batch_size, seed=seed, rank=rank, world=world,
                           device=device)
    return LoaderBatches(dataset, batch_size=batch_size, seed=seed, rank=rank, world=world,
                         device=device)


def _fits_on_device(dataset: CubePairDataset, device: torch.device) -> bool:
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return DeviceCubes.bytes_needed(dataset) <= DEVICE_CUBES_FRACTION * free_bytes


class LoaderBatches:
    """Shuffled batches from a ``DataLoader``; each rank sees its own shard of the data
    (``DistributedSampler``). On CUDA, worker processes read the shards into pinned memory."""

    def __init__(self, dataset: CubePairDataset, *, batch_size: int, seed: int, rank: int,
                 world: int, device: torch.device) -> None:
        from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

        generator = torch.Generator().manual_seed(seed)
        self.sampler = (DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                           seed=seed) if world > 1
                        else RandomSampler(dataset, generator=generator))
        workers = min(MAX_LOADER_WORKERS, os.cpu_count() or 1) if device.type == "cuda" else 0
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                 drop_last=False, num_workers=workers,
                                 pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the distributed sampler's shard)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class DeviceCubes:
    """Every cube pair of a split held on ``device`` as float16 (the shards' own precision),
    with the pairs' structure embeddings; a batch is gathered on the device by index, so no
    cube crosses from the host during training."""

    def __init__(self, dataset: CubePairDataset, *, batch_size: int, seed: int, rank: int,
                 world: int, device: torch.device) -> None:
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.device = device
        self.with_struct = dataset.with_struct
        pairs = range(dataset.pair_count)
        self.cubes = torch.cat([torch.from_numpy(np.array(dataset.pair_cubes(pair),
                                                            dtype=np.float16)).to(device)
                                for pair in pairs])
        self.pair_of_cube = torch.tensor(dataset.pair_of_items(), device=device)
        self.embeddings = (torch.stack([dataset.embedding(pair) for pair in pairs]).to(device)
                           if self.with_struct else None)
        self.epoch = 0

    @staticmethod
    def bytes_needed(dataset: CubePairDataset) -> int:
        """Device memory for the split's cubes (float16 input and target)."""
        return len(dataset) * 2 * 2 * dataset.cube_size ** 3

    def __len__(self) -> int:
        return -(-len(self._my_indices()) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``."""
        self.epoch = epoch

    def _my_indices(self) -> torch.Tensor:
        """This rank's share of the epoch's permutation (every rank draws the same one),
        padded with its first cubes to a multiple of the world size as ``DistributedSampler``
        does, so every rank takes the same number of steps."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.pair_of_cube), generator=generator)
        padding = -len(order) % self.world
        order = torch.cat([order, order[:padding]])
        return order[self.rank::self.world]

    def __iter__(self):
        indices = self._my_indices().to(self.device)
        for start in range(0, len(indices), self.batch_size):
            chosen = indices[start:start + self.batch_size]
            pairs = self.cubes[chosen].float()
            batch = (pairs[:, 0:1], pairs[:, 1:2])
            if self.with_struct:
                batch += (self.embeddings[self.pair_of_cube[chosen]],)
            yield batch
