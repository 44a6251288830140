"""Browser sessions and their private folders: created by the page, deleted when it closes or goes quiet.

Every upload of a session lives in ``<root>/<session>/``, where ``<root>`` is a private temporary folder
(mode 0700) made when the server starts and removed when it stops. A session ends, and its folder is
deleted, on the page's close beacon (``pagehide``), after :attr:`~cxrnet.serve.settings.ServeSettings.session_ttl`
seconds without a request (the page pings while it is open), or when the server stops. A user who asks to
keep the uploads gets a copy of each upload and its results in the server's ``keep_dir``, which the session's
end leaves alone.

Session ids are random tokens (:func:`secrets.token_urlsafe`); they only ever look up a session, never name a
file.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxrnet.serve.jobs import Job, Task
from cxrnet.serve.settings import ServeSettings

__all__ = ["Session", "SessionLimitError", "SessionStore"]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SessionLimitError(RuntimeError):
    """As many sessions are open as the server allows."""


@dataclass
class Session:
    """One browser page's uploads and results.

    Attributes:
        id: the session's token.
        folder: its private folder (``uploads/`` and ``results/<result>/``).
        last_seen: clock time of its last request.
        closed: set when the session ends (the worker skips its remaining tasks).
        keep_folder: where its uploads and results are copied, once the user asked to keep them.
        jobs: job id → job.
        results: result id → task, in upload order.
    """

    id: str
    folder: Path
    last_seen: float
    closed: threading.Event = field(default_factory=threading.Event)
    keep_folder: Path | None = None
    jobs: dict[str, Job] = field(default_factory=dict)
    results: dict[str, Task] = field(default_factory=dict)
    _numbers: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_number(self) -> int:
        """A number unique in this session (upload file names, result and job ids)."""
        return next(self._numbers)

    @property
    def uploads(self) -> Path:
        return self.folder / "uploads"


class SessionStore:
    """The open sessions, their folders, their end and the copies kept on request.

    Args:
        settings: limits and lifetimes (``max_sessions``, ``session_ttl``, ``keep_dir``).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, settings: ServeSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.root = Path(tempfile.mkdtemp(prefix="cxrnet-serve-"))  # mode 0700: this user's only
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def create(self) -> Session:
        """Open a new session with its folder.

        Raises:
            SessionLimitError: ``max_sessions`` are open (after ending the idle ones).
        """
        self.sweep()
        sid = secrets.token_urlsafe(18)
        with self._lock:
            if len(self._sessions) >= self.settings.max_sessions:
                raise SessionLimitError(
                    f"{len(self._sessions)} viewer pages are open, the most this server allows "
                    f"(max_sessions={self.settings.max_sessions}); close one, or wait "
                    f"{self.settings.session_ttl:g} s for idle ones to expire"
                )
            session = Session(sid, self.root / sid, self.clock())
            session.uploads.mkdir(parents=True)
            (session.folder / "results").mkdir()
            self._sessions[sid] = session
        return session

    def get(self, sid: str) -> Session | None:
        """The open session ``sid`` (its clock restarted), or ``None``."""
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None:
                session.last_seen = self.clock()
            return session

    def close(self, sid: str) -> bool:
        """End session ``sid`` and delete its folder; returns whether it was open."""
        with self._lock:
            session = self._sessions.pop(sid, None)
        if session is None:
            return False
        session.closed.set()
        shutil.rmtree(session.folder, ignore_errors=True)
        log.info("session %s… closed: its uploads are deleted", sid[:6])
        return True

    def sweep(self) -> list[str]:
        """End the sessions idle for longer than ``session_ttl``; returns their ids."""
        limit = self.clock() - self.settings.session_ttl
        with self._lock:
            idle = [sid for sid, s in self._sessions.items() if s.last_seen < limit]
        for sid in idle:
            self.close(sid)
        return idle

    def keep(self, sid: str) -> Path:
        """Copy the session's uploads and results, now and from now on, into a folder of ``keep_dir``.

        Raises:
            KeyError: no such session.
            PermissionError: the server was started without ``keep_dir``.
        """
        if self.settings.keep_dir is None:
            raise PermissionError(
                "keeping uploads is off on this server; start it with keep_dir=<folder> to allow it"
            )
        session = self.get(sid)
        if session is None:
            raise KeyError(sid)
        if session.keep_folder is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder = self.settings.keep_dir / f"{stamp}-{sid[:8]}"
            folder.mkdir(parents=True, exist_ok=True)
            session.keep_folder = folder
            for task in list(session.results.values()):
                self.copy_kept(task, session)
        return session.keep_folder

    def copy_kept(self, task: Task, session: Session | None = None) -> None:
        """Copy a finished task's upload, masks and JSON into its session's keep folder, if it has one."""
        session = session or self._session_of(task)
        if session is None or session.keep_folder is None or task.status != "done":
            return
        stem = _UNSAFE.sub("_", Path(task.name).stem)[:60] or "image"
        prefix = f"{task.id}_{stem}"
        if task.source == "upload" and task.image.is_file():
            shutil.copyfile(task.image, session.keep_folder / f"{prefix}{task.image.suffix}")
        for name in ("json", "lung_mask", "infection_mask"):
            path = task.files.get(name)
            if path is not None and path.is_file():
                suffix = ".json" if name == "json" else f"_{name}.png"
                shutil.copyfile(path, session.keep_folder / f"{prefix}{suffix}")

    def _session_of(self, task: Task) -> Session | None:
        with self._lock:
            for session in self._sessions.values():
                if session.results.get(task.id) is task:
                    return session
        return None

    def start_sweeper(self, interval: float | None = None) -> None:
        """End idle sessions in a background thread, every ``interval`` seconds (default: a quarter of the TTL)."""
        every = interval or min(60.0, max(0.05, self.settings.session_ttl / 4))

        def run() -> None:
            while not self._stop.wait(every):
                try:
                    self.sweep()
                except Exception:
                    log.exception("session sweep failed")

        self._sweeper = threading.Thread(target=run, name="cxrnet-serve-sweeper", daemon=True)
        self._sweeper.start()

    def shutdown(self) -> None:
        """End every session and remove the root folder."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(5)
        with self._lock:
            ids = list(self._sessions)
        for sid in ids:
            self.close(sid)
        shutil.rmtree(self.root, ignore_errors=True)
