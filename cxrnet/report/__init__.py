"""Evaluation figures (:mod:`.plots`) and report files (:mod:`.writer`)."""

from cxrnet.report.plots import (
    plot_confusion,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_segmentation_grid,
    plot_severity_scatter,
)
from cxrnet.report.writer import Figure, Section, Table, format_value, metrics_table, write_report

__all__ = [
    "Figure",
    "Section",
    "Table",
    "format_value",
    "metrics_table",
    "plot_confusion",
    "plot_pr",
    "plot_reliability",
    "plot_roc",
    "plot_segmentation_grid",
    "plot_severity_scatter",
    "write_report",
]
