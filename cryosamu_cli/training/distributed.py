"""The processes of a ``torchrun`` run: rank, world size and device from torchrun's
environment (one process without it), DDP around the network, and a check that every rank
ends with the same weights."""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn


def setup_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device from torchrun's environment (one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return rank, world, device


def teardown(world: int) -> None:
    """Leave the process group (several processes only)."""
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def weights_checksum(model: nn.Module) -> str:
    """SHA-256 of all parameters, to check that every rank holds the same weights."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather(value: str, world: int) -> list[str]:
    """Every rank's ``value`` in rank order (one process: just this one), once per run.

    Exchanged through torchrun's rendezvous store (``MASTER_ADDR:MASTER_PORT``), not a gloo
    collective: this is a run's last exchange, and a gloo worker thread that frees a
    collective's tensors must take the GIL; when Python is already shutting down it cannot, and
    the process aborts after a run that ended well (SIGABRT, "terminate called without an
    active exception": 7 of 60 two-rank runs of a small DDP script on a 2-core CPU, and CI;
    0 of 60 through the store, whose calls run in this thread and hold no tensors). Ranks wait
    for each other as long as a collective would (``default_pg_timeout``): rank 0 may still be
    validating. Keys carry torchrun's restart count: the store outlives a restarted attempt.
    """
    if world == 1:
        return [value]
    client = torch.distributed.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=torch.distributed.default_pg_timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = torch.distributed.PrefixStore(f"cryosamu-gather/{attempt}/", client)
    store.set(str(torch.distributed.get_rank()), value)
    return [store.get(str(rank)).decode() for rank in range(world)]


def training_network(model: nn.Module, world: int, device: torch.device, *,
                     compile_it: bool = False, unused_parameters: bool = False) -> nn.Module:
    """What the training steps call: DDP around the model when several processes run
    (``unused_parameters``: without embeddings the cross-attention takes no part in the loss,
    nor on the steps ``--struct-dropout`` leaves without them, so DDP must allow unused
    parameters), compiled with ``compile_it``."""
    wrapped = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused_parameters)
    return torch.compile(wrapped) if compile_it else wrapped
