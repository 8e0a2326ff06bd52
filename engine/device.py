"""Device selection: ``auto|cpu|cuda`` is resolved once and the result passed down."""

from __future__ import annotations

import torch


class DeviceError(RuntimeError):
    """The requested device cannot be used on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu`` or ``cuda`` (or ``cuda:N``) into a ``torch.device``.

    ``auto`` picks CUDA when ``torch.cuda.is_available()``, else the CPU. Asking for CUDA on a
    machine without it is an error rather than a silent fall-back, so a user who asked for the
    GPU learns that they are not getting it.
    """
    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{name}' was requested but CUDA is not available here "
                "(torch.cuda.is_available() is False); use --device cpu or auto"
            )
        return torch.device(key)
    raise DeviceError(f"unknown device '{name}': expected auto, cpu or cuda")
