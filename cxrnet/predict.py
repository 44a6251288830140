"""Predict over many images: ``python -m cxrnet.predict checkpoint=<ckpt> input=<file|dir|glob> output_dir=<out>``.

Writes ``<out>/predictions.csv`` and ``<out>/predictions.jsonl`` (one row per input, written and flushed as
each image completes), ``<out>/overlays/<name>.png`` and ``<out>/summary.json``. Memory stays flat over any
number of files. A file that cannot be read or predicted becomes an error row and the run goes on; an
overlay that cannot be drawn leaves the row's numbers and names the reason in its ``error`` column.
Re-running with the same ``output_dir`` resumes: files already recorded are skipped, and a line
half-written by a killed run is dropped. Inputs are keyed by their resolved path, so a folder reached
through a symlink (or under another name) is not predicted again.

One run writes into an output folder at a time: a second run on the same folder while the first is still
going fails at once with ``another cxrnet.predict is writing to <folder> (pid N)``, or, with
``lock_wait=<seconds>``, waits for it and then skips what it wrote (see :mod:`cxrnet.output_lock`). A folder
that cannot be created or written is refused with one line naming it, before the model is loaded.

Outputs of heads that saw no training target (see :mod:`cxrnet.provenance`) are written as ``untrained``
in the CSV and left out of the JSONL records (which list them under ``untrained``); ``summary.json`` names
them and carries the model's caveats (e.g. trained on synthetic phantoms only).

``predict(cfg)`` does the work and can be called from Python with a composed config; ``main`` is the thin
Hydra wrapper.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cxrnet.command import CONFIG_PATH
from cxrnet.data.images import IMAGE_SUFFIXES, find_images, is_dicom
from cxrnet.inference import FileResult, Predictor, load_model
from cxrnet.output_lock import OutputFolderError, locked_output_folder
from cxrnet.report.overlay import render_overlay

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


def _records(
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


# ------------------------------------------------------------------------------------------- run


def _progress(enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image of ``cfg.input`` and write the outputs into ``cfg.output_dir``.

    Args:
        cfg: a composed ``predict.yaml`` config.

    Returns:
        Summary of this run: ``n_inputs``, ``n_ok``, ``n_error``, ``n_skipped`` (finished by an earlier run),
        ``n_remaining`` (left for a later run by ``limit``), ``seconds``, ``seconds_per_image``.

    Raises:
        OutputFolderError: ``cfg.output_dir`` cannot be created or written (the message names it).
        OutputFolderBusyError: another run is writing into ``cfg.output_dir`` and did not finish within
            ``cfg.lock_wait`` seconds.
    """
    out_dir = Path(cfg.output_dir)
    # The lock covers everything from reading what an earlier run left to the summary: a second run
    # repairing or appending meanwhile would duplicate rows or replace the CSV under the first run's feet.
    with locked_output_folder(out_dir, owner="cxrnet.predict", wait=cfg.get("lock_wait") or 0):
        return _predict(cfg, out_dir)


def _predict(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    specs = cfg.input if isinstance(cfg.input, (list, ListConfig)) else [cfg.input]
    paths, root = resolve_inputs([str(s) for s in specs], recursive=cfg.get("recursive", True))
    model: Predictor = load_model(
        cfg.checkpoint,
        device=cfg.device,
        batch_size=cfg.batch_size,
        precision=str(cfg.get("precision") or "auto"),
    )
    columns = csv_columns(model.classes, model.severity_targets)
    if model.untrained:
        log.warning(
            "%s: outputs of heads that saw no training target are written as %r, not as numbers: %s",
            cfg.checkpoint,
            UNTRAINED,
            ", ".join(sorted(model.untrained)),
        )
    # Phantom-only models warn through the warnings module, once, before the first file; the per-head
    # caveats of mixed training go to the log. All caveats also end up in summary.json and the last log line.
    model.warn_if_synthetic_only()
    for caveat in model.caveats:
        if not model.synthetic_only:
            log.warning("%s: %s", cfg.checkpoint, caveat)

    finished = load_finished(out_dir, columns, retry_errors=cfg.get("retry_errors", False))
    # Rows of runs before inputs were resolved name files as given: match them by the file they name.
    finished |= {str(Path(p).resolve()) for p in finished}
    names = overlay_names(paths, root)
    todo = [p for p in paths if str(p) not in finished]
    skipped = len(paths) - len(todo)
    limit = cfg.get("limit")
    remaining = 0
    if limit is not None and len(todo) > int(limit):
        todo, remaining = todo[: int(limit)], len(todo) - int(limit)
    log.info(
        "%d inputs under %s: %d to predict, %d already done in %s",
        len(paths),
        root,
        len(todo),
        skipped,
        out_dir,
    )

    overlay_dir = out_dir / OVERLAY_DIR
    counts = {"ok": 0, "error": 0}
    csv_path = out_dir / CSV_NAME
    new_csv = not csv_path.exists() or csv_path.stat().st_size == 0
    start = time.perf_counter()
    with (
        csv_path.open("a", newline="", encoding="utf-8") as csv_file,
        (out_dir / JSONL_NAME).open("a", encoding="utf-8") as jsonl_file,
        _progress(cfg.get("progress", True)) as progress,
    ):
        writer = csv.DictWriter(csv_file, fieldnames=columns, lineterminator="\n")
        if new_csv:
            writer.writeheader()
        task = progress.add_task("predict", total=len(todo), rate="")

        def write(result: FileResult, overlay: str | None, overlay_error: str | None) -> None:
            row, record = _records(result, overlay, model.classes, model.severity_targets, overlay_error)
            # JSONL first: a row counts as finished only once it is in both files.
            jsonl_file.write(json.dumps(record) + "\n")
            jsonl_file.flush()
            writer.writerow(row)
            csv_file.flush()
            counts[row["status"]] += 1
            if row["status"] == "error":
                log.warning("%s: %s", result.path, row["error"])
            done = counts["ok"] + counts["error"]
            progress.update(task, advance=1, rate=f"{(time.perf_counter() - start) / done:.2f} s/img")

        results = model.predict_files(todo, preview_size=cfg.get("overlay_size", 512))
        if cfg.overlays:
            _write_with_overlays(results, write, out_dir, names, max_pending=2 * int(cfg.batch_size))
        else:
            for result in results:
                write(result, None, None)
    seconds = time.perf_counter() - start
    done = counts["ok"] + counts["error"]
    summary = {
        "n_inputs": len(paths),
        "n_ok": counts["ok"],
        "n_error": counts["error"],
        "n_skipped": skipped,
        "n_remaining": remaining,
        "seconds": round(seconds, 3),
        "seconds_per_image": round(seconds / done, 4) if done else None,
        "output_dir": str(out_dir),
        "overlays": bool(cfg.overlays) and overlay_dir.exists(),
        "precision": model.precision,
        "untrained": sorted(model.untrained),
        "caveats": list(model.caveats),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    per_image = f"{summary['seconds_per_image']:.3f} s per image" if done else "nothing to do"
    log.info(
        "done: %d ok, %d error, %d skipped (already done)%s; %s; results in %s%s",
        counts["ok"],
        counts["error"],
        skipped,
        f", {remaining} left for a later run (limit={limit})" if remaining else "",
        per_image,
        out_dir / CSV_NAME,
        "".join(f"\n  caveat: {caveat}" for caveat in model.caveats),
    )
    return summary


def _write_with_overlays(
    results: Iterable[FileResult],
    write: Callable[[FileResult, str | None, str | None], None],
    out_dir: Path,
    names: dict[Path, str],
    max_pending: int,
) -> None:
    """Draw the overlays in a background thread while the model goes on; write each row once its overlay is on disk.

    Rows keep the input order, and a row is written only after its overlay (a killed run never records
    a file whose overlay is missing). At most ``max_pending`` predictions wait for their overlay, so
    memory stays flat however many files there are.
    """
    waiting: deque[tuple[FileResult, Future[tuple[str | None, str | None]] | None]] = deque()

    def write_oldest() -> None:
        result, drawn = waiting.popleft()
        write(result, *(drawn.result() if drawn is not None else (None, None)))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrnet-overlay") as pool:
        try:
            for result in results:
                drawn = None
                if result.prediction is not None:
                    drawn = pool.submit(_draw, result, out_dir, f"{OVERLAY_DIR}/{names[result.path]}")
                waiting.append((result, drawn))
                while waiting and (len(waiting) > max_pending or _done(waiting[0][1])):
                    write_oldest()
                del result, drawn
            while waiting:
                write_oldest()
        finally:
            for _, drawn in waiting:  # an interrupted run: drop what is not written yet
                if drawn is not None:
                    drawn.cancel()


def _done(future: Future[Any] | None) -> bool:
    return future is None or future.done()


def _draw(result: FileResult, out_dir: Path, overlay: str) -> tuple[str | None, str | None]:
    """Render one overlay; ``(relative path, None)``, or ``(None, reason)`` when it cannot be drawn.

    A figure that fails (an image shape matplotlib cannot draw, a full disk) must neither end the run nor
    lose the prediction's numbers, and a rerun must not stumble over the same file again.
    """
    try:
        render_overlay(result.preview, result.prediction, out_dir / overlay, title=str(result.path))
    except Exception as err:
        log.warning("%s: overlay not drawn", result.path, exc_info=True)
        return None, " ".join(f"{type(err).__name__}: {err}".split())
    return overlay, None


def _run(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except OutputFolderError as err:
        # One line, not a traceback: nothing failed in the program, the folder needs the user's attention.
        raise SystemExit(f"cxrnet.predict: {err}") from None


def nearest_folder(path: str) -> str:
    """``path`` when it is a folder, else its nearest existing ancestor (``${cxrnet_nearest_folder:...}``).

    Hydra's run directory: Hydra creates it before the job starts and would fail there with a traceback
    for a folder that cannot be created; :func:`predict` creates ``output_dir`` itself and says clearly
    what is wrong. Nothing is written into the ancestor (``hydra.output_subdir`` is null and the log
    file is named after ``output_dir``).
    """
    folder = Path(str(path)).expanduser().absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return str(folder)


def main() -> None:
    """Command-line entry point (Hydra): see ``cxrnet/conf/predict.yaml``."""
    if not OmegaConf.has_resolver("cxrnet_nearest_folder"):
        OmegaConf.register_new_resolver("cxrnet_nearest_folder", nearest_folder)
    hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")(_run)()


if __name__ == "__main__":
    main()
