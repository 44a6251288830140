"""Uploads live in a private folder that goes away with the page (close beacon, TTL, server stop) unless kept;
requests from other hosts and origins are refused."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.conftest import Viewer


def _folder(viewer: Viewer, sid: str) -> Path:
    session = viewer.app.state.store.get(sid)
    assert session is not None
    return session.folder


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_the_close_beacon_deletes_the_uploads_and_results(viewer: Viewer, images: dict[str, Path]) -> None:
    sid = viewer.session()
    [item] = viewer.predict(sid, images["phantom"])["items"]
    folder = _folder(viewer, sid)
    root = viewer.app.state.store.root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    names = {p.name for p in _files(folder)}
    assert {"image.png", "lung.png", "lung_mask.png", "prediction.json"} <= names
    assert any(p.suffix == ".png" and p.parent.name == "uploads" for p in _files(folder))

    assert viewer.client.post(f"/api/sessions/{sid}/close").status_code == 204
    assert not folder.exists()
    assert viewer.client.get(f"/api/sessions/{sid}/results/{item['id']}").status_code == 404
    assert viewer.client.post(f"/api/sessions/{sid}/ping").status_code == 404
    assert viewer.client.post(f"/api/sessions/{sid}/close").status_code == 204  # a second beacon is harmless
    assert root.exists() and len(viewer.app.state.store) == 0


def test_an_idle_session_expires_and_a_pinged_one_does_not(make_viewer, images: dict[str, Path]) -> None:
    viewer = make_viewer(session_ttl=0.6)
    idle, alive = viewer.session(), viewer.session()
    viewer.predict(idle, images["phantom"])
    idle_folder, alive_folder = _folder(viewer, idle), _folder(viewer, alive)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert viewer.client.post(f"/api/sessions/{alive}/ping").status_code == 204
        time.sleep(0.1)
    assert not idle_folder.exists()  # deleted by the sweeper, without any request naming it
    assert viewer.client.post(f"/api/sessions/{idle}/ping").status_code == 404
    assert alive_folder.exists()


def test_stopping_the_server_removes_every_upload(make_viewer, images: dict[str, Path]) -> None:
    viewer = make_viewer()
    sid = viewer.session()
    viewer.predict(sid, images["phantom"])
    root = viewer.app.state.store.root
    assert _files(root)
    viewer.client.__exit__(None, None, None)
    assert not root.exists()


def test_kept_uploads_are_copied_out_and_survive_the_session(
    make_viewer, images: dict[str, Path], tmp_path: Path
) -> None:
    viewer = make_viewer(keep_dir=tmp_path / "kept")
    sid = viewer.session()
    viewer.predict(sid, images["phantom"])  # before asking to keep: copied when asked
    response = viewer.client.post(f"/api/sessions/{sid}/keep")
    assert response.status_code == 200
    kept = Path(response.json()["folder"])
    assert kept.parent == tmp_path / "kept"
    viewer.predict(sid, images["dicom"])  # after: copied when done
    viewer.client.post(f"/api/sessions/{sid}/close")
    names = sorted(p.name for p in kept.iterdir())
    assert any(n.endswith("_phantom.png") for n in names) and any(n.endswith("_phantom.dcm") for n in names)
    assert any(n.endswith("_phantom.json") for n in names)
    assert any(n.endswith("_phantom_lung_mask.png") for n in names)
    assert (kept / next(n for n in names if n.endswith("_phantom.png"))).read_bytes() == images[
        "phantom"
    ].read_bytes()
    assert not _files(viewer.app.state.store.root)

    off = make_viewer()  # no keep_dir: the option is off, and says how to turn it on
    sid = off.session()
    response = off.client.post(f"/api/sessions/{sid}/keep")
    assert response.status_code == 409 and "keep_dir=<folder>" in response.json()["detail"]
    assert off.client.get("/api/info").json()["limits"]["keep_available"] is False


def test_the_number_of_open_sessions_is_bounded(make_viewer) -> None:
    viewer = make_viewer(max_sessions=2)
    first = viewer.session()
    viewer.session()
    response = viewer.client.post("/api/sessions")
    assert response.status_code == 503 and "max_sessions=2" in response.json()["detail"]
    viewer.client.post(f"/api/sessions/{first}/close")
    assert viewer.client.post("/api/sessions").status_code == 201


def test_other_hosts_and_cross_origin_writes_are_refused(viewer: Viewer) -> None:
    client = viewer.client
    response = client.get("/api/info", headers={"host": "attacker.example"})
    assert response.status_code == 400 and "local host name" in response.json()["detail"]
    assert client.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/api/info", headers={"host": "[::1]:8765"}).status_code == 200
    response = client.post("/api/sessions", headers={"origin": "http://attacker.example"})
    assert response.status_code == 403
    assert client.post("/api/sessions", headers={"origin": "http://127.0.0.1:8765"}).status_code == 201
    assert len(viewer.app.state.store) == 1


def test_session_ids_only_look_sessions_up(viewer: Viewer) -> None:
    sid = viewer.session()
    for bad in ("..", "%2e%2e", "..%2F..%2Fetc", sid[:-1]):
        assert viewer.client.post(f"/api/sessions/{bad}/ping").status_code == 404, bad
    assert viewer.client.get("/api/sessions/%2e%2e/results/uploads").status_code == 404
