"""Check a dataset before training: ``python -m cxrnet.data.check data=<name> data.root=<dir> [report=<file.json>]``.

Reads the dataset exactly as training would (same ``data`` config group read by the same
:func:`~cxrnet.data.split_config.split_arguments`, same readers, same split), reads every
image and mask once, and prints per split and class the number of images, patients, lung masks, infection
masks and severity scores, then every issue with its file:

* problems: unreadable or missing files (also files named in a CSV / label file but absent), masks whose size
  differs from the image, unknown labels, labels that are not one of ``data.classes``;
* warnings: near-duplicate images whose patients were merged into one split unit, items a reader leaves out
  by design (lateral views, labels mapped to ``null``, ...), non-binary masks (thresholded at half range and
  used), files that end early but decode whole (read; see :data:`cxrnet.data.raster.MAX_MISSING_ROWS`).

Unlike training, the check never stops at the first problem: unknown labels and missing files are excluded,
unreadable items skipped, and all are listed. With ``data.cache_dir`` set it fills the training cache on the way.

Exit code: 0 when there is no problem, 1 when there is at least one (also with ``strict=true`` and a warning,
or when the dataset cannot be read at all), 2 for a bad command line. ``report=<file.json>`` writes the full
report (:meth:`cxrnet.data.findings.DataReport.to_dict`). Nothing is written anywhere else.

Other options: ``strict=true`` (warnings fail too), ``max_listed=N`` (issues shown per kind; the JSON has all).
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrnet.conf import CONFIG_PATH
from cxrnet.data.build import build_splits
from cxrnet.data.cache import DataCache
from cxrnet.data.findings import COUNT_FIELDS, DETAILED_KINDS, DataReport, Issue
from cxrnet.data.split_config import split_arguments

__all__ = ["check", "main", "render"]

USAGE = (
    "usage: python -m cxrnet.data.check data=<name> data.root=<dir> [report=<file.json>] [strict=true] "
    "[data.<option>=<value> ...]\n"
    "names: covidx, qata, covid_qu_ex, cohen, montgomery, shenzhen, folder, mixed, xrv (data.dataset=...)"
)


def check(cfg: DictConfig, console: Console | None = None) -> DataReport:
    """Build the splits of ``cfg.data`` in collecting mode and return the report.

    Args:
        cfg: a composed ``check.yaml`` config (``cfg.data`` is a ``data`` group config).
        console: where to show progress; ``None`` shows none.

    Raises:
        ValueError: ``data=synthetic`` (nothing on disk) or a malformed config.
        FileNotFoundError: the dataset folder is missing or not in the expected layout.
    """
    data = cfg.data
    if data.name == "synthetic" and not data.get("sources"):
        raise ValueError(
            "data=synthetic is generated in memory; choose a dataset on disk: data=<name> data.root=<dir>"
        )
    container: dict[str, Any] = OmegaConf.to_container(data, resolve=True, throw_on_missing=True)  # type: ignore[assignment]
    cache_dir = container.get("cache_dir")
    cache = DataCache(cache_dir, int(container["image_size"])) if cache_dir else None
    kwargs = {**split_arguments(container, cache), "collect": True}
    if console is None:
        return build_splits(**kwargs).report
    with console.status("reading every image and mask once ...") as status:

        def progress(done: int, total: int) -> None:
            if done % 50 == 0 or done == total:
                status.update(f"reading every image and mask once: {done}/{total}")

        return build_splits(progress=progress, **kwargs).report


def render(report: DataReport, console: Console, max_listed: int = 50) -> None:
    """Print the counts table, then every problem and warning (at most ``max_listed`` per kind)."""
    table = Table(title=f"{report.source}: {report.n_items} images", title_justify="left")
    table.add_column("split")
    table.add_column("class")
    for name in COUNT_FIELDS:
        table.add_column(name.replace("_", " "), justify="right")
    for split, rows in report.counts.items():
        for label, row in rows.items():
            style = "bold" if label == "all" else None
            table.add_row(split, label, *(str(row[name]) for name in COUNT_FIELDS), style=style)
        table.add_section()
    console.print(table)
    for title, issues, colour in (
        ("problems", report.problems, "red"),
        ("warnings", report.warnings, "yellow"),
    ):
        if not issues:
            console.print(f"[green]no {title}[/green]")
            continue
        console.print(f"[bold {colour}]{len(issues)} {title}[/bold {colour}]")
        by_kind: dict[str, list[Issue]] = defaultdict(list)
        for issue in issues:
            by_kind[issue.kind].append(issue)
        for kind, members in by_kind.items():
            counted = ""
            if kind in DETAILED_KINDS:
                counted = ": " + ", ".join(
                    f"{d or '(blank)'} {n}" for d, n in report.detail_counts(kind).items()
                )
            console.print(f"  [{colour}]{escape(kind)}[/{colour}] ({len(members)}){escape(counted)}")
            for issue in members[:max_listed]:
                detail = f": {escape(issue.detail)}" if issue.detail else ""
                console.print(f"    {escape(issue.path)}{detail}", soft_wrap=True, highlight=False)
            if len(members) > max_listed:
                console.print(
                    f"    ... and {len(members) - max_listed} more (write them all with report=<file.json>)"
                )
    for note in report.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize

    with initialize(config_path=CONFIG_PATH, version_base="1.3"):
        return compose(config_name="check", overrides=list(overrides))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=False)
    if any(arg in ("-h", "--help") for arg in argv):
        console.print(escape(USAGE), highlight=False)
        return 0
    try:
        cfg = _compose(argv)
    except Exception as exc:  # Hydra raises several types for bad overrides and missing choices
        console.print(f"[red]{escape(str(exc))}[/red]\n{escape(USAGE)}", highlight=False)
        return 2
    try:
        report = check(cfg, console)
    except OmegaConfBaseException as exc:  # e.g. "Missing mandatory value: data.root"
        console.print(f"[red]{escape(str(exc))}[/red]\n{escape(USAGE)}", highlight=False)
        return 2
    except (OSError, ValueError) as exc:
        console.print(f"[bold red]cannot check the dataset:[/bold red] {escape(str(exc))}", highlight=False)
        return 1
    render(report, console, int(cfg.get("max_listed", 50)))
    failed = bool(report.problems) or (bool(cfg.get("strict", False)) and bool(report.warnings))
    if cfg.get("report"):
        path = Path(str(cfg.report)).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**report.to_dict(), "exit_code": int(failed)}, indent=2) + "\n")
        console.print(f"report written to {escape(str(path))}", highlight=False)
    return int(failed)


if __name__ == "__main__":
    # Process-wide logging is the command's business, not main()'s (which tests call in-process).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cxrnet.data.build").setLevel(logging.ERROR)  # its warnings are notes of the report
    sys.exit(main())
