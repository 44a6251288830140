"""cxrnet: multitask chest X-ray analysis (class, lung mask, infection map, severity, explanation).

Research software, not a medical device.

The public names are imported lazily so that ``import cxrnet.models`` or ``import cxrnet.data`` never pulls
in Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "CXRNet": "cxrnet.models",
    "create_model": "cxrnet.models",
    "CXRNetModule": "cxrnet.module",
    "CXRDataModule": "cxrnet.datamodule",
    "load_model": "cxrnet.inference",
    "Predictor": "cxrnet.inference",
    "Prediction": "cxrnet.inference",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cxrnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
