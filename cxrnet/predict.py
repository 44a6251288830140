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
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cxrnet.command import CONFIG_PATH
from cxrnet.inference import FileResult, Predictor, load_model
from cxrnet.output_lock import OutputFolderError, locked_output_folder
from cxrnet.predict_files import (
    CSV_NAME,
    JSONL_NAME,
    OVERLAY_DIR,
    UNTRAINED,
    csv_columns,
    load_finished,
    overlay_names,
    resolve_inputs,
    result_rows,
)
from cxrnet.report.overlay import render_overlay

log = logging.getLogger(__name__)

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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def forward_threads(value: Any, device: str) -> int | None:
    """torch's intra-op threads for predict's forward pass (``None``: leave torch's setting).

    ``auto`` on a CPU: one fewer than the usable cores, at least one. The spare core reads the next batch,
    builds the full-size maps and draws the overlays, which run in their own threads beside the network. On
    2 cores the quickstart network's bf16 forward even runs faster on one thread than on two (7-8 ms
    against 11-15 ms per image with ``OMP_WAIT_POLICY=PASSIVE``, 8 against 9-10 ms without), and predict
    over a folder of phantoms, with overlays drawn by :func:`overlay_workers`, ran 1.6x faster with overlays
    and 1.05-2.0x faster without (``benchmarks/run.py``, P4). With maps built in a thread of their own
    (:meth:`cxrnet.Predictor.predict_files`), predict without overlays reaches about 0.8 of the bare forward.
    On a GPU ``auto`` leaves torch's default. ``null`` leaves torch's default; a number sets it.
    """
    if value is None:
        return None
    if str(value).lower() == "auto":
        return None if torch.device(str(device)).type != "cpu" else max(1, usable_cores() - 1)
    threads = int(value)
    if threads < 1:
        raise ValueError(f"num_threads is {value!r}; expected auto, null or a number >= 1")
    return threads


def overlay_workers() -> int:
    """Threads drawing overlays: one per usable core, at most 4 (an overlay costs about 3x the quickstart
    network's forward pass on a CPU, so one thread alone held predict back; OpenCV's drawing and PNG
    encoding release the GIL). Measured on 2 cores: 2 threads 20 ms per image, 1 thread 25 ms, 3 threads
    22 ms."""
    return max(1, min(4, usable_cores()))


def _predict(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    threads = forward_threads(cfg.get("num_threads"), str(cfg.device))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _predict_files(cfg, out_dir)
    finally:
        torch.set_num_threads(before)  # predict(cfg) called from Python leaves the caller's setting


def _predict_files(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
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
    workers = overlay_workers() if cfg.overlays else 0
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
            row, record = result_rows(result, overlay, model.classes, model.severity_targets, overlay_error)
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
            _write_with_overlays(
                results, write, out_dir, names, max_pending=2 * int(cfg.batch_size), workers=workers
            )
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
        "num_threads": torch.get_num_threads(),
        "overlay_workers": workers,
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
    workers: int = 1,
) -> None:
    """Draw the overlays in ``workers`` background threads while the model goes on; write each row once its overlay is on disk.

    Rows keep the input order, and a row is written only after its overlay (a killed run never records
    a file whose overlay is missing). At most ``max_pending`` predictions wait for their overlay, so
    memory stays flat however many files there are.
    """
    waiting: deque[tuple[FileResult, Future[tuple[str | None, str | None]] | None]] = deque()

    def write_oldest() -> None:
        result, drawn = waiting.popleft()
        write(result, *(drawn.result() if drawn is not None else (None, None)))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxrnet-overlay") as pool:
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
    """Command-line entry point (Hydra): see ``conf/predict.yaml``."""
    if not OmegaConf.has_resolver("cxrnet_nearest_folder"):
        OmegaConf.register_new_resolver("cxrnet_nearest_folder", nearest_folder)
    hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")(_run)()


if __name__ == "__main__":
    main()
