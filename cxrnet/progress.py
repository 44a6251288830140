"""Training progress people can follow anywhere: the rich bar on a terminal, plain lines in a log file.

A rich or tqdm bar redraws one line in place; written to a file (SLURM, ``nohup``, CI) it leaves a handful of
lines for a whole run. :class:`PlainProgress` prints one self-contained line per epoch, and every ``N``
optimiser steps on long epochs, with the headline metrics, the elapsed time and an estimate of the time left::

    epoch 3/30  step 150/1500  train/loss 0.812  val/score 0.734  val/cls/macro_f1 0.701  elapsed 2:31  eta 22:40

``python -m cxrnet.train progress.style=...`` chooses: ``auto`` (default: rich on a terminal, plain otherwise),
``rich`` or ``plain``; ``trainer.enable_progress_bar=false`` turns both off.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

STYLES = ("auto", "rich", "plain")

HEADLINE = (
    "train/loss",
    "val/loss",
    "val/score",
    "val/cls/macro_f1",
    "val/lung/dice_pooled",
    "val/infection/dice_pooled",
)
"""The metrics a progress line shows, when the run logs them."""

log = logging.getLogger(__name__)


def clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) of a duration in seconds; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _value(metrics: Mapping[str, Any], name: str) -> float | None:
    for key in (name, f"{name}_epoch", f"{name}_step"):
        if key in metrics:
            try:
                return float(metrics[key])
            except (TypeError, ValueError):
                return None
    return None


class PlainProgress(ProgressBar):
    """One plain line per epoch (and every ``every_n_steps`` optimiser steps) on ``stream``, for logs.

    Args:
        every_n_steps: also print a line every this many optimiser steps within an epoch; ``0`` chooses
            about ten lines per epoch for epochs longer than 200 steps, and none within shorter ones.
        stream: where the lines go (default ``sys.stdout``, looked up when printing).
    """

    def __init__(self, every_n_steps: int = 0, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ValueError(f"progress.every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._stream = stream
        self._enabled = True
        self._started = 0.0
        self._first_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _interval(self, trainer: pl.Trainer) -> int:
        if self.every_n_steps:
            return self.every_n_steps
        per_epoch = self.total_train_batches
        if not isinstance(per_epoch, int) or per_epoch <= 200:
            return 0
        return max(1, per_epoch // max(1, trainer.accumulate_grad_batches) // 10)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()
        self._first_step = trainer.global_step  # a resumed run estimates from its own pace

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        interval = self._interval(trainer)
        step = trainer.global_step
        if interval and step and step % interval == 0 and trainer.is_last_batch is False:
            self._print(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation runs before this hook, so the line carries the epoch's val metrics too.
        self._print(trainer)

    def _print(self, trainer: pl.Trainer) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        print(self.line(trainer), file=self._stream or sys.stdout, flush=True)

    def line(self, trainer: pl.Trainer) -> str:
        """The progress line for the trainer's current state."""
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        elapsed = time.monotonic() - self._started
        done = step - self._first_step
        total_known = isinstance(total, int | float) and math.isfinite(total)
        eta = elapsed / done * (total - step) if done > 0 and total_known else float("nan")
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{epochs}"]
        parts.append(f"step {step}/{int(total)}" if total_known else f"step {step}")
        metrics = trainer.callback_metrics
        for name in HEADLINE:
            value = _value(metrics, name)
            if value is not None:
                parts.append(f"{name} {value:.3f}")
        parts += [f"elapsed {clock(elapsed)}", f"eta {clock(eta)}"]
        return "  ".join(parts)


def progress_bar(style: str = "auto", every_n_steps: int = 0, stream: TextIO | None = None) -> ProgressBar:
    """The progress callback for ``style`` (see the module docstring): ``auto`` is rich when ``stream`` (default
    stdout) is a terminal and plain lines otherwise."""
    if style not in STYLES:
        raise ValueError(f"progress.style={style!r} is not one of {', '.join(STYLES)}")
    out = stream or sys.stdout
    if style == "auto":
        style = "rich" if getattr(out, "isatty", lambda: False)() else "plain"
    if style == "rich":
        return RichProgressBar()
    return PlainProgress(every_n_steps=every_n_steps, stream=stream)
