"""The arguments of :func:`cxrnet.data.build.build_splits` read from a data config, in one place.

:class:`cxrnet.datamodule.CXRDataModule` (training, evaluation) and ``python -m cxrnet.data.check`` read and
split a dataset from the same ``data`` config group; :func:`split_arguments` is their one reading of its keys,
so that the check sees the very split that training will.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxrnet.data.build import source_specs
from cxrnet.data.cache import DataCache
from cxrnet.data.splits import DUPLICATE_MAX_DISTANCE, check_folds, check_fractions

__all__ = ["split_arguments"]


def split_arguments(data: Mapping[str, Any], cache: DataCache | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`~cxrnet.data.build.build_splits` for a data config.

    Args:
        data: the data config as plain data, keyed like the arguments of ``CXRDataModule``: ``name``, ``root``,
            ``classes``, ``options``, ``label_map``, ``sources``, ``split_fractions``, ``folds``, ``fold``,
            ``seed``, ``on_unknown_label``, ``on_error``, ``duplicate_max_distance``, ``num_workers``, and
            ``dataset`` (an in-memory dataset object or its ``_target_`` config, given to the reader as its
            ``dataset`` option: ``data=xrv``). Other keys are not read; absent ones take the datamodule's
            defaults.
        cache: the cache of ``data.cache_dir``, if there is one (the caller keeps it to read items from).

    Returns:
        ``specs``, ``classes``, ``fractions``, ``folds``, ``fold``, ``seed``, ``on_unknown_label``,
        ``on_error``, ``cache``, ``duplicate_max_distance`` and ``workers``: call
        ``build_splits(**arguments)``, adding ``collect`` or ``progress`` as needed.

    Raises:
        ValueError: malformed ``split_fractions`` or ``folds``, an unknown dataset name, a missing root or a
            malformed ``sources`` entry; the message names the option.
    """
    fold = int(data.get("fold", 0) or 0)
    check_fractions(data.get("split_fractions"))
    check_folds(data.get("folds"), fold)
    options = dict(data.get("options") or {})
    if data.get("dataset") is not None:
        if "dataset" in options:
            raise ValueError("give the dataset once: data.dataset or data.options.dataset, not both")
        options["dataset"] = data["dataset"]
    specs = source_specs(data["name"], data.get("root"), options, data.get("label_map"), data.get("sources"))
    return {
        "specs": specs,
        "classes": list(data["classes"]),
        "fractions": data.get("split_fractions"),
        "folds": data.get("folds"),
        "fold": fold,
        "seed": int(data.get("seed", 0)),
        "on_unknown_label": data.get("on_unknown_label", "exclude"),
        "on_error": data.get("on_error", "error"),
        "cache": cache,
        "duplicate_max_distance": data.get("duplicate_max_distance", DUPLICATE_MAX_DISTANCE),
        "workers": int(data.get("num_workers", 0)),
    }
