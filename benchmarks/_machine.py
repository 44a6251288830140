"""What a benchmark result depends on besides the code: the machine section, memory readings, atomic JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""CPU flags that decide float32 and bfloat16 speed (AVX-512, AVX-512 BF16, AMX)."""


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (empty where there is no such file)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _status_kb(field: str) -> float | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), or ``None`` where it is not available."""
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """This process's resident memory now, in MiB (``VmRSS``)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (``VmHWM``)."""
    kb = _status_kb("VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _git_commit() -> dict[str, Any] | None:
    """The commit of the checkout and whether it has uncommitted changes (``None`` outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted_changes": bool(status.strip())}


def machine_section(load_before: list[float] | None) -> dict[str, Any]:
    """The machine a run was measured on: CPU model and flags, threads, versions, load, date.

    Args:
        load_before: load averages read before the first measurement.
    """
    import numpy
    import torch

    from cxrnet.devices import cpu_has_bf16, resolve_precision

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": info.get("model name") or platform.processor() or None,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "cpu_has_bf16": cpu_has_bf16(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "default_precision": resolve_precision("auto", "cpu"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pytorch_lightning": _version("pytorch_lightning"),
        "segmentation_models_pytorch": _version("segmentation_models_pytorch"),
        "timm": _version("timm"),
        "git": _git_commit(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "peak_rss_mb": peak_rss_mb(),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
