"""Device selection with errors that say what to use instead."""

from __future__ import annotations

import contextlib
from typing import Any

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


def has_depthwise_convolutions(net: torch.nn.Module) -> bool:
    """Whether ``net`` has depthwise convolutions (``groups`` equal to the input channels, > 1).

    MobileNet, EfficientNet, MixNet, ConvNeXt and similar encoders do; ResNet, DenseNet, VGG do not.
    """
    return any(
        isinstance(m, torch.nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels
        for m in net.modules()
    )


def resolve_precision(
    precision: str | int, accelerator: str = "auto", net: torch.nn.Module | None = None
) -> str:
    """The Lightning precision to train with; ``"auto"`` picks the fastest safe one.

    The rule for ``"auto"``:

    * CUDA (``accelerator`` ``gpu``/``cuda``, or ``auto`` with a visible GPU): ``bf16-mixed`` where the GPU
      supports bfloat16 (Ampere and newer), else ``16-mixed`` (float16 with a gradient scaler);
    * CPU with native bfloat16 units (:func:`cpu_has_bf16`): ``bf16-mixed``, except for a network with
      depthwise convolutions (:func:`has_depthwise_convolutions`, when ``net`` is given): ``32-true``.
      oneDNN's bfloat16 depthwise kernels are slower than its float32 ones on such CPUs: measured on an
      AVX-512 BF16 CPU (no AMX), the quickstart's MobileNetV3 trained at 0.83x the float32 speed in
      bf16-mixed, while resnet18 + U-Net at 256 px trained 2.2x faster (``benchmarks/run.py``); on an
      Intel Xeon with AMX, 0.87x and 2.3-2.6x (3.2x with channels-last against float32 contiguous). Inference
      has no backward pass and is faster in bf16 for both (1.18x for the quickstart): see
      :func:`inference_precision`;
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
        return "32-true" if net is not None and has_depthwise_convolutions(net) else "bf16-mixed"
    return "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision for inference (``None``: run in float32)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def inference_precision(precision: str | int, device: str | torch.device) -> str:
    """The precision to run inference at on ``device``: ``"auto"`` follows :func:`resolve_precision` for
    the device, without the depthwise exception (that one is about the backward pass, which inference does
    not run: a forward pass in bf16 measured faster than float32 for every network tried).
    """
    kind = torch.device(device).type if str(device) != "auto" else "auto"
    return resolve_precision(precision, accelerator={"cuda": "gpu"}.get(kind, kind))


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context that runs inference at a resolved ``precision`` on ``device``.

    Mixed and "true" low precisions both autocast matmuls and convolutions (the weights stay float32);
    ``32-true`` and ``64-true`` run in float32 without autocast. Outputs may come back in the low dtype:
    call ``.float()`` before softmax, sigmoid or thresholds.
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def compile_unavailable(device: str | torch.device = "cpu") -> str | None:
    """Why ``torch.compile`` cannot run here, or ``None`` when it can.

    A tiny function is compiled and run on ``device`` (a few seconds, once per process): this finds what a
    version check cannot, such as a missing C++ compiler for the CPU backend or an unsupported Python.
    """
    key = torch.device(device).type
    if key not in _COMPILE_PROBE:
        _COMPILE_PROBE[key] = _probe_compile(torch.device(device))
    return _COMPILE_PROBE[key]


_COMPILE_PROBE: dict[str, str | None] = {}


def _probe_compile(device: torch.device) -> str | None:
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python or platform"
        probe = torch.compile(lambda x: torch.relu(x) * 2 + 1, dynamic=False)
        probe(torch.ones(4, device=device))
    except Exception as err:  # a compiler or backend failure of any kind means: run uncompiled
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"torch.compile failed on a probe ({type(err).__name__}: {first[:300]})"
    return None
