"""``benchmarks/run.py`` runs end to end and writes the JSON its readers rely on (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.slow
def test_quick_run_writes_machine_section_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    job = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "P1,P5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
        cwd=tmp_path,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    result = json.loads(out.read_text())

    machine = result["machine"]
    for key in ("cpu_model", "cpu_count", "torch_threads", "torch", "numpy", "pytorch_lightning", "date"):
        assert key in machine
    assert set(machine["cpu_flags"]) >= {"avx512f", "avx512_bf16", "amx_bf16"}
    assert machine["OMP_WAIT_POLICY"] == "PASSIVE"
    assert len(machine["load_average_before"]) == len(machine["load_average_after"]) == 3

    assert result["errors"] == {}
    assert set(result["results"]) == {"P1", "P5"}
    targeted = {"P1": "lightning_over_bare", "P5": "cxrnet_over_unet"}
    for section, name in targeted.items():
        ratios = result["results"][section]["ratios"]
        for precision in result["precisions"]:
            entry = ratios[f"{name}/{precision}"]
            top, bottom = entry["numerator"], entry["denominator"]
            assert top["unit"] == bottom["unit"] == "s/step"
            assert len(top["rounds"]) == len(bottom["rounds"]) == len(entry["ratio"]["rounds"]) >= 2
            # The ratio is paired round by round, not a ratio of medians.
            for a, b, r in zip(top["rounds"], bottom["rounds"], entry["ratio"]["rounds"]):
                assert r == pytest.approx(a / b, rel=1e-2)
            assert {"median", "min", "max", "spread"} <= set(entry["ratio"])
            assert entry["target"]["op"] == "<=" and isinstance(entry["target"]["pass"], bool)
    assert {line["ratio"] for line in result["summary"]} >= {
        f"{section} {name}/{p}" for section, name in targeted.items() for p in result["precisions"]
    }


@pytest.mark.slow
def test_unknown_section_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    job = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "P9", "--out", str(tmp_path / "run.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert job.returncode == 2
    assert "P9" in job.stderr and "P1, P2, P3, P4, P5, ref" in job.stderr
    assert not (tmp_path / "run.json").exists()


@pytest.mark.slow
def test_explain_speed_writes_every_method_and_its_ratio(tmp_path: Path) -> None:
    out = tmp_path / "explain.json"
    script = SCRIPT.parent / "explain_speed.py"
    command = [sys.executable, str(script), "--size", "64", "--batch", "2", "--rounds", "1"]
    subprocess.run(
        [*command, "--methods", "native,gradcam", "--out", str(out)], check=True, capture_output=True
    )
    result = json.loads(out.read_text())
    assert set(result["arms"]) == {"forward", "forward+backward", "native", "gradcam"}
    assert set(result["ratios"]) == {"native/forward", "gradcam/forward+backward"}
    assert all(r["ratio"]["median"] > 0 for r in result["ratios"].values())
    assert result["machine"]["torch_threads"] >= 1 and result["settings"]["layers"]["gradcam"].startswith(
        "classifier_encoder"
    )
