"""The one thread that runs the model: tasks in through a queue, layers and results out, off the request path.

The HTTP handlers only queue :class:`~cxrnet.serve.jobs.Task` objects and read their state, so the page keeps
answering while an image is predicted; images are predicted one at a time, in the order they arrived, each
through :meth:`cxrnet.predictor.Predictor.predict_files` (which reads it with cxrnet's limits and turns a file
that cannot be read into its reason). A task whose session has ended meanwhile is skipped, and whatever it
wrote is deleted with the session's folder.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable

from cxrnet.data.images import TruncatedImageWarning
from cxrnet.prediction import FileResult
from cxrnet.predictor import Predictor
from cxrnet.report.overlay_content import panel_contents
from cxrnet.serve.jobs import Task
from cxrnet.serve.layers import (
    COLOR_MAPS,
    contour_layer,
    encode_png,
    heat_layer,
    image_png,
    mask_png,
    zone_layer,
)
from cxrnet.serve.views import result_document

__all__ = ["Worker", "render_result"]

log = logging.getLogger(__name__)


def render_result(task: Task, result: FileResult, notes: list[str]) -> None:
    """Write the layers, masks and JSON of a finished prediction into ``task.folder`` and fill in the task.

    Raises:
        OSError: the folder is gone (the session ended) or the disk is full.
    """
    prediction, preview = result.prediction, result.preview
    assert prediction is not None and preview is not None
    contents = panel_contents(preview, prediction, max(preview.shape))
    files: dict[str, bytes] = {"image": image_png(contents.image)}
    drawn = {"lung": False, "infection": False, "explanation": False, "zones": False}
    marks: list[dict] = []
    if contents.lungs is not None:
        files["lung"] = encode_png(contour_layer(contents.lungs))
        zones, marks = zone_layer(contents.lungs)
        files["zones"] = encode_png(zones)
        drawn["lung"] = drawn["zones"] = True
    for name in ("infection", "explanation"):
        values = getattr(contents, name)
        if values is not None:
            files[name] = encode_png(heat_layer(values, COLOR_MAPS[name]))
            drawn[name] = True
    downloads = []
    if prediction.lung_mask is not None and "lung_mask" not in prediction.untrained:
        files["lung_mask"] = mask_png(prediction.lung_mask)
        downloads.append("lung_mask")
    if prediction.infection_map is not None and "infection_map" not in prediction.untrained:
        files["infection_mask"] = mask_png(prediction.infection_map > 0.5)
        downloads.append("infection_mask")
    downloads.append("json")
    document = result_document(
        prediction,
        result_id=task.id,
        name=task.name,
        preview_shape=contents.image.shape,
        layers=drawn,
        zone_marks=marks,
        downloads=downloads,
        notes=notes,
        source=task.source,
        row=task.row,
    )
    record = {"name": task.name, **prediction.to_dict(), "notes": notes}
    # An upload's source is a file in the private folder: meaningless to the user, so the name stands in.
    record["meta"]["source"] = task.name if task.source == "upload" else str(task.image)
    files["json"] = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    written = {}
    for name, data in files.items():
        path = task.folder / ("prediction.json" if name == "json" else f"{name}.png")
        path.write_bytes(data)  # no mkdir: a session deleted meanwhile must not come back
        written[name] = path
    task.files = written
    task.document = document


class Worker:
    """A single thread predicting queued tasks in order.

    Args:
        predictor: the model.
        preview_size: longer side of the preview the layers are drawn at.
        on_done: called with each finished task (``done`` or ``error``), in the worker thread.
    """

    def __init__(
        self, predictor: Predictor, preview_size: int, on_done: Callable[[Task], None] | None = None
    ) -> None:
        self.predictor = predictor
        self.preview_size = preview_size
        self.on_done = on_done
        self._queue: queue.Queue[Task | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cxrnet-serve-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the current task finish, drop the rest, and end the thread."""
        while True:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task.status = "cancelled"
                self._finished()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def pending(self) -> int:
        """Tasks queued or running."""
        with self._lock:
            return self._pending

    def submit(self, tasks: list[Task], limit: int) -> bool:
        """Queue ``tasks`` unless that would put more than ``limit`` tasks in the queue; returns whether queued."""
        with self._lock:
            if self._pending + len(tasks) > limit:
                return False
            self._pending += len(tasks)
        for task in tasks:
            self._queue.put(task)
        return True

    def _finished(self) -> None:
        with self._lock:
            self._pending -= 1

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                self._process(task)
            except Exception:  # the thread must outlive any one image
                log.exception("unexpected error on %s", task.name)
                task.error, task.status = (
                    "internal error while predicting this image (see the server log)",
                    "error",
                )
            finally:
                self._finished()
            if self.on_done is not None and task.status in ("done", "error"):
                try:
                    self.on_done(task)
                except Exception:
                    log.exception("after %s", task.name)

    def _process(self, task: Task) -> None:
        if task.closed.is_set():
            task.status = "cancelled"
            return
        task.status = "running"
        start = time.perf_counter()
        # Recorded rather than shown: a file that ends early but is read anyway is a note on its result. (The
        # filter is process-wide; only this thread predicts, and the others rarely warn.)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedImageWarning)
            result = next(
                iter(
                    self.predictor.predict_files(
                        [task.image], batch_size=1, preview_size=self.preview_size, read_ahead=False
                    )
                )
            )
        # The reader's warnings name the private file; the user knows it by its name.
        notes = [
            str(w.message).replace(str(task.image), task.name)
            for w in caught
            if issubclass(w.category, TruncatedImageWarning)
        ]
        if task.closed.is_set():  # its upload may be gone already: no error to report to anyone
            task.status = "cancelled"
            return
        if result.prediction is None:
            task.error = f"cannot read {task.name}: {result.error}"
            task.status = "error"
            return
        try:
            render_result(task, result, notes)
        except OSError:
            if task.closed.is_set():  # the session's folder went away while we drew
                task.status = "cancelled"
                return
            raise
        task.seconds = round(time.perf_counter() - start, 3)
        task.status = "done"
