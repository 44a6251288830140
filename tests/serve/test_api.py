"""The viewer's HTTP API on uploads: the same numbers as the library, layers that fit, bad input refused clearly."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from cxrnet.inference import load_model
from cxrnet.predictor import Predictor
from cxrnet.severity import ZONE_NAMES

from inference_helpers import radiograph, write_run_checkpoint

if TYPE_CHECKING:
    from serve.conftest import Viewer


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_a_phantom_png_gives_the_librarys_prediction_layers_and_downloads(
    viewer: Viewer, predictor: Predictor, images: dict[str, Path]
) -> None:
    sid = viewer.session()
    status = viewer.predict(sid, images["phantom"])
    assert (status["done"], status["total"]) == (1, 1)
    [item] = status["items"]
    assert item["status"] == "done", item
    doc = viewer.result(sid, item["id"])
    expected = predictor.predict(images["phantom"])

    assert doc["label"] == expected.label == item["label"]
    shown = {c["name"]: c["p"] for c in doc["probabilities"]}
    assert list(shown) == predictor.classes
    assert shown == pytest.approx(expected.probabilities, abs=1e-6)
    assert doc["severity"]["from_maps"] == pytest.approx(expected.severity["from_maps"])
    assert doc["severity"]["learned"] == pytest.approx(expected.severity["learned"])
    maps = expected.severity["from_maps"]
    assert [z["zone"] for z in doc["zones"]] == list(ZONE_NAMES)
    assert [z["score"] for z in doc["zones"]] == [maps[f"zone_score_{z}"] for z in ZONE_NAMES]
    assert sum(z["score"] for z in doc["zones"]) == maps["brixia_total"]
    assert (doc["width"], doc["height"]) == (96, 96)

    base = f"/api/sessions/{sid}/results/{item['id']}"
    image = _png(viewer.client.get(f"{base}/layers/image.png").content)
    assert image.shape == (doc["preview_height"], doc["preview_width"]) == (96, 96)
    for layer in ("lung", "infection", "explanation", "zones"):
        response = viewer.client.get(f"{base}/layers/{layer}.png")
        assert response.headers["content-type"] == "image/png"
        pixels = _png(response.content)
        assert pixels.shape == (96, 96, 4), layer  # RGBA: transparent where nothing is drawn
    lung_layer = _png(viewer.client.get(f"{base}/layers/lung.png").content)
    assert 0 < (lung_layer[..., 3] > 0).sum() < 96 * 96 / 2  # an outline, not a fill

    mask = _png(viewer.client.get(f"{base}/download/lung_mask.png").content)
    np.testing.assert_array_equal(mask > 127, expected.lung_mask)
    infection = _png(viewer.client.get(f"{base}/download/infection_mask.png").content)
    np.testing.assert_array_equal(infection > 127, expected.infection_map > 0.5)
    response = viewer.client.get(f"{base}/download/prediction.json")
    assert response.headers["content-disposition"] == 'attachment; filename="phantom_prediction.json"'
    record = json.loads(response.content)
    assert record["label"] == expected.label and record["meta"]["source"] == "phantom.png"
    assert viewer.client.get(f"{base}/download/../../../etc/passwd").status_code == 404
    assert viewer.client.get(f"{base}/layers/secret.png").status_code == 404


def test_a_dicom_is_read_as_the_library_reads_it(
    viewer: Viewer, predictor: Predictor, images: dict[str, Path]
) -> None:
    sid = viewer.session()
    [item] = viewer.predict(sid, images["dicom"])["items"]
    assert item["status"] == "done", item
    doc = viewer.result(sid, item["id"])
    expected = predictor.predict(images["dicom"])
    assert (doc["height"], doc["width"]) == (80, 72)
    assert doc["label"] == expected.label
    assert {c["name"]: c["p"] for c in doc["probabilities"]} == pytest.approx(
        expected.probabilities, abs=1e-6
    )


def test_a_batch_reports_each_bad_file_and_predicts_the_good_ones(
    viewer: Viewer, images: dict[str, Path]
) -> None:
    sid = viewer.session()
    response = viewer.upload(
        sid, images["phantom"], images["truncated"], images["bomb"], images["notes"], images["phantom2"]
    )
    assert response.status_code == 202, response.text
    assert response.json()["refused"] == [
        {"name": "notes.txt", "reason": "not a PNG, JPEG or DICOM file (its first bytes match none of them)"}
    ]
    status = viewer.wait(sid, response.json()["job"])
    assert (status["done"], status["total"]) == (4, 4)
    by_name = {item["name"]: item for item in status["items"]}
    assert by_name["phantom.png"]["status"] == by_name["phantom2.png"]["status"] == "done"
    truncated, bomb = by_name["truncated.png"], by_name["bomb.png"]
    assert truncated["status"] == "error" and truncated["error"].startswith("cannot read truncated.png: ")
    assert "truncated" in truncated["error"]
    assert bomb["status"] == "error" and "30000x30000" in bomb["error"] and "above the limit" in bomb["error"]
    assert "/" not in bomb["error"].split(":")[0]  # the private file's path is not shown
    refused = viewer.client.get(f"/api/sessions/{sid}/results/{bomb['id']}")
    assert refused.status_code == 409 and "above the limit" in refused.json()["detail"]
    # nothing else broke: the next upload of the same session works
    assert viewer.predict(sid, images["phantom"])["items"][0]["status"] == "done"


def test_an_upload_of_only_bad_files_is_refused_with_every_reason(
    viewer: Viewer, images: dict[str, Path]
) -> None:
    sid = viewer.session()
    response = viewer.client.post(
        f"/api/sessions/{sid}/jobs",
        files=[("files", ("a.txt", b"hello", "text/plain")), ("files", ("empty.png", b"", "image/png"))],
    )
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert detail.startswith("nothing to predict: ")
    assert (
        "a.txt: not a PNG, JPEG or DICOM file" in detail
        and "empty.png: the file is empty (0 bytes)" in detail
    )
    assert not any(app_folder(viewer, sid).iterdir())


def app_folder(viewer: Viewer, sid: str) -> Path:
    session = viewer.app.state.store.get(sid)
    assert session is not None
    return session.uploads


def test_too_many_files_are_refused_before_anything_is_predicted(
    make_viewer, images: dict[str, Path]
) -> None:
    viewer = make_viewer(max_files=2)
    sid = viewer.session()
    response = viewer.upload(sid, images["phantom"], images["phantom2"], images["phantom"])
    assert response.status_code == 413
    assert response.json()["detail"].startswith("too many files at once: more than 2;")
    assert not any(app_folder(viewer, sid).iterdir())  # what was received is deleted
    assert viewer.app.state.worker.pending == 0
    assert viewer.predict(sid, images["phantom"], images["phantom2"])["done"] == 2


def test_a_file_over_the_size_limit_is_refused_while_it_streams(make_viewer, images: dict[str, Path]) -> None:
    viewer = make_viewer(max_upload_mb=0.002)  # about 2 kB; a phantom PNG is larger
    sid = viewer.session()
    big = images["phantom"].read_bytes()
    assert len(big) > 2100
    response = viewer.client.post(
        f"/api/sessions/{sid}/jobs",
        files=[("files", ("big.png", big, "image/png")), ("files", ("tiny.txt", b"x", "text/plain"))],
    )
    assert response.status_code == 415
    reasons = {r["name"]: r["reason"] for r in response.json()["refused"]}
    assert reasons["big.png"] == "larger than the limit of 0.002 MB"
    # a body larger than max_files files of the largest size could be is cut off from its length alone
    huge = make_viewer(max_upload_mb=0.002, max_files=1)
    sid = huge.session()
    response = huge.client.post(
        f"/api/sessions/{sid}/jobs", files=[("files", ("huge.png", bytes(3 << 20), "image/png"))]
    )
    assert (
        response.status_code == 413 and "more than 1 files of at most 0.002 MB" in response.json()["detail"]
    )


def test_requests_without_files_or_session_are_refused(viewer: Viewer, images: dict[str, Path]) -> None:
    sid = viewer.session()
    response = viewer.client.post(
        f"/api/sessions/{sid}/jobs", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    response = viewer.client.post(f"/api/sessions/{sid}/jobs", files=[], data={"note": "x"})
    assert response.status_code in (400, 415)
    response = viewer.client.post(
        "/api/sessions/not-a-session/jobs", files=[("files", ("a.png", b"x", "image/png"))]
    )
    assert response.status_code == 404 and "session has ended" in response.json()["detail"]
    [item] = viewer.predict(sid, images["phantom"])["items"]
    other = viewer.session()  # a result is reachable from its own session only
    assert viewer.client.get(f"/api/sessions/{sid}/results/{item['id']}").status_code == 200
    assert viewer.client.get(f"/api/sessions/{other}/results/{item['id']}").status_code == 404


def test_the_page_and_its_files_are_served_and_nothing_outside_them(viewer: Viewer) -> None:
    page = viewer.client.get("/")
    assert page.status_code == 200 and "Research software, not a medical device." in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    for name in ("app.js", "style.css"):
        response = viewer.client.get(f"/static/{name}")
        assert response.status_code == 200
        assert "http://" not in response.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in response.text
    assert viewer.client.get("/static/../app.py").status_code == 404
    assert viewer.client.get("/static/%2e%2e/app.py").status_code == 404
    assert "script-src 'self'" in page.headers["content-security-policy"]
    info = viewer.client.get("/api/info").json()
    assert info["notice"] == "Research software, not a medical device."
    assert info["limits"]["max_files"] == 20 and info["browse"] is None
    assert [c["name"] for c in info["model"]["classes"]] == ["normal", "bacterial", "viral", "covid19"]
    assert "NOT A MEDICAL DEVICE" in info["model"]["notice"] and info["model"]["intended_use"]


def test_outputs_of_untrained_heads_are_not_drawn_and_say_why(
    make_viewer, images: dict[str, Path], tmp_path: Path
) -> None:

    model = load_model(write_run_checkpoint(tmp_path / "run"))  # lung masks and labels only: no infection
    viewer = make_viewer(model=model)
    card = viewer.client.get("/api/info").json()["model"]
    heads = {h["head"]: h for h in card["heads"]}
    assert heads["infection map"]["trained"] is False and heads["lung mask"]["sources"] == {"cohen": 4}
    assert card["training_data"] == {"n_items": 4, "sources": {"cohen": 4}}
    assert [c["training_items"] for c in card["classes"]] == [0, 0, 0, 4]
    sid = viewer.session()
    [item] = viewer.predict(sid, images["phantom"])["items"]
    doc = viewer.result(sid, item["id"])
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert layers["infection"] == {
        "name": "infection",
        "title": "infection heatmap",
        "available": False,
        "reason": "infection head untrained",
    }
    assert layers["lung"]["available"] and layers["explanation"]["available"]
    assert "from_maps" not in doc["severity"] and doc["zones"] == []
    assert "severity.from_maps" in doc["untrained"] and doc["untrained_text"]["infection_map"]
    assert doc["severity"]["learned"].keys() == {"geographic_extent"}  # brixia had no training scores
    base = f"/api/sessions/{sid}/results/{item['id']}"
    assert viewer.client.get(f"{base}/layers/infection.png").status_code == 404
    response = viewer.client.get(f"{base}/download/infection_mask.png")
    assert response.status_code == 404 and "untrained" in response.json()["detail"]
    assert doc["downloads"] == ["lung_mask", "json"]


def test_a_jpeg_that_ends_early_but_decodes_is_shown_with_a_note(viewer: Viewer, tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.fromarray(radiograph(200, 160)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:-30])
    sid = viewer.session()
    [item] = viewer.predict(sid, path)["items"]
    assert item["status"] == "done", item
    [note] = viewer.result(sid, item["id"])["notes"]
    assert note.startswith("cut.jpg: file ends early") and "read anyway" in note
    assert str(tmp_path) not in note and "/uploads/" not in note
