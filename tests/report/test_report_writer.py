"""Markdown and self-contained HTML reports."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pytest

from cxrnet.evaluation.bootstrap import CI
from cxrnet.report.writer import Figure, Section, Table, format_value, metrics_table, write_report

# The smallest valid PNG (1x1 transparent pixel).
_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture
def report(tmp_path):
    fig_path = tmp_path / "out" / "figures" / "roc.png"
    fig_path.parent.mkdir(parents=True)
    fig_path.write_bytes(_PNG)
    ci = CI(estimate=0.912, low=0.88, high=0.94, n_resamples=1000, n_groups=50)
    sections = [
        Section(
            title="Classification <results>",
            paragraphs=["Intervals resample patients & not images."],
            tables=[
                metrics_table({"macro/auroc": ci, "accuracy": 0.85, "covid19/ppv": math.nan, "n": 120.0}),
                Table(rows=[{"class": "a|b", "support": np.int64(12)}], caption="Per class"),
            ],
            figures=[Figure(fig_path, caption="ROC <one-vs-rest>")],
        )
    ]
    md, html = write_report(
        tmp_path / "out",
        title="Eval <script>alert(1)</script> & co",
        sections=sections,
        metadata={"ckpt": "b.ckpt"},
    )
    return md, html


def test_files_exist_and_html_is_self_contained(report):
    md, html = report
    assert md.name == "report.md" and html.name == "report.html"
    text = html.read_text(encoding="utf-8")
    assert "data:image/png;base64," + base64.b64encode(_PNG).decode() in text
    assert "Eval &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
    assert "<script>" not in text
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:)", text)
    assert "http://" not in text and "https://" not in text
    assert "0.912 (0.880\u20130.940)" in text
    assert "ROC &lt;one-vs-rest&gt;" in text


def test_markdown_links_figures_relatively_and_escapes(report):
    md, _ = report
    text = md.read_text(encoding="utf-8")
    assert "](figures/roc.png)" in text
    assert "0.912 (0.880\u20130.940)" in text
    assert "a\\|b" in text  # a pipe would break the table
    assert "| n/a |" in text
    assert "| 120 |" in text


def test_missing_figure_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path, title="t", sections=[Section("s", figures=[Figure(tmp_path / "nope.png")])])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.91234, "0.912"),
        (np.float32(0.5), "0.500"),
        (1.0, "1.000"),
        (250.0, "250"),
        (7, "7"),
        (None, "n/a"),
        (math.nan, "n/a"),
        ("covid19", "covid19"),
        (CI(0.5, math.nan, math.nan, 0, 3), "0.500"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text
