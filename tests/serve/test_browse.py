"""Browsing a finished predict folder: its rows by number, the model re-run on a row's image, downloads, and no
path from the browser or from a tampered table reaching outside the folder."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from cxrnet.serve.browse import PredictionsTable

if TYPE_CHECKING:
    from serve.conftest import Viewer


def test_the_table_lists_every_row_with_numbers_and_errors(make_viewer, predict_folder: Path) -> None:
    viewer = make_viewer(predictions=predict_folder)
    assert viewer.client.get("/api/info").json()["browse"] == {"rows": 3, "folder": "out"}
    table = viewer.client.get("/api/browse").json()
    with open(predict_folder / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in table["rows"]] == [Path(r["path"]).name for r in rows]
    assert [r["id"] for r in table["rows"]] == [0, 1, 2]
    assert table["classes"] == ["normal", "bacterial", "viral", "covid19"]
    for shown, row in zip(table["rows"], rows):
        assert shown["status"] == row["status"]
        if row["status"] == "ok":
            assert shown["label"] == row["label"]
            assert shown["probabilities"]["covid19"] == pytest.approx(float(row["prob_covid19"]))
            assert shown["severity"]["brixia_total"] == float(row["brixia_total"])
            assert shown["severity"]["grade"] == row["grade"]
            assert shown["overlay"] is True
        else:
            assert shown["label"] is None and "truncated" in shown["error"]
            assert shown["overlay"] is False
    assert str(predict_folder.parent) not in json.dumps(table)  # rows are named, their server paths not sent


def test_opening_a_row_reruns_the_model_on_its_image(make_viewer, predict_folder: Path) -> None:
    viewer = make_viewer(predictions=predict_folder)
    sid = viewer.session()
    table = viewer.client.get("/api/browse").json()
    ok = next(r for r in table["rows"] if r["status"] == "ok")
    response = viewer.client.post(f"/api/sessions/{sid}/browse/{ok['id']}")
    assert response.status_code == 202
    [item] = viewer.wait(sid, response.json()["job"])["items"]
    doc = viewer.result(sid, item["id"])
    assert (doc["source"], doc["row"], doc["name"]) == ("browse", ok["id"], ok["name"])
    assert doc["label"] == ok["label"]  # the same model on the same file
    assert {c["name"]: c["p"] for c in doc["probabilities"]} == pytest.approx(ok["probabilities"], abs=1e-5)
    assert doc["severity"]["from_maps"]["brixia_total"] == ok["severity"]["brixia_total"]

    bad = next(r for r in table["rows"] if r["status"] == "error")
    response = viewer.client.post(f"/api/sessions/{sid}/browse/{bad['id']}")
    [item] = viewer.wait(sid, response.json()["job"])["items"]
    assert item["status"] == "error" and item["error"].startswith(f"cannot read {bad['name']}: ")


def test_a_rows_record_and_overlay_download_from_the_folder(make_viewer, predict_folder: Path) -> None:
    viewer = make_viewer(predictions=predict_folder)
    records = [json.loads(line) for line in (predict_folder / "predictions.jsonl").read_text().splitlines()]
    response = viewer.client.get("/api/browse/0/record.json")
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    assert response.json() == records[0]
    overlay = viewer.client.get("/api/browse/0/overlay.png")
    assert overlay.status_code == 200
    assert overlay.content == (predict_folder / records[0]["overlay"]).read_bytes()
    assert np.asarray(Image.open(io.BytesIO(overlay.content))).ndim == 3
    error_row = next(i for i, r in enumerate(records) if r["status"] == "error")
    assert viewer.client.get(f"/api/browse/{error_row}/overlay.png").status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "/api/browse/3/record.json",
        "/api/browse/-1/record.json",
        "/api/browse/..%2F..%2Fetc%2Fpasswd/record.json",
        "/api/browse/0/../../../etc/passwd",
        "/api/browse/1e3/overlay.png",
    ],
)
def test_rows_are_numbers_into_the_table_and_nothing_else(
    make_viewer, predict_folder: Path, url: str
) -> None:
    viewer = make_viewer(predictions=predict_folder)
    response = viewer.client.get(url)
    assert response.status_code in (404, 422), url
    assert "root:" not in response.text


def test_a_tampered_table_cannot_serve_files_outside_its_folder(
    make_viewer, predict_folder: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "out"
    shutil.copytree(predict_folder, folder)
    secret = tmp_path / "secret.png"
    secret.write_bytes((folder / "overlays" / "phantom.png").read_bytes())
    (folder / "overlays" / "link.png").symlink_to(secret)
    text = (folder / "predictions.csv").read_text()
    text = text.replace("overlays/phantom.png", "../secret.png").replace(
        "overlays/phantom2.png", "overlays/link.png"
    )
    (folder / "predictions.csv").write_text(text)
    viewer = make_viewer(predictions=folder)
    rows = viewer.client.get("/api/browse").json()["rows"]
    for row in rows:
        assert row["overlay"] is False
        assert viewer.client.get(f"/api/browse/{row['id']}/overlay.png").status_code == 404


def test_without_a_folder_browsing_says_how_to_open_one(viewer: Viewer) -> None:
    response = viewer.client.get("/api/browse")
    assert response.status_code == 404 and "predictions=<output_dir>" in response.json()["detail"]
    sid = viewer.session()
    assert viewer.client.post(f"/api/sessions/{sid}/browse/0").status_code == 404


def test_a_folder_that_is_not_a_predict_run_is_refused(tmp_path: Path, predict_folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no predictions\.csv there"):
        PredictionsTable(tmp_path)
    (tmp_path / "predictions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"not a cxrnet\.predict table"):
        PredictionsTable(tmp_path)
    cut = tmp_path / "cut"
    shutil.copytree(predict_folder, cut)
    text = (cut / "predictions.csv").read_text()
    (cut / "predictions.csv").write_text(text + text.splitlines()[1][:20])  # a killed run's half line
    assert len(PredictionsTable(cut)) == 3
    assert (cut / "predictions.csv").read_text().endswith(text.splitlines()[1][:20])  # read, never repaired
