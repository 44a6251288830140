"""One writer per output folder: an exclusive lock file, so that two runs never interleave their writes.

>>> with locked_output_folder("predictions", owner="cxrnet.predict"):
...     ...  # read what an earlier run left, append rows, rewrite files: nobody else writes here now

The lock is ``fcntl.flock`` on ``<folder>/.cxrnet.lock``. The kernel releases it when the holder exits, however
it exits (``kill -9`` included), so a crashed run never leaves a stale lock behind. The file itself stays
(deleting a lock file lets a third process lock a fresh one while the second still holds the old); it records
the last holder's pid, host and program, which the error of a refused run quotes. Advisory locks work on
local file systems and on NFS (through the NFS lock manager); where the file system has no locks at all, the
run goes on with a warning.

A folder that cannot be created or written is refused up front with :class:`OutputFolderError` naming it,
before any model is loaded.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go on unlocked, with a warning
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "OutputFolderBusyError", "OutputFolderError", "locked_output_folder"]

log = logging.getLogger(__name__)

LOCK_NAME = ".cxrnet.lock"
"""Name of the lock file inside a locked output folder."""

POLL_SECONDS = 0.5
"""How often a waiting run tries the lock again."""


class OutputFolderError(RuntimeError):
    """The output folder cannot be used: it cannot be created or written, or another run holds it.

    Attributes:
        folder: the folder, as given.
    """

    def __init__(self, folder: str | os.PathLike[str], message: str) -> None:
        self.folder = str(folder)
        super().__init__(message)


class OutputFolderBusyError(OutputFolderError):
    """Another process holds the folder's lock.

    Attributes:
        pid: the holder's process id, when it recorded one.
    """

    def __init__(self, folder: str | os.PathLike[str], message: str, pid: int | None) -> None:
        self.pid = pid
        super().__init__(folder, message)


@contextmanager
def locked_output_folder(
    folder: str | os.PathLike[str], owner: str = "cxrnet.predict", wait: float = 0.0
) -> Iterator[Path]:
    """Create ``folder`` if needed, check that it can be written, and hold its lock for the ``with`` block.

    Args:
        folder: the output folder.
        owner: the program taking the lock, quoted by the error another run gets (e.g. ``"cxrnet.predict"``).
        wait: seconds to wait for another holder to finish before giving up; 0 gives up at once.

    Yields:
        The folder, as a :class:`~pathlib.Path`.

    Raises:
        OutputFolderError: the folder is a file, or cannot be created or written (read-only, no permission).
        OutputFolderBusyError: another process still holds the lock after ``wait`` seconds.
        ValueError: ``wait`` is negative or not a number.
    """
    folder = Path(folder)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise ValueError(f"lock_wait={wait!r} must be a number of seconds >= 0 (0: refuse at once)")
    _check_writable(folder)
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputFolderError(folder, _unwritable(folder, err)) from None
    try:
        if _acquire(fd, folder, owner, float(wait)):
            # Who holds it, for the message of a refused run; written only once the lock is ours.
            record = f"{os.getpid()} {socket.gethostname()} {owner}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def _check_writable(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(
            folder, f"output folder {folder} is a file, not a folder; choose another output_dir"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Creating the lock file is not proof enough: it may exist already in a folder that is now read-only.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputFolderError(folder, _unwritable(folder, err)) from None


def _unwritable(folder: Path, err: OSError) -> str:
    reason = err.strerror or type(err).__name__
    return (
        f"cannot write to output folder {folder} ({reason}); choose a writable output_dir, "
        "or make this folder writable"
    )


def _acquire(fd: int, folder: Path, owner: str, wait: float) -> bool:
    """Take the lock on ``fd``; ``False`` when locks are unavailable here and the run goes on without one."""
    if fcntl is None:
        log.warning(
            "%s: no file locks on this platform; do not run two programs on this folder at once", folder
        )
        return False
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                log.warning(
                    "%s: cannot lock %s (%s); going on unlocked: do not run two programs on this folder at once",
                    folder,
                    LOCK_NAME,
                    err.strerror,
                )
                return False
        pid, holder = _holder(fd)
        left = deadline - time.monotonic()
        if left <= 0:
            shown = f"pid {pid}" if pid is not None else "pid unknown"
            raise OutputFolderBusyError(
                folder,
                f"another {holder or owner} is writing to {folder} ({shown}); wait for it to finish (or pass "
                "lock_wait=<seconds> to wait for it), or choose another output_dir",
                pid,
            )
        if not announced:
            log.info(
                "%s is in use by another %s (pid %s); waiting up to %g s", folder, holder or owner, pid, wait
            )
            announced = True
        time.sleep(min(POLL_SECONDS, left))


def _holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and program recorded by the lock's holder (``None`` when not recorded yet)."""
    try:
        fields = os.pread(fd, 512, 0).decode("utf-8", errors="replace").split()
    except OSError:
        return None, None
    pid = int(fields[0]) if fields and fields[0].isdigit() else None
    host = fields[1] if len(fields) > 1 else None
    program = fields[2] if len(fields) > 2 else None
    if pid is not None and host and host != socket.gethostname():
        program = f"{program or 'program'} on host {host}"
    return pid, program
