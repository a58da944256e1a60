"""Choosing the torch device that models run on."""

from __future__ import annotations

import torch

from umx.errors import UmxError

AUTO = "auto"


def resolve_device(name: str = AUTO, local_rank: int = 0) -> torch.device:
    """The device named by a user, checked to be present.

    Args:
        name: `auto` (CUDA if present, else MPS if present, else the CPU), `cpu`, `cuda`,
            `cuda:N` or `mps`.
        local_rank: the GPU that `auto` and a bare `cuda` mean, one per process under torchrun.

    Raises:
        UmxError: the name is not a device, or the device is not available here.
    """
    if name == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UmxError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UmxError(f"device {name!r} requested but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UmxError(f"device {name!r} requested but MPS is not available")
    return device
