"""Choosing the torch device for inference."""

from __future__ import annotations

import re

import torch

from cryosamu_cli.errors import DeviceError

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
