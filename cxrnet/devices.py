"""Device selection with errors that say what to use instead."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The torch device for a name, checked: ``"auto"`` picks CUDA when available, else the CPU.

    Raises:
        RuntimeError: a CUDA (or MPS) device that is not available, with the way out.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r} requested but CUDA is not available (torch.cuda.is_available() is "
                "False); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) are "
                f"visible (cuda:0 … cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {str(device)!r} requested but MPS is not available; use device='cpu'")
    return dev
