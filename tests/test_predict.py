"""Batch prediction over folders: rows per file, error rows, overlays, resuming after a kill, the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import cxrnet.predict
from cxrnet.data.phantoms import write_phantom_folder
from cxrnet.inference import SyntheticTrainingWarning
from cxrnet.predict import predict
from cxrnet.predict_files import UNTRAINED, csv_columns, load_finished, overlay_names, resolve_inputs
from cxrnet.provenance import SYNTHETIC_CAVEAT

from inference_helpers import (
    CLASSES,
    SEVERITY_TARGETS,
    cohen_heads,
    radiograph,
    synthetic_heads,
    tiny_checkpoint,
    write_corrupt_files,
    write_monochrome1_dicom,
    write_png,
    write_tiny_checkpoint,
)

__all__ = ["tiny_checkpoint"]  # a fixture, used by name

N_PHANTOMS = 50


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 phantoms at 96 px, 3 corrupt files and a DICOM whose stem repeats a phantom's (in a sub-folder)."""
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_folder(root, N_PHANTOMS, size=96)
    images = root / "images"
    write_corrupt_files(images / "broken")
    twin = sorted(images.glob("*.png"))[0].stem
    write_monochrome1_dicom(images / "scans" / f"{twin}.dcm", radiograph(80, 72).astype("uint16") * 100)
    return images


def compose_predict(checkpoint: Path, input: Path | str, output_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(
            config_name="predict",
            overrides=[
                f"checkpoint={checkpoint}",
                f"input={input}",
                f"output_dir={output_dir}",
                "progress=false",
                "batch_size=8",
                *overrides,
            ],
        )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_outputs(
    out: Path, overlays: bool = True, n_ok: int = N_PHANTOMS + 1, n_error: int = 3
) -> list[dict[str, str]]:
    rows = read_csv(out / "predictions.csv")
    records = read_jsonl(out / "predictions.jsonl")
    assert len(rows) == len(records) == n_ok + n_error
    assert len({r["path"] for r in rows}) == len(rows), "duplicate rows"
    assert {r["path"] for r in rows} == {r["path"] for r in records}
    assert list(rows[0]) == csv_columns(CLASSES, SEVERITY_TARGETS)
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == n_error and all(r["error"] for r in errors)
    assert {Path(r["path"]).name for r in errors} == {"truncated.png", "random_bytes.jpg", "empty.png"}
    assert any("empty" in r["error"] for r in errors)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == n_ok
    for row in ok:
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] in CLASSES and row["grade"] in {"none", "mild", "moderate", "severe"}
        assert 0 <= int(row["brixia_total"]) <= 18 and 0 <= float(row["infected_fraction_left"]) <= 1
        assert row["learned_brixia"]
        assert (out / row["overlay"]).is_file() if overlays else row["overlay"] == ""
    record = next(r for r in records if r["status"] == "ok")
    assert set(record["severity"]) == {"from_maps", "learned"} and list(record["probabilities"]) == CLASSES
    written = sorted((out / "overlays").glob("*.png"))
    assert len(written) == (n_ok if overlays else 0), "overlay names must be unique"
    return rows


def test_folder_with_corrupt_files_gives_one_row_per_file(
    tiny_checkpoint: Path, folder: Path, tmp_path: Path
) -> None:
    summary = predict(compose_predict(tiny_checkpoint, folder, tmp_path, "overlays=false", "batch_size=16"))
    assert (summary["n_ok"], summary["n_error"], summary["n_skipped"]) == (N_PHANTOMS + 1, 3, 0)
    assert summary["seconds_per_image"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    check_outputs(tmp_path, overlays=False)


@pytest.mark.slow
def test_overlays_and_resume_after_a_kill(tiny_checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = predict(compose_predict(tiny_checkpoint, folder, out, "limit=20"))
    assert (first["n_ok"] + first["n_error"], first["n_remaining"]) == (20, 34)
    overlays_before = {p.name: p.stat().st_mtime_ns for p in (out / "overlays").glob("*.png")}

    # Simulate a kill mid-write: a half row in each file, and one row that reached the JSONL but not the CSV.
    extra = read_jsonl(out / "predictions.jsonl")[-1]
    lines = (out / "predictions.csv").read_text().splitlines(keepends=True)
    (out / "predictions.csv").write_text("".join(lines[:-1]) + lines[-1][:25])
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"path": "/half/written.png", "stat')
    unfinished = extra["path"]

    second = predict(compose_predict(tiny_checkpoint, folder, out))
    assert second["n_skipped"] == 19  # the row cut from the CSV is redone
    assert second["n_ok"] + second["n_error"] == N_PHANTOMS + 4 - 19
    assert second["n_remaining"] == 0
    rows = check_outputs(out)
    assert unfinished in {r["path"] for r in rows}
    unchanged = [
        name for name, t in overlays_before.items() if (out / "overlays" / name).stat().st_mtime_ns == t
    ]
    assert len(unchanged) >= len(overlays_before) - 1, "finished files were predicted again"

    third = predict(compose_predict(tiny_checkpoint, folder, out))
    assert (third["n_ok"], third["n_error"], third["n_skipped"]) == (0, 0, N_PHANTOMS + 4)
    check_outputs(out)
    retried = predict(compose_predict(tiny_checkpoint, folder, out, "retry_errors=true", "overlays=false"))
    assert (retried["n_ok"], retried["n_error"], retried["n_skipped"]) == (0, 3, N_PHANTOMS + 1)
    check_outputs(out)


def test_resume_refuses_outputs_of_another_model(tmp_path: Path) -> None:
    (tmp_path / "predictions.csv").write_text("path,status,error,label,prob_a,prob_b\n")
    with pytest.raises(ValueError, match="another output_dir"):
        load_finished(tmp_path, csv_columns(CLASSES, []))


def test_load_finished_repairs_files(tmp_path: Path) -> None:
    columns = ["path", "status", "error"]
    (tmp_path / "predictions.csv").write_text("path,status,error\na,ok,\nb,error,bad\nc,ok,\nd,o")
    jsonl = [{"path": p, "status": s} for p, s in (("a", "ok"), ("b", "error"), ("a", "ok"), ("d", "ok"))]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl) + "not json\n")
    assert load_finished(tmp_path, columns) == {"a", "b"}
    assert (tmp_path / "predictions.csv").read_text() == "path,status,error\na,ok,\nb,error,bad\n"
    assert [r["path"] for r in read_jsonl(tmp_path / "predictions.jsonl")] == ["a", "b"]
    assert load_finished(tmp_path, columns, retry_errors=True) == {"a"}


def test_inputs_from_file_folder_and_glob(tmp_path: Path) -> None:
    for name in ("a/x.png", "a/y.jpg", "b/x.png", "b/notes.txt", "b/x.dcm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    paths, root = resolve_inputs(str(tmp_path))
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a/x.png", "a/y.jpg", "b/x.dcm", "b/x.png"]
    assert root == tmp_path.absolute()
    names = overlay_names(paths, root)
    assert sorted(names.values()) == ["a__x.png", "b__x_dcm.png", "b__x_png.png", "y.png"]
    globbed, _ = resolve_inputs(f"{tmp_path}/**/x.*")
    assert sorted(p.name for p in globbed) == ["x.dcm", "x.png", "x.png"]
    assert resolve_inputs(str(tmp_path / "a" / "x.png"))[0] == [tmp_path.absolute() / "a" / "x.png"]
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a glob"):
        resolve_inputs(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        resolve_inputs(f"{tmp_path}/*.txt")


@pytest.mark.slow
def test_command_line_writes_only_into_output_dir(tiny_checkpoint: Path, tmp_path: Path) -> None:
    images = [write_png(tmp_path / "in" / f"cxr{i}.png", radiograph(70, 60, seed=i)) for i in range(3)]
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    command = [
        sys.executable,
        "-m",
        "cxrnet.predict",
        f"checkpoint={tiny_checkpoint}",
        f"input={tmp_path / 'in'}",
        f"output_dir={out}",
        "batch_size=2",
        "num_threads=2",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 ok, 0 error, 0 skipped" in done.stdout + done.stderr
    assert list(cwd.iterdir()) == [], "the run must not write into the working directory"
    assert not (out / ".hydra").exists()
    rows = read_csv(out / "predictions.csv")
    assert [Path(r["path"]).name for r in rows] == [p.name for p in images]
    assert len(list((out / "overlays").glob("*.png"))) == 3


ODD_SHAPES = {"one": (1, 1), "two": (2, 2), "tall": (30000, 20), "wide": (20, 30000), "line": (1, 400)}


def test_tiny_and_extreme_images_give_one_row_each_and_reruns_do_not_stumble(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    images = tmp_path / "in"
    for name, shape in ODD_SHAPES.items():
        write_png(images / f"{name}.png", np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    write_png(images / "normal.png", radiograph(80, 70))
    (images / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    summary = predict(compose_predict(tiny_checkpoint, images, out))
    assert (summary["n_ok"], summary["n_error"]) == (len(ODD_SHAPES) + 1, 1)
    rows = {Path(r["path"]).stem: r for r in read_csv(out / "predictions.csv")}
    assert len(rows) == len(ODD_SHAPES) + 2 == len(read_jsonl(out / "predictions.jsonl"))
    for name, shape in ODD_SHAPES.items():
        row = rows[name]
        assert (row["status"], row["error"]) == ("ok", ""), row
        assert (int(row["height"]), int(row["width"])) == shape
        assert (out / row["overlay"]).is_file()
    assert rows["empty"]["status"] == "error"
    again = predict(compose_predict(tiny_checkpoint, images, out))
    assert (again["n_ok"], again["n_error"], again["n_skipped"]) == (0, 0, len(ODD_SHAPES) + 2)


def test_an_overlay_that_cannot_be_drawn_keeps_the_row(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [write_png(tmp_path / "in" / f"cxr{i}.png", radiograph(60, 50, seed=i)) for i in range(3)]
    real = cxrnet.predict.render_overlay

    def fails_on_cxr1(image: np.ndarray, prediction: object, path: Path, **kwargs: object) -> Path:
        if "cxr1" in str(path):
            raise TypeError("Input z must be at least a (2, 2) shaped array")
        return real(image, prediction, path, **kwargs)

    monkeypatch.setattr(cxrnet.predict, "render_overlay", fails_on_cxr1)
    out = tmp_path / "out"
    summary = predict(compose_predict(tiny_checkpoint, tmp_path / "in", out))
    assert (summary["n_ok"], summary["n_error"]) == (3, 0)
    rows = read_csv(out / "predictions.csv")
    assert [r["status"] for r in rows] == ["ok"] * 3 and all(r["label"] in CLASSES for r in rows)
    failed = next(r for r in rows if Path(r["path"]) == images[1].absolute())
    assert failed["overlay"] == "" and failed["error"].startswith("overlay not drawn: TypeError")
    record = next(r for r in read_jsonl(out / "predictions.jsonl") if r["path"] == failed["path"])
    assert record["overlay"] is None and record["error"] == failed["error"]
    assert predict(compose_predict(tiny_checkpoint, tmp_path / "in", out))["n_skipped"] == 3


def test_outputs_of_untrained_heads_are_written_as_untrained(tmp_path: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "cohen.ckpt", heads=cohen_heads())
    for i in range(2):
        write_png(tmp_path / "in" / f"cxr{i}.png", radiograph(70, 60, seed=i))
    out = tmp_path / "out"
    summary = predict(compose_predict(ckpt, tmp_path / "in", out))
    assert summary["untrained"] == ["infection_map", "severity.from_maps", "severity.learned.brixia"]
    assert summary["caveats"] == []
    for row in read_csv(out / "predictions.csv"):
        assert row["status"] == "ok" and row["label"] in CLASSES
        for column in ("infected_fraction_right", "brixia_total", "grade", "learned_brixia"):
            assert row[column] == UNTRAINED, column
        assert float(row["learned_geographic_extent"]) >= 0 and float(row["prob_covid19"]) > 0
    for record in read_jsonl(out / "predictions.jsonl"):
        assert record["untrained"] == summary["untrained"]
        assert set(record["severity"]) == {"learned"} and set(record["severity"]["learned"]) == {
            "geographic_extent"
        }


def test_a_phantom_only_model_says_so_in_its_outputs(tmp_path: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "synthetic.ckpt", heads=synthetic_heads())
    write_png(tmp_path / "in" / "cxr.png", radiograph(70, 60))
    with pytest.warns(SyntheticTrainingWarning, match="synthetic phantoms only"):
        summary = predict(compose_predict(ckpt, tmp_path / "in", tmp_path / "out", "overlays=false"))
    assert summary["caveats"] == [SYNTHETIC_CAVEAT] and summary["untrained"] == []
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["caveats"] == [SYNTHETIC_CAVEAT]
    (record,) = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert record["caveats"] == [SYNTHETIC_CAVEAT] and "from_maps" in record["severity"]


def test_num_threads_auto_leaves_one_core_and_predict_restores_the_callers_setting(
    tiny_checkpoint: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cxrnet.predict, "usable_cores", lambda: 4)
    assert cxrnet.predict.forward_threads("auto", "cpu") == 3
    assert cxrnet.predict.forward_threads("auto", "cuda:1") is None  # the forward runs on the GPU
    assert cxrnet.predict.forward_threads(None, "cpu") is None
    assert cxrnet.predict.forward_threads(2, "cpu") == 2
    with pytest.raises(ValueError, match="num_threads is 0"):
        cxrnet.predict.forward_threads(0, "cpu")
    monkeypatch.setattr(cxrnet.predict, "usable_cores", lambda: 1)
    assert cxrnet.predict.forward_threads("auto", "cpu") == 1  # never zero

    monkeypatch.setattr(cxrnet.predict, "usable_cores", lambda: 2)
    before = torch.get_num_threads()
    summary = predict(compose_predict(tiny_checkpoint, folder, tmp_path, "overlays=false", "limit=4"))
    assert summary["num_threads"] == 1  # 2 cores: one for the network, one for the rest
    assert torch.get_num_threads() == before


def test_overlays_drawn_by_several_threads_equal_those_of_one(
    tiny_checkpoint: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = {}
    for workers in (1, 3):
        monkeypatch.setattr(cxrnet.predict, "overlay_workers", lambda workers=workers: workers)
        out = tmp_path / f"workers-{workers}"
        summary = predict(compose_predict(tiny_checkpoint, folder, out))
        assert summary["overlay_workers"] == workers
        outputs[workers] = out
    one, three = (check_outputs(outputs[w]) for w in (1, 3))
    assert [r["path"] for r in one] == [r["path"] for r in three]  # rows keep the input order
    for row in (r for r in one if r["status"] == "ok"):
        assert (outputs[1] / row["overlay"]).read_bytes() == (outputs[3] / row["overlay"]).read_bytes()
