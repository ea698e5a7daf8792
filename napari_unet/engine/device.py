"""Choosing the torch device: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

from napari_unet.errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``name``; asking for an absent GPU is a clear error."""
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("Device 'cuda' was requested but no CUDA GPU is available here.")
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("Device 'mps' was requested but Apple MPS is not available here.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"Unknown device {name!r}; use one of {', '.join(DEVICES)}.")
