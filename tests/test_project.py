"""Project files users and CI rely on: the citation file and the README's commands."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_citation_file_is_valid_and_cites_the_papers_we_build_on() -> None:
    cffconvert = pytest.importorskip(
        "cffconvert", reason="cffconvert is a dev extra: pip install -e '.[dev]'"
    )
    text = (ROOT / "CITATION.cff").read_text()
    cffconvert.Citation(text).validate()  # raises on any schema violation (e.g. a duplicated or unknown key)
    for title in ("CXR-Net", "COVID-Net", "Deep-COVID", "COVID-19 infection map generation and detection"):
        assert title in text


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[:2500]
    assert 'pip install -e ".[dev]"' in head
    assert "python -m cxrnet.train +experiment=quickstart" in head
    assert "not a medical device" in readme.lower()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert test_command in readme, "README's test command and .ci/run differ"
