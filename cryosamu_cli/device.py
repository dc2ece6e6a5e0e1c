"""Choosing the torch device for inference."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import time

import torch
from torch import nn

from cryosamu_cli.errors import ConfigError, DeviceError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a usable ``torch.device``.

    ``auto`` picks the first CUDA device when one is present, else the CPU.

    Raises:
        DeviceError: Unknown spelling, or CUDA (or that CUDA index) is not available.
    """
    text = device.strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(text)
    if match is None:
        raise DeviceError(f"unknown device '{device}': use auto, cpu or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"device '{device}' requested but CUDA is not available on this machine")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device '{device}' requested but only {torch.cuda.device_count()} "
                          "CUDA device(s) exist")
    return torch.device(f"cuda:{index}")


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``fp32`` → None; ``bf16``/``fp16`` as asked; ``auto`` → fp16 on
    CUDA, bf16 on a CPU where a bf16 convolution is measured faster than fp32, else None."""
    if choice not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision '{choice}': use auto, fp32, bf16 or fp16")
    if choice == "fp32":
        return None
    if choice != "auto":
        return torch.bfloat16 if choice == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if bf16_is_faster_on_cpu() else None


def bf16_is_faster_on_cpu(repeats: int = 3) -> bool:
    """Time a convolution shaped like the U-Net's (a batch of 2, 16 channels, 32³,
    channels-last: the oneDNN path enhance takes) in fp32 and bf16, best of ``repeats``.
    Some CPUs run bf16 convolutions hundreds of times slower than fp32; some with AVX-512
    BF16 still run them about 1.5× slower, so only a measurement decides. (With a batch of
    one, PyTorch sends small fp32 convolutions to a slow non-oneDNN path, which would make
    bf16 look faster than it is.)"""
    conv = nn.Conv3d(16, 16, 3, padding=1).to(memory_format=torch.channels_last_3d)
    x = torch.rand(2, 16, 32, 32, 32).to(memory_format=torch.channels_last_3d)
    best = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            layer, data = conv.to(dtype), x.to(dtype)
            layer(data)
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                layer(data)
                timings.append(time.perf_counter() - started)
            best[dtype] = min(timings)
    # bf16 costs accuracy (output correlation with fp32 about 0.997): only a clear gain pays
    return best[torch.bfloat16] < 0.75 * best[torch.float32]


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


def keep_freed_memory_for_reuse() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation of the process.

    By default every tensor above 32 MiB gets fresh pages from the kernel and hands them back
    when freed, so each of the network's large activations pays for zero-filled page faults
    (about 400,000 per batch of two cubes of the shipped model; 1.12 s against 0.70 s per
    batch on a 2-core CPU). With memory-mapped allocations switched off and trimming left to
    very large free tops, freed activations are reused: after two or three passes the heap
    has settled and a pass faults no page. The process then holds its working set between
    passes (about 0.8 GiB for that batch) instead of returning it to the system.
    Returns whether the setting took effect (False where the C library is not glibc).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
