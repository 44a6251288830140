"""Fuzzing the untrusted-input edges: mutated image files and checkpoints raise only the documented errors.

A few hundred deterministic cases per edge (``derandomize=True``); ``python tests/fuzz_run.py`` runs 10,000 of
each and writes the counts. A failure prints the smallest case hypothesis found.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz_cases import checkpoint_cases, image_cases, load_case, read_case

pytestmark = pytest.mark.slow

FUZZ_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    # Each example writes a file; hypothesis's fixture and slowness checks do not apply to that.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(FUZZ_SETTINGS, max_examples=1000)
@given(case=image_cases())
def test_mutated_image_files_raise_only_image_read_errors(case: tuple[str, str, bytes, bool]) -> None:
    _, suffix, data, as_mask = case
    with tempfile.TemporaryDirectory() as folder:
        assert read_case(Path(folder), suffix, data, as_mask) in ("ok", "ImageReadError")


@settings(FUZZ_SETTINGS, max_examples=200)
@given(case=checkpoint_cases())
def test_mutated_checkpoints_raise_only_checkpoint_errors(case: tuple[str, bytes]) -> None:
    _, data = case
    with tempfile.TemporaryDirectory() as folder:
        assert load_case(Path(folder), data) in ("ok", "CheckpointError")
