"""The files of a predict run: which inputs, which overlay names, the CSV/JSONL rows and what is done.

:func:`resolve_inputs` turns files, folders and globs into sorted image paths; :func:`overlay_names` gives
each a unique overlay file name; :func:`csv_columns` and the row builder lay out ``predictions.csv`` and
``predictions.jsonl``; :func:`load_finished` reads them back on a re-run (dropping a line half-written by a
killed run) so that finished inputs are skipped. Used by :mod:`cxrnet.predict`.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cxrnet.data.images import IMAGE_SUFFIXES, find_images, is_dicom
from cxrnet.prediction import FileResult

log = logging.getLogger(__name__)

CSV_NAME = "predictions.csv"
JSONL_NAME = "predictions.jsonl"
OVERLAY_DIR = "overlays"
SEVERITY_COLUMNS = (
    ("infected_fraction_right", "fraction_right"),
    ("infected_fraction_left", "fraction_left"),
    ("infected_fraction_total", "fraction_total"),
    ("brixia_total", "brixia_total"),
    ("geographic_extent", "geographic_extent"),
    ("grade", "grade"),
)
_GLOB_CHARS = frozenset("*?[")
UNTRAINED = "untrained"
"""CSV cell of an output whose head saw no training target."""


# ------------------------------------------------------------------------------------------- inputs


def _is_image(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or ((suffix == "" or suffix[1:].isdigit()) and is_dicom(path))


def resolve_inputs(specs: str | Sequence[str], recursive: bool = True) -> tuple[list[Path], Path]:
    """The image files named by ``specs``, and the folder their overlay names are relative to.

    Args:
        specs: a file, a folder (searched recursively with :func:`~cxrnet.data.images.find_images`), or a glob
            pattern (``**`` allowed); or a list of them.
        recursive: search sub-folders of a folder.

    Returns:
        (resolved paths without duplicates, in order; their common folder). Resolved (symlinks followed),
        so that a file reached twice, through a symlinked folder or two specs, is predicted once and a
        rerun under another name of the same folder resumes.

    Raises:
        FileNotFoundError: a spec matches nothing; the message says what was looked for.
        ValueError: a spec is a FIFO, socket or device (reading it would block or never end).
    """
    specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    found: dict[Path, None] = {}
    for spec in map(str, specs):
        path = Path(spec).expanduser()
        if path.exists() and not (path.is_dir() or stat.S_ISREG(path.stat().st_mode)):
            raise ValueError(
                f"input {spec!r} is not a regular file or a folder (a FIFO, socket or device, which would "
                "block the reader); pass image files, a folder or a glob pattern"
            )
        if path.exists():
            matches = find_images(path, recursive=recursive)
        elif _GLOB_CHARS & set(spec):
            matches = sorted(
                p for p in map(Path, glob.glob(spec, recursive=True)) if p.is_file() and _is_image(p)
            )
        else:
            raise FileNotFoundError(f"input {spec!r} is neither a file, a folder nor a glob pattern")
        if not matches:
            raise FileNotFoundError(
                f"input {spec!r} holds no image files (PNG, JPEG, BMP, TIFF, DICOM: {sorted(IMAGE_SUFFIXES)})"
            )
        found.update((p.resolve(), None) for p in matches)
    paths = list(found)
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return paths, root


def overlay_names(paths: Sequence[Path], root: Path) -> dict[Path, str]:
    """A unique overlay file name per input: the stem, or the path below ``root`` when stems collide.

    ``a/img.png`` and ``b/img.png`` become ``a__img.png`` and ``b__img.png``; ``img.png`` and ``img.dcm`` in
    one folder become ``img_png.png`` and ``img_dcm.png``. Case is ignored when comparing, for
    case-insensitive file systems. The names depend only on the list of inputs, so a resumed run
    gives the same names.
    """

    def relative(path: Path) -> str:
        return "__".join(path.relative_to(root).with_suffix("").parts)

    def with_suffix(path: Path) -> str:
        return f"{relative(path)}_{path.suffix.lstrip('.')}"

    names: dict[Path, str] = {}
    pending = list(paths)
    for make in (lambda path: path.stem, relative, with_suffix):
        counts = Counter(make(p).lower() for p in pending)
        names.update((p, make(p)) for p in pending if counts[make(p).lower()] == 1)
        pending = [p for p in pending if counts[make(p).lower()] > 1]
    names.update((p, f"{with_suffix(p)}_{i}") for i, p in enumerate(pending))  # only odd names get here
    return {p: f"{names[p]}.png" for p in paths}


# ------------------------------------------------------------------------------------------- rows


def csv_columns(classes: Sequence[str], severity_targets: Sequence[str]) -> list[str]:
    """The columns of ``predictions.csv`` for a model's classes and learned severity targets."""
    return [
        "path",
        "status",
        "error",
        "label",
        *(f"prob_{c}" for c in classes),
        *(column for column, _ in SEVERITY_COLUMNS),
        *(f"learned_{t}" for t in severity_targets),
        "height",
        "width",
        "overlay",
    ]


def result_rows(
    result: FileResult,
    overlay: str | None,
    classes: Sequence[str] = (),
    severity_targets: Sequence[str] = (),
    overlay_error: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CSV row and the JSON record of one result (``classes``, ``severity_targets``: the model's)."""
    path = str(result.path)
    if result.prediction is None:
        error = " ".join(str(result.error).split())  # one line, so that one row is one line
        failed = {"path": path, "status": "error", "error": error}
        return failed, dict(failed)
    pred = result.prediction
    row: dict[str, Any] = {"path": path, "status": "ok", "error": "", "label": pred.label or UNTRAINED}
    if "probabilities" in pred.untrained:
        row.update({f"prob_{c}": UNTRAINED for c in classes})
    else:
        row.update({f"prob_{c}": round(p, 6) for c, p in pred.probabilities.items()})
    maps = pred.severity.get("from_maps")
    if maps is None or "severity.from_maps" in pred.untrained:
        row.update({column: UNTRAINED for column, _ in SEVERITY_COLUMNS})
    else:
        row.update({column: _rounded(maps[key]) for column, key in SEVERITY_COLUMNS})
    learned = pred.severity.get("learned", {})
    for target in severity_targets:
        untrained = f"severity.learned.{target}" in pred.untrained or target not in learned
        row[f"learned_{target}"] = UNTRAINED if untrained else round(learned[target], 4)
    row.update(height=pred.meta["height"], width=pred.meta["width"], overlay=overlay or "")
    record = {"path": path, "status": "ok", "error": None, **pred.to_dict(), "overlay": overlay}
    if overlay_error:
        row["error"] = record["error"] = f"overlay not drawn: {overlay_error}"
    return row, record


def _rounded(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def _complete_text(path: Path) -> tuple[str, bool]:
    """The file's text up to its last newline, and whether a half-written last line was cut off."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    complete = text[: text.rfind("\n") + 1]
    return complete, complete != text


def load_finished(out_dir: Path, columns: list[str], retry_errors: bool = False) -> set[str]:
    """Repair the outputs of an earlier run and return the paths it finished.

    A path counts as finished when both ``predictions.csv`` and ``predictions.jsonl`` hold a complete row
    for it. Half-written lines, rows present in only one file and duplicates are dropped (the files are
    rewritten atomically when anything is dropped), so a killed run leaves nothing that corrupts the next.

    Args:
        out_dir: the output folder.
        columns: the CSV header this run writes.
        retry_errors: also drop error rows, so that those files are tried again.

    Raises:
        ValueError: the existing CSV has other columns (another model wrote it).
    """
    csv_path, jsonl_path = out_dir / CSV_NAME, out_dir / JSONL_NAME
    csv_text, csv_cut = _complete_text(csv_path)
    jsonl_text, jsonl_cut = _complete_text(jsonl_path)
    rows = list(csv.reader(io.StringIO(csv_text)))
    if rows and rows[0] != columns:
        raise ValueError(
            f"{csv_path} was written by a model with other outputs (columns {rows[0]}); choose another "
            "output_dir, or delete the old predictions to start afresh"
        )
    keep_status = {"ok"} if retry_errors else {"ok", "error"}
    csv_rows: dict[str, list[str]] = {}
    for row in rows[1:]:
        if len(row) == len(columns) and row[1] in keep_status:
            csv_rows.setdefault(row[0], row)
    json_lines: dict[str, str] = {}
    for line in jsonl_text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("status") in keep_status and "path" in record:
            json_lines.setdefault(record["path"], line)
    finished = set(csv_rows) & set(json_lines)

    if csv_cut or len(rows) > 1 + len(finished) or (csv_path.exists() and not rows):
        _rewrite(csv_path, _csv_text(columns, [csv_rows[p] for p in csv_rows if p in finished]))
    if jsonl_cut or len(jsonl_text.splitlines()) > len(finished):
        _rewrite(jsonl_path, "".join(json_lines[p] + "\n" for p in json_lines if p in finished))
    return finished


def _csv_text(columns: list[str], rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def _rewrite(path: Path, text: str) -> None:
    log.info("repairing %s (dropping incomplete or unmatched rows from an interrupted run)", path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
