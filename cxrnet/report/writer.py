"""Evaluation report as Markdown and as one self-contained HTML file.

A report is a title, a metadata table (checkpoint, data, split, command, versions, date, ...) and a list of
:class:`Section`, each holding paragraphs, :class:`Table` and :class:`Figure`. The HTML embeds every figure
as base64 data and carries its CSS inline, so it can be mailed or archived as a single file; it needs no
scripts and links nothing outside itself. All text is escaped.

Table cells may be strings, numbers, ``None``/NaN (shown as ``n/a``) or anything with ``estimate``, ``low``
and ``high`` attributes such as :class:`cxrnet.evaluation.CI` (shown as ``0.912 (0.880-0.940)`` with an en dash).
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Decimal places of floats in tables.
DIGITS = 3
MISSING = "n/a"
MD_NAME = "report.md"
HTML_NAME = "report.html"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { display: inline-block; margin: 1em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; max-width: 700px; }
"""


@dataclass
class Table:
    """A table given as rows of ``{column: value}``.

    Attributes:
        rows: one dict per row; a missing key is an empty cell.
        caption: shown above the table.
        columns: column order; by default the keys in order of first appearance.
    """

    rows: Sequence[Mapping[str, Any]]
    caption: str = ""
    columns: Sequence[str] | None = None

    def column_names(self) -> list[str]:
        """The columns to show, in order."""
        if self.columns is not None:
            return list(self.columns)
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)


@dataclass
class Figure:
    """An image file (PNG) placed in the report.

    Attributes:
        path: the image on disk; Markdown links to it (relative to the report), HTML embeds it.
        caption: one or two sentences saying what to look at.
    """

    path: str | Path
    caption: str = ""


@dataclass
class Section:
    """A titled part of the report: paragraphs first, then tables, then figures.

    Attributes:
        title: section heading.
        paragraphs: plain-text paragraphs (no markup; they are escaped).
        tables: tables in order.
        figures: figures in order.
    """

    title: str
    paragraphs: Sequence[str] = field(default_factory=list)
    tables: Sequence[Table] = field(default_factory=list)
    figures: Sequence[Figure] = field(default_factory=list)


def format_value(value: Any, digits: int = DIGITS) -> str:
    """Text of one table cell: CIs as ``"0.912 (0.880-0.940)"`` (en dash), floats with ``digits`` decimals."""
    if value is None:
        return MISSING
    if all(hasattr(value, a) for a in ("estimate", "low", "high")):
        est, low, high = (float(getattr(value, a)) for a in ("estimate", "low", "high"))
        if math.isnan(est):
            return MISSING
        if math.isnan(low) or math.isnan(high):
            return f"{est:.{digits}f}"
        return f"{est:.{digits}f} ({low:.{digits}f}\u2013{high:.{digits}f})"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return MISSING
        # Counts arrive as floats in flat metric dicts; a whole number above 1 cannot be a rate.
        return str(int(number)) if number.is_integer() and abs(number) > 1 else f"{number:.{digits}f}"
    return str(value)


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) or hasattr(value, "estimate")


def metrics_table(
    metrics: Mapping[str, Any],
    caption: str = "",
    describe: Callable[[str], str] | None = None,
) -> Table:
    """A two- or three-column table (metric, value[, meaning]) from a flat metrics dict.

    Args:
        metrics: ``{key: float or CI}``, e.g. the output of ``classification_metrics`` or of
            ``bootstrap_ci`` on it.
        caption: table caption.
        describe: maps a key to its meaning, e.g. ``cxrnet.evaluation.describe_key``.
    """
    rows: list[dict[str, Any]] = []
    for key, value in metrics.items():
        row: dict[str, Any] = {"metric": key, "value": value}
        if describe is not None:
            row["meaning"] = describe(key)
        rows.append(row)
    return Table(rows=rows, caption=caption)


# ----------------------------------------------------------------------------------------------- Markdown


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def _md(text: Any) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    cols = table.column_names()
    lines = [f"**{_md(table.caption)}**", ""] if table.caption else []
    lines.append("| " + " | ".join(_md(c) for c in cols) + " |")
    lines.append("|" + "|".join("---:" if _numeric_column(table, c) else "---" for c in cols) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md(format_value(row[c])) if c in row else "" for c in cols) + " |")
    return [*lines, ""]


def _numeric_column(table: Table, column: str) -> bool:
    values = [row[column] for row in table.rows if column in row and row[column] is not None]
    return bool(values) and all(_is_numeric(v) for v in values)


def _relative(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def _markdown(title: str, sections: Sequence[Section], metadata: Mapping[str, Any], out_dir: Path) -> str:
    lines = [f"# {_md(title)}", ""]
    if metadata:
        lines += _md_table(Table(rows=[{"field": k, "value": v} for k, v in metadata.items()]))
    for section in sections:
        lines += [f"## {_md(section.title)}", ""]
        for paragraph in section.paragraphs:
            lines += [_md(paragraph), ""]
        for table in section.tables:
            lines += _md_table(table)
        for figure in section.figures:
            target = _relative(Path(figure.path), out_dir).replace(" ", "%20").replace(")", "%29")
            lines += [f"![{_md(figure.caption)}]({target})", ""]
            if figure.caption:
                lines += [f"*{_md(figure.caption)}*", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- HTML


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(table: Table) -> list[str]:
    cols = table.column_names()
    numeric = {c: _numeric_column(table, c) for c in cols}
    out = ["<table>"]
    if table.caption:
        out.append(f"<caption>{_h(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_h(c)}</th>" for c in cols) + "</tr></thead><tbody>")
    for row in table.rows:
        cells = []
        for c in cols:
            text = _h(format_value(row[c])) if c in row else ""
            cells.append(f'<td class="num">{text}</td>' if numeric[c] else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return out


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def _html_figure(figure: Figure) -> list[str]:
    path = Path(figure.path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed {path}: only {sorted(_MIME)} images are supported")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = _h(figure.caption or path.name)
    out = ["<figure>", f'<img src="data:{mime};base64,{data}" alt="{alt}">']
    if figure.caption:
        out.append(f"<figcaption>{_h(figure.caption)}</figcaption>")
    out.append("</figure>")
    return out


def _html(title: str, sections: Sequence[Section], metadata: Mapping[str, Any]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_h(title)}</h1>",
    ]
    if metadata:
        out += _html_table(Table(rows=[{"field": k, "value": v} for k, v in metadata.items()]))
    for section in sections:
        out.append(f"<section><h2>{_h(section.title)}</h2>")
        out += [f"<p>{_h(p)}</p>" for p in section.paragraphs]
        for table in section.tables:
            out += _html_table(table)
        for figure in section.figures:
            out += _html_figure(figure)
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    sections: Sequence[Section],
    metadata: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` into ``out_dir``.

    Args:
        out_dir: output folder (created if missing). Figures are best written inside it (e.g.
            ``out_dir/figures``) so that the Markdown links stay valid when the folder is moved.
        title: report title.
        sections: report body in order.
        metadata: facts about the run shown first, e.g. checkpoint, data, split, command, date.

    Returns:
        ``(md_path, html_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = metadata or {}
    for section in sections:
        for figure in section.figures:
            if not Path(figure.path).is_file():
                raise FileNotFoundError(f"figure {figure.path} of section {section.title!r} does not exist")
    md_path, html_path = out_dir / MD_NAME, out_dir / HTML_NAME
    md_path.write_text(_markdown(title, sections, metadata, out_dir), encoding="utf-8")
    html_path.write_text(_html(title, sections, metadata), encoding="utf-8")
    return md_path, html_path
