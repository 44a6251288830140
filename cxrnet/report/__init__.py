"""Evaluation figures (:mod:`.plots`), report files (:mod:`.writer`) and the report of
``python -m cxrnet.evaluate`` built from them (:mod:`.evaluation`).

The plotting functions are loaded on first use: importing :mod:`cxrnet.report` (or
:mod:`cxrnet.report.overlay`, which predict uses) does not import matplotlib.
"""

from typing import Any

from cxrnet.report.writer import Figure, Section, Table, format_value, metrics_table, write_report

_PLOTS = frozenset(
    {
        "plot_confusion",
        "plot_pr",
        "plot_reliability",
        "plot_roc",
        "plot_segmentation_grid",
        "plot_severity_scatter",
    }
)

__all__ = [  # the plotting names are loaded on first use, by __getattr__
    "Figure",
    "Section",
    "Table",
    "format_value",
    "metrics_table",
    "write_report",
    *sorted(_PLOTS),
]


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        from cxrnet.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
