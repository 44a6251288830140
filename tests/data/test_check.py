"""``python -m cxrnet.data.check``: counts, every problem named with its file, exit codes, JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrnet.data.check import main

from fixtures import box_mask, make_covid_qu_ex, natural, save

MASK = box_mask(slice(5, 30), slice(5, 40), (40, 48))


def make_manifest(root: Path, *, problems: bool, duplicate: bool = False) -> Path:
    """A manifest dataset of 12 good images (6 patients, 2 classes); with ``problems`` 5 bad rows more."""
    rows = ["path,label,patient_id,lung_mask"]
    for i in range(12):
        save(root / f"ok{i}.png", natural(i, (40, 48)))
        save(root / f"ok{i}_lung.png", MASK)
        rows.append(f"ok{i}.png,{('normal', 'covid')[i % 2]},P{i // 2},ok{i}_lung.png")
    if duplicate:
        save(root / "again.png", natural(3, (40, 48)))
        rows.append("again.png,covid,Q1,")
    if problems:
        (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
        save(root / "a.png", natural(20, (40, 48)))
        save(root / "small_mask.png", np.zeros((10, 10), np.uint8))
        save(root / "b.png", natural(21, (40, 48)))
        soft = MASK.copy()
        soft[6:9, 6:9] = 100
        save(root / "soft_mask.png", soft)
        save(root / "weird.png", natural(22, (40, 48)))
        rows += [
            "corrupt.png,normal,X1,",
            "a.png,normal,X2,small_mask.png",
            "b.png,covid,X3,soft_mask.png",
            "gone.png,normal,X4,",
            "weird.png,sarcoidosis,X5,",
        ]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def run_check(root: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    report = tmp_path / "out" / "report.json"
    code = main(
        [
            "data=folder",
            f"data.root={root}",
            "data.classes=[normal,covid19]",
            f"report={report}",
            *extra,
        ]
    )
    return code, json.loads(report.read_text())


def test_every_problem_is_listed_with_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_manifest(tmp_path / "data", problems=True)
    code, report = run_check(root, tmp_path, "data.on_unknown_label=exclude")
    assert code == 1 and report["exit_code"] == 1
    names = ("corrupt.png", "small_mask.png", "soft_mask.png", "gone.png", "weird.png")
    issues = report["problems"] + report["warnings"]
    found = {(p["kind"], p["problem"], name) for p in issues for name in names if f"/{name}" in p["path"]}
    assert len(report["problems"]) == 4
    assert found == {
        ("unreadable file", True, "corrupt.png"),
        ("mask size mismatch", True, "small_mask.png"),
        ("non-binary mask", False, "soft_mask.png"),  # thresholded at half range and used: a warning
        ("missing file", True, "gone.png"),
        ("unknown label", True, "weird.png"),
    }
    by_kind = {p["kind"]: p for p in issues}
    assert "mask 10x10 differs from image 40x48" in by_kind["mask size mismatch"]["detail"]
    assert by_kind["unknown label"]["detail"] == "sarcoidosis"
    assert not by_kind["non-binary mask"]["dropped"]
    # 12 good images + the one with a non-binary mask are used
    assert report["n_items"] == 13
    assert sum(rows["all"]["lung_masks"] for rows in report["counts"].values()) == 13
    out = capsys.readouterr().out
    assert all(name in out for name in names)


def test_unknown_labels_are_listed_even_when_training_would_stop(tmp_path: Path) -> None:
    root = make_manifest(tmp_path / "data", problems=True)
    code, report = run_check(root, tmp_path)  # on_unknown_label=error, on_missing=error for training
    assert code == 1
    assert {p["kind"] for p in report["problems"]} >= {"unknown label", "missing file"}


def test_clean_dataset_exits_zero_and_strict_fails_on_warnings(tmp_path: Path) -> None:
    code, report = run_check(make_manifest(tmp_path / "clean", problems=False), tmp_path)
    assert code == 0 and report["problems"] == [] and report["n_items"] == 12
    root = make_manifest(tmp_path / "dup", problems=False, duplicate=True)
    code, report = run_check(root, tmp_path)
    assert code == 0
    (warning,) = report["warnings"]
    assert warning["kind"] == "near-duplicate" and "again.png" in warning["detail"]
    assert [Path(p).name for p in report["duplicates"][0]] == ["ok3.png", "again.png"]
    assert run_check(root, tmp_path, "strict=true")[0] == 1


def test_counts_per_split_and_class(tmp_path: Path) -> None:
    root = make_covid_qu_ex(tmp_path / "quex")
    report_path = tmp_path / "r.json"
    assert main(["data=covid_qu_ex", f"data.root={root}", f"report={report_path}"]) == 0
    counts = json.loads(report_path.read_text())["counts"]
    sizes = {split: rows["all"]["images"] for split, rows in counts.items()}
    assert sizes == {"train": 5, "val": 3, "test": 6}
    covid = counts["test"]["covid19"]
    assert [covid[k] for k in ("images", "patients", "lung_masks", "infection_masks", "severity")] == [
        2,
        2,
        2,
        1,
        0,
    ]


def test_bad_command_lines_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "data=<name>" in capsys.readouterr().out
    assert main(["data=nope", f"data.root={tmp_path}"]) == 2
    assert main(["data=qata"]) == 2
    assert "full_key: data.root" in capsys.readouterr().out
    assert main(["data=qata", f"data.root={tmp_path / 'absent'}"]) == 1
    assert "cannot check the dataset" in capsys.readouterr().out


@pytest.mark.slow
def test_module_runs_from_any_directory_without_writing_there(tmp_path: Path) -> None:
    root = make_covid_qu_ex(tmp_path / "quex")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrnet.data.check",
            "data=covid_qu_ex",
            f"data.root={root}",
            f"report={report}",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems" in result.stdout
    assert json.loads(report.read_text())["n_items"] == 14
    assert list(cwd.iterdir()) == []


def test_the_check_sees_the_split_that_training_will(tmp_path: Path) -> None:
    from hydra import compose, initialize
    from hydra.utils import instantiate

    from cxrnet.conf import CONFIG_PATH

    root = make_manifest(tmp_path / "ds", problems=False)
    split = ["data.split_fractions={train: 0.5, val: 0.25, test: 0.25}", "seed=3", "data.num_workers=0"]
    code, report = run_check(root, tmp_path, *split)
    assert code == 0
    with initialize(config_path=CONFIG_PATH, version_base="1.3"):
        cfg = compose("check", ["data=folder", f"data.root={root}", "data.classes=[normal,covid19]", *split])
    datamodule = instantiate(
        cfg.data, _convert_="all"
    )  # what python -m cxrnet.train builds from the same data
    datamodule.setup()
    assert datamodule.report.counts == report["counts"]
