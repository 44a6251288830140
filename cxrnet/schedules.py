"""Learning-rate schedules that finish inside the budget a run is given, in steps or in wall time.

A one-cycle schedule sized by ``max_epochs`` but cut short by ``trainer.max_time`` stops wherever the clock
runs out, often still near its peak or in its warm-up. :class:`BudgetedOneCycle` follows the same shape
(linear warm-up, cosine annealing to ``final_lr``) over a *progress* that is the larger of the share of steps
done and the share of the time budget used, so it reaches its end when either runs out.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["BudgetedOneCycle"]


class BudgetedOneCycle(LRScheduler):
    """Warm-up then cosine decay over ``max(step / total_steps, elapsed / max_seconds)``; stepped per batch.

    Args:
        optimizer: the optimiser; its learning rates at construction are the peak rates.
        total_steps: optimiser steps planned (Lightning's ``estimated_stepping_batches``).
        max_seconds: wall-time budget of the training loop, or ``None`` for steps only. The clock starts when
            the scheduler is built (Lightning builds it as fit starts, after the data scan); the time used is
            kept in ``state_dict``, so a resumed run continues where the budget stood.
        pct_start: share of the progress spent warming up from ``peak / div_factor``.
        div_factor: peak / initial learning rate.
        final_div_factor: peak / final learning rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        max_seconds: float | None = None,
        pct_start: float = 0.15,
        div_factor: float = 25.0,
        final_div_factor: float = 1e3,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be >= 1")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds={max_seconds} must be positive (or None)")
        if not 0.0 <= pct_start < 1.0:
            raise ValueError(f"pct_start={pct_start} must be in [0, 1)")
        self.total_steps = int(total_steps)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.elapsed = 0.0
        self._clock: float | None = None
        super().__init__(optimizer)

    def progress(self) -> float:
        """Share of the budget used, in [0, 1]: the larger of steps done and time used."""
        steps = self.last_epoch / self.total_steps
        seconds = self.elapsed / self.max_seconds if self.max_seconds else 0.0
        return min(1.0, max(steps, seconds))

    def factor(self, progress: float) -> float:
        """Learning rate / peak at ``progress``."""
        start, end = 1.0 / self.div_factor, 1.0 / self.final_div_factor
        if progress < self.pct_start:
            return start + (1.0 - start) * progress / self.pct_start
        t = (progress - self.pct_start) / max(1e-12, 1.0 - self.pct_start)
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        now = time.monotonic()
        if self._clock is not None:
            self.elapsed += now - self._clock
        self._clock = now
        super().step(epoch)

    def get_lr(self) -> list[float]:
        factor = self.factor(self.progress())
        return [group["initial_lr"] * factor for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_clock", None)  # a monotonic reading means nothing in another process
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._clock = None
