"""Interleaved rounds: every arm of a comparison measured once per round, in alternating order.

Measuring one side of a ratio for a minute and then the other lets a change in machine load (another
process, thermal throttling, the page cache) land on one side only. Here each round runs every arm once, the
order reversed every other round (A B, B A, A B, ...), and a ratio is computed per round from the two values
of that round, so a slow drift cancels. Reported: the median over rounds, the minimum and maximum, and the
spread (max - min) / median.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Arm:
    """One side of a comparison.

    Attributes:
        unit: unit of what ``run`` returns, e.g. ``"s/step"`` or ``"items/s"``.
        run: measures once and returns the value of this round (its own warm-up steps excluded).
        warmup: called once before the first round, result discarded; ``None``: call ``run`` once instead.
    """

    unit: str
    run: Callable[[], float]
    warmup: Callable[[], Any] | None = None


def interleave(arms: Mapping[str, Arm], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Run every arm once per round, reversing the order every other round.

    Args:
        arms: name → arm, in the order of the first round.
        rounds: number of rounds (>= 1).
        warmup: warm every arm up once first (its ``warmup``, or one discarded ``run``).

    Returns:
        name → the value of each round, in round order.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if warmup:
        for arm in arms.values():
            (arm.warmup or arm.run)()
    order = list(arms)
    values: dict[str, list[float]] = {name: [] for name in order}
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            values[name].append(float(arms[name].run()))
    return values


def series(values: Sequence[float], unit: str, digits: int = 4) -> dict[str, Any]:
    """Median, min, max and relative spread of per-round values, with the values themselves."""
    median = statistics.median(values)
    return {
        "unit": unit,
        "median": round(median, digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "spread": round((max(values) - min(values)) / median, 4) if median else None,
        "rounds": [round(v, digits) for v in values],
    }


@dataclass(frozen=True)
class Target:
    """A ratio's target: ``ratio <op> value``, with ``op`` one of ``"<="`` and ``">="``."""

    op: str
    value: float

    def check(self, ratio: float) -> bool:
        return ratio <= self.value if self.op == "<=" else ratio >= self.value

    def to_dict(self, ratio: float) -> dict[str, Any]:
        return {"op": self.op, "value": self.value, "pass": self.check(ratio)}


def ratio(
    values: Mapping[str, Sequence[float]],
    units: Mapping[str, str],
    numerator: str,
    denominator: str,
    target: Target | None = None,
    meaning: str = "",
) -> dict[str, Any]:
    """A ratio of two arms measured in the same rounds, computed round by round.

    Args:
        values: name → per-round values (from :func:`interleave`).
        units: name → unit of the arm.
        numerator: arm whose value is divided.
        denominator: arm it is divided by.
        target: what the median ratio should meet (``None``: reported only).
        meaning: one line saying what the ratio means, stored with it.

    Returns:
        ``{"meaning", "numerator": {"arm", **series}, "denominator": {...}, "ratio": series, "target"}``.
    """
    top, bottom = values[numerator], values[denominator]
    per_round = [a / b for a, b in zip(top, bottom)]
    result: dict[str, Any] = {
        "meaning": meaning,
        "numerator": {"arm": numerator, **series(top, units[numerator])},
        "denominator": {"arm": denominator, **series(bottom, units[denominator])},
        "ratio": series(per_round, "ratio"),
        "target": None,
    }
    if target is not None:
        result["target"] = target.to_dict(result["ratio"]["median"])
    return result
