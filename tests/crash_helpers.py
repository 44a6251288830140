"""Fault injection for the crash-safety tests: training subprocesses that stop at a known point to be killed.

Both hooks are reached through the Hydra command line of ``python -m cxrnet.train`` (this folder on
``PYTHONPATH``), write a marker file when they reach their point and then block, so that the test can
``kill -9`` the process exactly there.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl

from cxrnet.callbacks import AtomicCheckpointIO


def _block(marker: str, what: str) -> None:
    Path(marker).write_text(f"{os.getpid()} {what}\n")
    time.sleep(3600)  # until the test kills the process


class PauseAtBatch(pl.Callback):
    """Block before training batch ``batch`` of epoch ``epoch`` (mid-epoch), after writing ``marker``."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, marker

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            _block(self.marker, f"epoch {self.epoch} batch {self.batch}")


class PauseInSave(AtomicCheckpointIO):
    """Checkpoint IO that blocks half-way through writing the ``nth`` save of the file called ``name``."""

    def __init__(self, name: str, nth: int, marker: str) -> None:
        super().__init__()
        self.name, self.nth, self.marker = name, nth, marker
        self.count = 0

    def write(self, checkpoint: dict[str, Any], handle: IO[bytes]) -> None:
        # The temporary file is ".<name>.partial-<host>-<pid>-<token>" next to the checkpoint.
        if not Path(handle.name).name.startswith(f".{self.name}."):
            return super().write(checkpoint, handle)
        self.count += 1
        if self.count < self.nth:
            return super().write(checkpoint, handle)
        buffer = io.BytesIO()
        super().write(checkpoint, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        _block(self.marker, f"half-way through save {self.nth} of {self.name} ({len(data)} bytes)")
        return None
