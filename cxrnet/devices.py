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


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
"""Lightning precision names cxrnet accepts; ``"auto"`` resolves with :func:`resolve_precision`."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16), so bf16 autocast is fast.

    Without such units, bf16 is emulated and slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(is_supported()) if is_supported is not None else False
    except RuntimeError:
        return False


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str:
    """The Lightning precision to train or infer with; ``"auto"`` picks the fastest safe one.

    The rule for ``"auto"``:

    * CUDA (``accelerator`` ``gpu``/``cuda``, or ``auto`` with a visible GPU): ``bf16-mixed`` where the GPU
      supports bfloat16 (Ampere and newer), else ``16-mixed`` (float16 with a gradient scaler);
    * CPU with native bfloat16 units (:func:`cpu_has_bf16`): ``bf16-mixed``;
    * anything else (older CPUs, MPS): ``32-true``.

    Mixed precision keeps the weights, the optimiser and the losses in float32; only matmuls and convolutions
    run in the low precision. Any other value is returned as Lightning spells it (``32`` → ``32-true``).

    Raises:
        ValueError: an unknown precision name, with the valid ones.
    """
    value = str(precision)
    value = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}.get(value, value)
    if value not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
    if value != "auto":
        return value
    accelerator = str(accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "16-mixed"
    if accelerator in ("cpu", "auto") and cpu_has_bf16():
        return "bf16-mixed"
    return "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision for inference (``None``: run in float32)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None
