"""The one place a ``--device`` value becomes a ``torch.device``."""

from __future__ import annotations

import os

import torch

from core.io import ConfigError


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask, which a cluster scheduler sets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto``: a GPU when present, else the CPU; ``cuda`` under ``torchrun`` is this process's GPU
    (``local_rank``); a CUDA device that is not there is a clear error."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: no CUDA device is available here; use --device cpu or auto")
        if device.index is None and local_rank:
            device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    return device
