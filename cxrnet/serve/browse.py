"""A finished ``cxrnet.predict`` output folder, read once when the server starts, its rows addressed by number.

The folder is named on the server's command line (``predictions=<output_dir>``), never by the browser. The
page asks for row ``n`` of the table; the image path, the overlay and the JSON record of that row come from the
folder's own ``predictions.csv`` and ``predictions.jsonl`` (:mod:`cxrnet.predict_files` lays them out). An
overlay is served only if it lies inside the folder, whatever the CSV says. Nothing in the folder is written:
a line half-written by a killed run is skipped, not repaired.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from cxrnet.predict_files import CSV_NAME, JSONL_NAME, SEVERITY_COLUMNS, UNTRAINED

__all__ = ["MAX_ROWS", "PredictionsTable"]

log = logging.getLogger(__name__)

MAX_ROWS = 100_000
"""Most rows read from a predictions table; a larger one is cut, and the page says so."""

_FIXED = {"path", "status", "error", "label", "height", "width", "overlay"}


def _number(text: str | None) -> float | None:
    """A CSV cell as a number; ``None`` for an empty cell, ``untrained`` or text."""
    if text in (None, "", UNTRAINED):
        return None
    try:
        return float(text)
    except ValueError:
        return None


class PredictionsTable:
    """The rows of a predict output folder.

    Attributes:
        folder: the output folder (resolved).
        classes: the class names of the ``prob_<class>`` columns.
        severity_targets: the learned targets of the ``learned_<target>`` columns.
        rows: the CSV rows (text cells), one per image, in file order.
        records: the JSON record of each row (``None`` where the JSONL has none).
        summary: ``summary.json`` of the run, when present.
        truncated: more than :data:`MAX_ROWS` rows were found; the rest are not shown.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser().resolve()
        csv_path = self.folder / CSV_NAME
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"predictions={folder}: no {CSV_NAME} there; give the output_dir of a finished "
                "python -m cxrnet.predict run"
            )
        text = csv_path.read_text(encoding="utf-8", errors="replace")
        text = text[: text.rfind("\n") + 1]  # a last line cut by a killed run is dropped
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if not header or header[:2] != ["path", "status"]:
            raise ValueError(f"{csv_path} is not a cxrnet.predict table (its header is {header})")
        self.columns = header
        self.classes = [c.removeprefix("prob_") for c in header if c.startswith("prob_")]
        self.severity_targets = [c.removeprefix("learned_") for c in header if c.startswith("learned_")]
        self.truncated = False
        self.rows: list[dict[str, str]] = []
        seen: set[str] = set()
        for cells in reader:
            if len(cells) != len(header) or cells[0] in seen:
                continue
            if len(self.rows) >= MAX_ROWS:
                self.truncated = True
                break
            seen.add(cells[0])
            self.rows.append(dict(zip(header, cells)))
        by_path = self._records(self.folder / JSONL_NAME, seen)
        self.records: list[dict[str, Any] | None] = [by_path.get(row["path"]) for row in self.rows]
        self.summary = self._summary(self.folder / "summary.json")
        paths = [Path(row["path"]) for row in self.rows]
        try:
            self._root = Path(os.path.commonpath([p.parent for p in paths])) if paths else self.folder
        except ValueError:  # relative and absolute paths mixed
            self._root = Path("/")

    @staticmethod
    def _records(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if not path.is_file():
            return records
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("path") in wanted:
                    records.setdefault(record["path"], record)
        return records

    @staticmethod
    def _summary(path: Path) -> dict[str, Any] | None:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return summary if isinstance(summary, dict) else None

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> dict[str, str]:
        """Row ``index`` (0-based).

        Raises:
            IndexError: no such row.
        """
        if not 0 <= index < len(self.rows):
            raise IndexError(f"no row {index}; the table has rows 0 to {len(self.rows) - 1}")
        return self.rows[index]

    def image(self, index: int) -> Path:
        """The image file of row ``index``, as the predict run recorded it."""
        return Path(self.row(index)["path"])

    def name(self, index: int) -> str:
        """The image's path below the folder all the table's images share."""
        path = self.image(index)
        try:
            return str(path.relative_to(self._root))
        except ValueError:
            return path.name

    def record(self, index: int) -> dict[str, Any] | None:
        """The JSON record of row ``index``, or ``None`` when the JSONL has none."""
        self.row(index)
        return self.records[index]

    def overlay(self, index: int) -> Path | None:
        """The overlay PNG of row ``index``, if it exists inside the folder; ``None`` otherwise."""
        relative = self.row(index).get("overlay") or ""
        if not relative:
            return None
        path = (self.folder / relative).resolve()
        if not path.is_relative_to(self.folder) or not path.is_file() or path.suffix.lower() != ".png":
            log.warning("row %d: overlay %r is not a PNG inside %s; not served", index, relative, self.folder)
            return None
        return path

    def public_row(self, index: int) -> dict[str, Any]:
        """Row ``index`` as the page's table shows it (numbers as numbers, ``None`` for untrained or empty)."""
        row = self.row(index)
        return {
            "id": index,
            "name": self.name(index),
            "status": row["status"],
            "error": row.get("error") or "",
            "label": None if row.get("label") in (None, "", UNTRAINED) else row["label"],
            "probabilities": {c: _number(row.get(f"prob_{c}")) for c in self.classes},
            "severity": {column: _severity_cell(column, row.get(column)) for column, _ in SEVERITY_COLUMNS},
            "learned": {t: _number(row.get(f"learned_{t}")) for t in self.severity_targets},
            "height": _number(row.get("height")),
            "width": _number(row.get("width")),
            "overlay": self.overlay(index) is not None,
        }

    def public(self) -> dict[str, Any]:
        """The whole table for the page: its classes, targets, rows and the run's caveats."""
        summary = self.summary or {}
        return {
            "folder": self.folder.name,
            "classes": self.classes,
            "severity_columns": [column for column, _ in SEVERITY_COLUMNS],
            "severity_targets": self.severity_targets,
            "rows": [self.public_row(i) for i in range(len(self.rows))],
            "truncated": self.truncated,
            "caveats": list(summary.get("caveats", [])),
            "untrained": list(summary.get("untrained", [])),
        }


def _severity_cell(column: str, text: str | None) -> Any:
    if column == "grade":
        return None if text in (None, "", UNTRAINED) else text
    return _number(text)
