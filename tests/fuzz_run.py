"""Long fuzz run of the image readers and the checkpoint loader; prints and writes the counts as JSON.

    python tests/fuzz_run.py [--readers 10000] [--checkpoints 10000] [--seed 0]
                             [--out benchmarks/results/fuzz.json]

Draws cases from the strategies of ``tests/fuzz_cases.py`` (the ones ``tests/test_fuzz.py`` runs a few
hundred of): mutated PNG (8/16-bit, gray/colour), JPEG, TIFF and DICOM (raw, deflated) files read with
``read_image`` / ``read_mask``, and mutated small checkpoints (metadata, stored YAML config, weights, zip
bytes, pickle stream) loaded with ``cxrnet.load_model`` and predicted on. Every case runs; none stops the
run. The JSON records, per target: cases, seconds, the slowest case, outcomes by type (``ok``, the documented
error, or anything else: an undocumented crash), the exception types behind the documented errors (what the
readers and loader turned into them), warnings by type, and each undocumented crash with its traceback and
a copy of the file under ``<out folder>/fuzz_crashes/``. Single process; deterministic for a given
``--seed``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

import cxrnet

from fuzz_cases import checkpoint_cases, image_cases, load_checked, read_checked

#: A case still running after this long is stopped and recorded as a hang.
CASE_TIMEOUT_S = 60
DOCUMENTED = {"readers": "ImageReadError", "checkpoints": "CheckpointError"}


class CaseTimeout(Exception):
    """A case ran longer than :data:`CASE_TIMEOUT_S`."""


def _expire(signum: int, frame: object) -> None:
    raise CaseTimeout(f"still running after {CASE_TIMEOUT_S} s")


def _causes(err: BaseException) -> list[str]:
    """Types of the exceptions an error was raised from (what a reader or the loader turned into it)."""
    names = []
    cause = err.__cause__ or err.__context__
    while cause is not None and len(names) < 5:
        names.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    return names


class Tally:
    """Outcomes of one target's cases."""

    def __init__(self, target: str, crash_dir: Path) -> None:
        self.target, self.crash_dir = target, crash_dir
        self.cases = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.causes: collections.Counter[str] = collections.Counter()
        self.warnings: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.crashes: list[dict[str, Any]] = []
        self.slowest = (0.0, "")
        self.started = time.perf_counter()

    def run(self, kind: str, data: bytes, case: Callable[[], str]) -> None:
        """Run one case, recording its outcome; an undocumented exception is recorded, never raised."""
        self.cases += 1
        self.kinds[kind] += 1
        start = time.perf_counter()
        signal.alarm(CASE_TIMEOUT_S)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                outcome = case()
            except Exception as err:
                outcome = type(err).__name__
                if outcome == DOCUMENTED[self.target]:  # raised by a step the case does not catch itself
                    self.causes.update(_causes(err))
                else:
                    self._crash(kind, data, err)
            finally:
                signal.alarm(0)
        seconds = time.perf_counter() - start
        if seconds > self.slowest[0]:
            self.slowest = (seconds, kind)
        self.outcomes[outcome] += 1
        self.warnings.update(type(w.message).__name__ for w in seen)

    def _crash(self, kind: str, data: bytes, err: BaseException) -> None:
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        copy = self.crash_dir / f"{self.target}-{len(self.crashes)}-{kind}.bin"
        copy.write_bytes(data)
        self.crashes.append(
            {
                "case": self.cases,
                "kind": kind,
                "type": type(err).__name__,
                "message": str(err)[:500],
                "traceback": traceback.format_exc()[-3000:],
                "file": str(copy),
            }
        )

    def summary(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        undocumented = {k: v for k, v in self.outcomes.items() if k not in ("ok", DOCUMENTED[self.target])}
        return {
            "cases": self.cases,
            "seconds": round(seconds, 1),
            "ms_per_case": round(1000 * seconds / max(self.cases, 1), 2),
            "slowest_case_s": round(self.slowest[0], 3),
            "slowest_case_kind": self.slowest[1],
            "cases_by_kind": dict(sorted(self.kinds.items())),
            "outcomes": dict(self.outcomes.most_common()),
            "documented_error_raised_from": dict(self.causes.most_common()),
            "warnings": dict(self.warnings.most_common()),
            "undocumented": undocumented,
            "crashes": self.crashes,
        }


def _case(folder: Path, name: str, data: bytes, check: Callable[[Path], None]) -> Callable[[], str]:
    def run() -> str:
        path = folder / name
        path.write_bytes(data)
        check(path)  # the documented error reaches Tally.run, which counts what it was raised from
        return "ok"

    return run


def fuzz_readers(n: int, seed: int, folder: Path, tally: Tally) -> None:
    """Run ``n`` reader cases (``read_image`` / ``read_mask`` on mutated image files)."""

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(image_cases())
    def one(case: tuple[str, str, bytes, bool]) -> None:
        name, suffix, data, as_mask = case
        check = functools.partial(read_checked, as_mask=as_mask)
        tally.run(f"{name}{'/mask' if as_mask else ''}", data, _case(folder, f"case{suffix}", data, check))

    _run_seeded(one, seed)


def fuzz_checkpoints(n: int, seed: int, folder: Path, tally: Tally) -> None:
    """Run ``n`` checkpoint cases (``load_model`` and one prediction on mutated small checkpoints)."""

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(checkpoint_cases())
    def one(case: tuple[str, bytes]) -> None:
        kind, data = case
        tally.run(kind, data, _case(folder, "case.ckpt", data, load_checked))

    _run_seeded(one, seed)


def _run_seeded(test: Callable[[], None], seed: int) -> None:
    hypothesis_seed(seed)(test)()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=10_000, help="image reader cases")
    parser.add_argument("--checkpoints", type=int, default=10_000, help="checkpoint loader cases")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (same seed, same cases)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core: the fuzz shares the machine
    signal.signal(signal.SIGALRM, _expire)
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "cxrnet": str(
            Path(cxrnet.__file__).parent
        ),  # the code under test (an editable install may point away)
        "load_average_before": [round(x, 2) for x in load_before],
    }
    crash_dir = args.out.parent / "fuzz_crashes"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for target, n, fuzz in (
            ("readers", args.readers, fuzz_readers),
            ("checkpoints", args.checkpoints, fuzz_checkpoints),
        ):
            if n <= 0:
                continue
            tally = Tally(target, crash_dir)
            fuzz(n, args.seed, folder, tally)
            results[target] = tally.summary()
            summary = results[target]
            print(
                f"{target}: {summary['cases']} cases in {summary['seconds']} s "
                f"({summary['ms_per_case']} ms each, slowest {summary['slowest_case_s']} s); "
                f"outcomes {summary['outcomes']}; undocumented {summary['undocumented'] or 'none'}",
                flush=True,
            )
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
