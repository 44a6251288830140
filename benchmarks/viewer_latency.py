"""Viewer latency and memory: upload → result for one 2000 px radiograph, and the server's RSS over 100 uploads.

    python benchmarks/viewer_latency.py [--checkpoint <ckpt|folder|onnx>] [--size 2000] [--repeats 10]
        [--uploads 100] [--out benchmarks/results/viewer_latency.json]

Runs the real viewer (:func:`cxrnet.serve.app.create_app` on uvicorn, in a thread of this process, on a free
local port) and talks to it over HTTP as the page does: ``POST /api/sessions/{s}/jobs`` with one PNG, poll
``GET /api/sessions/{s}/jobs/{j}`` every 10 ms until it is done, then ``GET`` the result document and its five
layer PNGs. Reported per upload (median, min and max of ``--repeats``, after two warm-up uploads):

- ``to_result``: from sending the upload to the result document being available (the job is done);
- ``to_layers``: ... and the page's five layer PNGs fetched;
- ``worker``: the worker's own time for the image (read, predict, draw the layers and masks, write them).

The page polls every 400 ms, so what a user sees is ``to_result`` rounded up to the next poll.

Memory: the process's RSS (server, worker and this client together) before the first upload and after 10, 50
and ``--uploads`` uploads of the same image into one session (results stay in the session until it closes),
then after closing it. Without ``--checkpoint`` the quickstart's network (``+experiment=quickstart``, 128 px)
runs with random weights: time and memory do not depend on what the weights learned.
Writes one JSON with the machine section.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxrnet.data.phantoms import make_phantom
from cxrnet.inference import load_model

from _machine import load_average, machine_section, rss_mb, write_json_atomic

LAYERS = ("image", "lung", "infection", "explanation", "zones")
BOUNDARY = "cxrnet-benchmark-boundary"


def quickstart_checkpoint(folder: Path) -> Path:
    """The quickstart's network with random weights, saved as a checkpoint with its preprocessing."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from cxrnet.checkpoint import save_checkpoint
    from cxrnet.data.transforms import Preprocessing

    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=quickstart"])
    net = instantiate(cfg.model, _convert_="all")
    preprocessing = Preprocessing(int(cfg.data.image_size), float(cfg.data.mean), float(cfg.data.std))
    return save_checkpoint(folder / "quickstart_random.ckpt", net, preprocessing)


def radiograph_png(size: int) -> bytes:
    """A phantom radiograph upscaled to ``size``² px with detector noise, as an 8-bit grayscale PNG."""
    image = make_phantom(3, size=256, label="covid19").image
    big = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
    big = big + np.random.default_rng(0).normal(0, 0.01, big.shape)
    ok, png = cv2.imencode(".png", np.clip(np.round(big * 255), 0, 255).astype(np.uint8))
    assert ok
    return png.tobytes()


def multipart(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class Client:
    """One keep-alive HTTP connection to the viewer."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Any:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        kind = response.getheader("content-type") or ""
        return json.loads(data) if kind.startswith("application/json") else data

    def upload(self, sid: str, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        return self.request("POST", f"/api/sessions/{sid}/jobs", body, headers)


def one_upload(client: Client, sid: str, body: bytes) -> dict[str, float]:
    """Seconds from sending one upload to its result, and to its layers fetched."""
    start = time.perf_counter()
    job = client.upload(sid, body)
    while job["status"] != "done":
        time.sleep(0.01)
        job = client.request("GET", f"/api/sessions/{sid}/jobs/{job['job']}")
    [item] = job["items"]
    if item["status"] != "done":
        raise RuntimeError(f"the upload failed: {item}")
    base = f"/api/sessions/{sid}/results/{item['id']}"
    client.request("GET", base)
    to_result = time.perf_counter() - start
    for layer in LAYERS:
        client.request("GET", f"{base}/layers/{layer}.png")
    return {"to_result": to_result, "to_layers": time.perf_counter() - start, "id": item["id"]}


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="model to serve (default: the quickstart's network, random weights)"
    )
    parser.add_argument("--size", type=int, default=2000, help="side of the uploaded radiograph, px")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "viewer_latency.json"))
    args = parser.parse_args()

    import uvicorn

    from cxrnet.serve.app import create_app

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="cxrnet_viewer_bench_") as tmp:
        checkpoint = args.checkpoint or str(quickstart_checkpoint(Path(tmp)))
        model = load_model(checkpoint)
        app = create_app(model)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            png = radiograph_png(args.size)
            body = multipart("radiograph.png", png)
            client = Client(port)
            sid = client.request("POST", "/api/sessions")["session"]
            store = app.state.store
            rss_start = rss_mb()
            for _ in range(2):  # warm-up: first-call costs of the network and the decoders
                one_upload(client, sid, body)
            runs = [one_upload(client, sid, body) for _ in range(args.repeats)]
            session = store.get(sid)
            worker = [session.results[r["id"]].seconds for r in runs]
            latency = {
                "image": f"{args.size}x{args.size} px 8-bit grayscale PNG, {len(png) / 1e6:.2f} MB",
                "repeats": args.repeats,
                "to_result": summary([r["to_result"] for r in runs]),
                "to_layers": summary([r["to_layers"] for r in runs]),
                "worker": summary(worker),
            }
            print(json.dumps(latency, indent=2))

            fresh = client.request("POST", "/api/sessions")["session"]
            memory: dict[str, Any] = {"rss_before_uploads_mb": rss_mb(), "uploads": args.uploads, "after": {}}
            marks = sorted({10, 50, args.uploads} & set(range(1, args.uploads + 1)))
            start = time.perf_counter()
            for n in range(1, args.uploads + 1):
                one_upload(client, fresh, body)
                if n in marks:
                    memory["after"][str(n)] = rss_mb()
                    print(f"after {n} uploads: RSS {memory['after'][str(n)]} MiB")
            memory["seconds_per_upload"] = round((time.perf_counter() - start) / args.uploads, 4)
            folder = store.get(fresh).folder
            memory["session_folder_mb"] = round(
                sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1
            )
            client.request("POST", f"/api/sessions/{fresh}/close")
            memory["rss_after_close_mb"] = rss_mb()
        finally:
            server.should_exit = True
            thread.join(30)
    result = {
        "question": "seconds from upload to result for one large radiograph; RSS of the server over many uploads",
        "checkpoint": args.checkpoint
        or "quickstart network, random weights (+experiment=quickstart, 128 px)",
        "precision": model.precision,
        "rss_at_start_mb": rss_start,
        "latency": latency,
        "memory": memory,
        "machine": machine_section(load_before),
    }
    write_json_atomic(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("latency", "memory")}, indent=2))


if __name__ == "__main__":
    main()
