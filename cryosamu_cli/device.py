"""The torch device and its arithmetic: choosing a device and a precision, making fp32 mean
IEEE fp32, and stopping on non-finite output."""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import torch

from cryosamu_cli.errors import ConfigError, DeviceError, NumericalError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    """The autocast dtype: ``fp32`` → None; ``bf16``/``fp16`` as asked; ``auto`` → bf16 on a
    CUDA device that supports it (fp16 on one that does not); on a CPU, bf16 where the
    processor computes bf16 natively (:func:`native_bf16_feature`), else fp32.

    ``auto`` depends only on what the device is, never on a timing, so the same command on the
    same machine always runs the same arithmetic (and writes the same bytes). On a 2-core AMD
    EPYC with AVX-512 BF16, bf16 enhanced emd-5168 and emd-1997 in 0.61–0.64× the time of fp32
    with CC_mask within 0.002, and a training step took 0.70× the time with the same loss curve
    over a paired 60-step run; without native bf16, bf16 convolutions were slower than fp32 on
    every CPU measured (docs/performance.md).
    """
    if choice not in PRECISIONS:
        raise ConfigError(f"unknown precision '{choice}': use {', '.join(PRECISIONS)}")
    if choice == "fp32":
        return None
    if choice != "auto":
        return torch.bfloat16 if choice == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if native_bf16_feature() else None


def precision_reason(choice: str, device: torch.device) -> str:
    """Why :func:`resolve_precision` chose what it chose, in a few words
    (``bf16: the CPU has avx512_bf16``)."""
    name = precision_name(resolve_precision(choice, device))
    if choice != "auto":
        return f"{name}: asked for"
    if device.type == "cuda":
        return f"{name}: the GPU " + ("computes bf16" if name == "bf16" else "has no bf16")
    feature = native_bf16_feature()
    return f"{name}: the CPU has " + (feature or "no native bf16")


# (feature, torch's probe): the CPU features that compute bf16 natively, as torch reports them
_BF16_FEATURES = (("amx_bf16", "_is_amx_tile_supported"),
                  ("avx512_bf16", "_is_avx512_bf16_supported"))


def native_bf16_feature() -> str | None:
    """The feature by which this CPU computes bf16 natively (``amx_bf16``: AMX tiles, or
    ``avx512_bf16``), as torch's own CPU probes report it; None where it has none (or this
    torch has no probe)."""
    for feature, probe in _BF16_FEATURES:
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return feature
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for an autocast dtype (None: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def use_precision(dtype: torch.dtype | None, device: torch.device) -> None:
    """Make the device compute what ``dtype`` promises: for fp32 (None) on CUDA, IEEE fp32 in
    cuDNN's convolutions and cuBLAS's matrix products instead of TF32, which cuDNN uses by
    default and which keeps 10 bits of mantissa (the CUDA output of the shipped model then
    differed from the CPU's by 6 % of its range on emd-1997). Autocast runs are left alone."""
    if dtype is not None or device.type != "cuda":
        return
    backends = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    if all(hasattr(backend, "fp32_precision") for backend in backends):
        for backend in backends:
            backend.fp32_precision = "ieee"
    else:  # torch before 2.9: the legacy switches (mixing both kinds is refused by torch)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def check_finite(output: torch.Tensor, dtype: torch.dtype | None) -> None:
    """Stop when the network's ``output`` holds NaN or Inf, naming the precision it ran at.

    Raises:
        NumericalError: Some value is not finite.
    """
    if bool(torch.isfinite(output).all()):
        return
    if dtype is None:
        raise NumericalError("the network produced NaN or Inf in fp32: its weights or the "
                             "input map are broken (nothing was written)")
    raise NumericalError(f"the network produced NaN or Inf at {precision_name(dtype)} "
                         "precision (nothing was written); run again with --precision fp32")


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
