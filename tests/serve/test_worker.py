"""Predictions run off the request path, one at a time: a slow image leaves the API answering, with progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrnet.prediction import FileResult
from cxrnet.predictor import Predictor


class SlowPredictor:
    """The real predictor, but each file waits for ``release`` first (and the first raises with ``fail``)."""

    def __init__(self, predictor: Predictor, fail: bool = False) -> None:
        self.predictor = predictor
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def predict_files(self, paths: list[Path], **kwargs: Any) -> Iterator[FileResult]:
        self.started.set()
        assert self.release.wait(60)
        if self.fail:
            self.fail = False
            raise RuntimeError("boom")
        return self.predictor.predict_files(paths, **kwargs)


def test_a_slow_image_leaves_the_api_answering_and_shows_progress(
    make_viewer, predictor: Predictor, images: dict[str, Path]
) -> None:
    slow = SlowPredictor(predictor)
    viewer = make_viewer(model=slow)
    sid = viewer.session()
    started = time.perf_counter()
    response = viewer.upload(sid, images["phantom"], images["phantom2"])
    assert response.status_code == 202
    assert time.perf_counter() - started < 5  # answered before any prediction
    job = response.json()["job"]
    assert slow.started.wait(30)
    for _ in range(5):
        t = time.perf_counter()
        status = viewer.client.get(f"/api/sessions/{sid}/jobs/{job}").json()
        assert viewer.client.get("/api/info").status_code == 200
        assert time.perf_counter() - t < 2
        assert (status["done"], status["total"], status["status"]) == (0, 2, "running")
        assert [i["status"] for i in status["items"]] == ["running", "queued"]
    other = viewer.session()  # another page can still open and queue meanwhile
    queued = viewer.upload(other, images["phantom"])
    assert queued.status_code == 202
    slow.release.set()
    status = viewer.wait(sid, job)
    assert (status["done"], status["total"]) == (2, 2)
    assert viewer.wait(other, queued.json()["job"])["items"][0]["status"] == "done"


def test_an_unexpected_failure_ends_one_image_not_the_worker(
    make_viewer, predictor: Predictor, images: dict[str, Path]
) -> None:
    slow = SlowPredictor(predictor, fail=True)
    slow.release.set()
    viewer = make_viewer(model=slow)
    sid = viewer.session()
    [item] = viewer.predict(sid, images["phantom"])["items"]
    assert item["status"] == "error" and "internal error" in item["error"]
    assert viewer.predict(sid, images["phantom"])["items"][0]["status"] == "done"


def test_a_full_queue_refuses_new_uploads_until_it_drains(
    make_viewer, predictor: Predictor, images: dict[str, Path]
) -> None:
    slow = SlowPredictor(predictor)
    viewer = make_viewer(model=slow, max_queue=2)
    sid = viewer.session()
    first = viewer.upload(sid, images["phantom"], images["phantom2"])
    assert first.status_code == 202
    response = viewer.upload(sid, images["phantom"])
    assert response.status_code == 503 and "the model is busy" in response.json()["detail"]
    slow.release.set()
    viewer.wait(sid, first.json()["job"])
    assert viewer.predict(sid, images["phantom"])["done"] == 1


def test_tasks_of_a_closed_session_are_skipped(
    make_viewer, predictor: Predictor, images: dict[str, Path]
) -> None:
    slow = SlowPredictor(predictor)
    viewer = make_viewer(model=slow)
    sid = viewer.session()
    response = viewer.upload(sid, images["phantom"], images["phantom2"])
    session = viewer.app.state.store.get(sid)
    tasks = list(session.results.values())
    assert slow.started.wait(30)
    viewer.client.post(f"/api/sessions/{sid}/close")
    slow.release.set()
    deadline = time.monotonic() + 30
    while viewer.app.state.worker.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert response.status_code == 202
    assert [t.status for t in tasks] == ["cancelled", "cancelled"]
    assert not session.folder.exists()  # nothing written back after the session ended
