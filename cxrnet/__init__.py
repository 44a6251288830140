"""cxrnet: multitask chest X-ray analysis (class, lung mask, infection map, severity, explanation).

Research software, not a medical device.

The public names are imported lazily so that ``import cxrnet.models`` or ``import cxrnet.data`` never pulls
in Lightning.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def _register_checkout_configs() -> None:
    """Make the repository's top-level ``conf/`` importable as ``cxrnet.conf`` in a source checkout.

    Installs ship the configs as the package ``cxrnet.conf`` (pyproject ``package-dir`` maps it to ``conf/``:
    a wheel copies them to ``site-packages/cxrnet/conf``, an editable install points at the checkout's
    folder). A checkout used without installing (``PYTHONPATH=<repo>``) has no such package; its configs are
    the ``conf/`` beside this package, next to ``pyproject.toml``, and they are registered under the same
    name so that ``pkg://cxrnet.conf`` finds *this* checkout's configs, not an installed copy's.
    """
    package = Path(__file__).resolve().parent
    if (package / "conf" / "__init__.py").is_file() or "cxrnet.conf" in sys.modules:
        return
    conf = package.parent / "conf"
    if not ((conf / "__init__.py").is_file() and (package.parent / "pyproject.toml").is_file()):
        return  # an install: the package mapping provides cxrnet.conf
    spec = importlib.util.spec_from_file_location(
        "cxrnet.conf", conf / "__init__.py", submodule_search_locations=[str(conf)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cxrnet.conf"] = module
    spec.loader.exec_module(module)
    setattr(sys.modules[__name__], "conf", module)  # noqa: B010 (as the import system does for a submodule)


_register_checkout_configs()

_PUBLIC = {
    "CXRNet": "cxrnet.models",
    "create_model": "cxrnet.models",
    "CXRNetModule": "cxrnet.module",
    "CXRDataModule": "cxrnet.datamodule",
    "load_model": "cxrnet.inference",
    "Predictor": "cxrnet.inference",
    "Prediction": "cxrnet.inference",
    "from_pretrained": "cxrnet.hub",
    "push_to_hub": "cxrnet.hub",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cxrnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
