"""Fixtures of the viewer tests: a tiny model, hostile and honest image files, a finished predict folder, and a
client that uploads and waits."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from starlette.testclient import TestClient

from cxrnet.data.phantoms import make_phantom
from cxrnet.inference import load_model
from cxrnet.predict import predict
from cxrnet.predictor import Predictor
from cxrnet.serve.app import create_app
from cxrnet.serve.browse import PredictionsTable
from cxrnet.serve.settings import ServeSettings

from inference_helpers import write_monochrome1_dicom, write_png, write_tiny_checkpoint

BOMB_SIDE = 30000  # 900 megapixels announced by a header of a few dozen bytes


def phantom_pixels(seed: int = 0, size: int = 96, label: str = "covid19") -> np.ndarray:
    """A phantom radiograph as uint8 pixels."""
    return np.round(make_phantom(seed, size=size, label=label).image * 255).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def lying_png_bytes(side: int = BOMB_SIDE) -> bytes:
    """A PNG whose header claims ``side`` x ``side`` pixels, with a few bytes of data: a decompression bomb's
    header, refused before anything is decoded."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(1024)))
        + _chunk(b"IEND", b"")
    )


@pytest.fixture
def write_phantom() -> Callable[..., Path]:
    """``write_phantom(path, seed=0, size=96, label="covid19")``: a phantom radiograph as an 8-bit PNG."""

    def write(path: Path, seed: int = 0, size: int = 96, label: str = "covid19") -> Path:
        return write_png(path, phantom_pixels(seed, size, label))

    return write


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.ckpt")


@pytest.fixture(scope="session")
def predictor(serve_checkpoint: Path) -> Predictor:
    return load_model(serve_checkpoint)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Image files: two phantom PNGs, a phantom DICOM, a truncated PNG, a lying (bomb) PNG, a text file."""
    folder = tmp_path_factory.mktemp("images")
    png = write_png(folder / "phantom.png", phantom_pixels(0))
    write_png(folder / "phantom2.png", phantom_pixels(1, label="normal"))
    dicom = (phantom_pixels(2, size=80).astype(np.uint16) * 257)[:, :72]
    write_monochrome1_dicom(folder / "phantom.dcm", 65535 - dicom)
    data = png.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "bomb.png").write_bytes(lying_png_bytes())
    (folder / "notes.txt").write_text("not an image\n")
    return {p.stem if p.suffix != ".dcm" else "dicom": p for p in sorted(folder.iterdir())}


@pytest.fixture(scope="session")
def make_predict_folder(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, Path]
) -> Callable[[Path | str], Path]:
    """``make_predict_folder(checkpoint)``: a finished ``cxrnet.predict`` output folder of that model over two
    phantoms and a truncated PNG (3 rows, 1 error)."""

    def make(checkpoint: Path | str) -> Path:
        root = tmp_path_factory.mktemp("predict")
        inputs = root / "inputs"
        inputs.mkdir()
        for name in ("phantom", "phantom2", "truncated"):
            (inputs / images[name].name).write_bytes(images[name].read_bytes())
        with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
            cfg = compose(
                config_name="predict",
                overrides=[
                    f"checkpoint={checkpoint}",
                    f"input={inputs}",
                    f"output_dir={root / 'out'}",
                    "progress=false",
                    "batch_size=2",
                ],
            )
        summary = predict(cfg)
        assert summary["n_ok"] == 2 and summary["n_error"] == 1
        return root / "out"

    return make


@pytest.fixture(scope="session")
def predict_folder(make_predict_folder: Callable[[Path | str], Path], serve_checkpoint: Path) -> Path:
    """The predict folder of the tiny model the other fixtures serve."""
    return make_predict_folder(serve_checkpoint)


class Viewer:
    """A TestClient on the viewer with the steps every test repeats."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.app = client.app

    def session(self) -> str:
        response = self.client.post("/api/sessions")
        assert response.status_code == 201, response.text
        return response.json()["session"]

    def upload(self, sid: str, *paths: Path, names: list[str] | None = None) -> Any:
        files = [
            ("files", (name, path.read_bytes(), "application/octet-stream"))
            for path, name in zip(paths, names or [p.name for p in paths])
        ]
        return self.client.post(f"/api/sessions/{sid}/jobs", files=files)

    def wait(self, sid: str, job: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.get(f"/api/sessions/{sid}/jobs/{job}").json()
            if status["status"] == "done":
                return status
            time.sleep(0.02)
        raise AssertionError(f"job {job} not done after {timeout} s: {status}")

    def predict(self, sid: str, *paths: Path) -> dict[str, Any]:
        response = self.upload(sid, *paths)
        assert response.status_code == 202, response.text
        return self.wait(sid, response.json()["job"])

    def result(self, sid: str, rid: str) -> dict[str, Any]:
        response = self.client.get(f"/api/sessions/{sid}/results/{rid}")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def make_viewer(predictor: Predictor) -> Iterator[Callable[..., Viewer]]:
    """Factory: ``make_viewer(predictions=folder, predictor=..., **settings)`` → a running :class:`Viewer`."""
    clients: list[TestClient] = []

    def make(predictions: Path | None = None, model: Predictor | None = None, **settings: Any) -> Viewer:
        table = PredictionsTable(predictions) if predictions is not None else None
        app = create_app(model or predictor, settings=ServeSettings(**settings), predictions=table)
        client = TestClient(app, base_url="http://127.0.0.1:8765")
        client.__enter__()
        clients.append(client)
        return Viewer(client)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def viewer(make_viewer: Callable[..., Viewer]) -> Viewer:
    return make_viewer()
