"""Dataset readers: one module per native layout, all with the same signature.

``read(root, *, label_map=None, on_unknown_label="error", **options) -> SourceResult``

(``xrv`` wraps an in-memory torchxrayvision dataset, its ``dataset`` option, and needs no ``root``.)

A :class:`SourceResult` holds the kept :class:`~cxrnet.data.records.Record` items, the excluded items with
their reasons, and notes. Build readers by name::

    from cxrnet.data.sources import read_source
    result = read_source("qata", "/data/QaTa-COV19-v2")
    print(result.summary())
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cxrnet.data.sources import cohen, covid_qu_ex, covidx, folder, montgomery, qata, shenzhen, xrv
from cxrnet.data.sources._common import Excluded, LabelMapper, SourceResult

__all__ = ["SOURCES", "Excluded", "LabelMapper", "SourceReader", "SourceResult", "get_source", "read_source"]

SourceReader = Callable[..., SourceResult]

SOURCES: dict[str, SourceReader] = {
    "covidx": covidx.read,
    "qata": qata.read,
    "covid_qu_ex": covid_qu_ex.read,
    "cohen": cohen.read,
    "montgomery": montgomery.read,
    "shenzhen": shenzhen.read,
    "folder": folder.read,
    "xrv": xrv.read,
}
"""Reader by dataset name (the names of the ``data`` config group)."""


def get_source(name: str) -> SourceReader:
    """Return the reader registered under ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset source {name!r}; valid names: {', '.join(sorted(SOURCES))}"
        ) from None


def read_source(name: str, root: str | os.PathLike[str], **options: object) -> SourceResult:
    """Read dataset ``name`` from ``root``; ``options`` go to the reader (see its module)."""
    return get_source(name)(root, **options)
