"""What the worker does and the page polls: a :class:`Task` per image, a :class:`Job` per upload (or browse row).

Plain state objects; the worker (:mod:`cxrnet.serve.worker`) moves a task from ``queued`` through ``running``
to ``done`` or ``error``, and the HTTP API reads them (:meth:`Job.status`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FINISHED", "Job", "Task"]

FINISHED = frozenset({"done", "error", "cancelled"})
"""Task states after which nothing changes."""


@dataclass
class Task:
    """One image to predict and render.

    Attributes:
        id: the result's id within its session (``r<n>``).
        name: what the page shows: the uploaded file's name, or the browse row's file name.
        image: the file to read (the upload in the private folder, or the browse row's image).
        folder: where the layers, masks and JSON go (exists before the task is queued).
        closed: set when the session ends; the worker then skips the task.
        source: ``"upload"`` or ``"browse"``.
        row: the browse row, for ``source="browse"``.
        status: ``queued``, ``running``, ``done``, ``error`` or ``cancelled``.
        error: why the image was refused, when ``status == "error"``.
        document: the result the page shows (:func:`cxrnet.serve.views.result_document`), when done.
        files: name → file in ``folder`` of each layer and download, when done.
        seconds: time from being picked up by the worker to done.
    """

    id: str
    name: str
    image: Path
    folder: Path
    closed: threading.Event
    source: str = "upload"
    row: int | None = None
    status: str = "queued"
    error: str | None = None
    document: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float | None = None

    def summary(self) -> dict[str, Any]:
        """The task as a job listing shows it."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "status": self.status, "error": self.error}
        if self.row is not None:
            out["row"] = self.row
        if self.document is not None:
            out["label"] = self.document.get("label")
        return out


@dataclass
class Job:
    """The tasks of one upload (or one browse row), for "n of m done" progress."""

    id: str
    tasks: list[Task]
    refused: list[dict[str, str]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """``{"job", "status", "done", "total", "items", "refused"}``; ``status`` is ``running`` or ``done``."""
        done = sum(task.status in FINISHED for task in self.tasks)
        return {
            "job": self.id,
            "status": "done" if done == len(self.tasks) else "running",
            "done": done,
            "total": len(self.tasks),
            "items": [task.summary() for task in self.tasks],
            "refused": list(self.refused),
        }
