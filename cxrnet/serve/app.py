"""The viewer's web app: :func:`create_app` builds it around a loaded model, without Hydra or a server.

>>> from cxrnet import load_model
>>> from cxrnet.serve.app import create_app
>>> app = create_app(load_model("best.ckpt"))       # then uvicorn.run(app, host="127.0.0.1", port=8765)

The page (``static/``) talks to a small JSON API; predictions never run on the request path: an upload queues
one task per image for the single model worker (:mod:`cxrnet.serve.worker`) and answers at once with a job to
poll. Everything is addressed by random session ids, result ids and table row numbers; no path from the browser
is ever opened. Requests must name a local host (``Host`` header; a rebound DNS name is refused) and a
state-changing request from a page of another origin is refused.

``GET /`` the page; ``GET /static/<file>`` its script and style.
``GET /api/info`` model card, notice, limits, whether a predictions table is open.
``POST /api/sessions`` → ``{"session"}``; ``POST /api/sessions/{s}/ping``; ``POST /api/sessions/{s}/close``
(the page's ``pagehide`` beacon: the session's uploads are deleted); ``POST /api/sessions/{s}/keep``.
``POST /api/sessions/{s}/jobs`` (multipart, field ``files``) → 202 job status; ``POST /api/sessions/{s}/browse/{row}``
→ 202 job status (the model re-run on that row's image); ``GET /api/sessions/{s}/jobs/{job}`` → ``status``,
``done`` of ``total``, ``items``, ``refused``.
``GET /api/sessions/{s}/results/{r}`` the result document; ``.../layers/{image|lung|infection|explanation|zones}.png``;
``.../download/{lung_mask.png|infection_mask.png|prediction.json}``.
``GET /api/browse`` the predictions table; ``GET /api/browse/{row}/record.json``, ``/overlay.png``.

Errors are JSON ``{"detail": "<what is wrong and what to do>"}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from cxrnet.predictor import Predictor
from cxrnet.serve.browse import PredictionsTable
from cxrnet.serve.jobs import Job, Task
from cxrnet.serve.layers import LAYERS
from cxrnet.serve.sessions import Session, SessionLimitError, SessionStore
from cxrnet.serve.settings import DEFAULT_ALLOWED_HOSTS, ServeSettings
from cxrnet.serve.uploads import ACCEPTED, UploadRefused, receive_files
from cxrnet.serve.views import NOTICE, model_card_data
from cxrnet.serve.worker import Worker

__all__ = ["STATIC", "create_app"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The page: ``index.html``, ``app.js``, ``style.css``."""

DOWNLOADS = {"lung_mask.png": "lung_mask", "infection_mask.png": "infection_mask", "prediction.json": "json"}

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _host_name(value: str) -> str:
    """``127.0.0.1:8765`` → ``127.0.0.1``; ``[::1]:8765`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.split(":", 1)[0]


class _Guard:
    """ASGI middleware: refuse foreign hosts and cross-origin writes; add the security headers to every answer."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = None
        if "*" not in self.allowed and _host_name(headers.get("host", "")) not in self.allowed:
            problem = (400, "this viewer answers only requests addressed to its local host name")
        origin = headers.get("origin")
        foreign = origin not in (None, "null") and _host_name(urlsplit(origin).netloc) not in self.allowed
        if problem is None and scope["method"] in _UNSAFE_METHODS and foreign and "*" not in self.allowed:
            problem = (403, "requests from pages of other sites are refused")
        if problem is not None:
            await _with_headers(JSONResponse({"detail": problem[1]}, problem[0]), scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _with_headers(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    response.headers["cache-control"] = "no-store"
    await response(scope, receive, send)


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _file_stem(name: str) -> str:
    return _SAFE.sub("_", Path(name).stem)[:60] or "image"


def create_app(
    predictor: Predictor,
    *,
    settings: ServeSettings | None = None,
    predictions: PredictionsTable | None = None,
    allowed_hosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS,
) -> FastAPI:
    """The viewer's app around ``predictor``.

    The model worker and the session sweeper start with the app (its lifespan: ``uvicorn.run`` or
    ``with TestClient(app)``) and stop with it; the private upload folder is removed then.

    Args:
        predictor: the loaded model (:func:`cxrnet.load_model`).
        settings: limits and lifetimes; the defaults of :class:`ServeSettings` when ``None``.
        predictions: a predict output folder to browse, or ``None``.
        allowed_hosts: host names requests may address (``"*"``: any, for a server bound to the network).

    Returns:
        The FastAPI app; ``app.state.store`` holds the sessions and ``app.state.worker`` the model worker.
    """
    settings = settings or ServeSettings()
    store = SessionStore(settings)
    worker = Worker(predictor, settings.preview_size, on_done=store.copy_kept)
    card = model_card_data(predictor)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        store.start_sweeper()
        try:
            yield
        finally:
            worker.stop()
            store.shutdown()

    app = FastAPI(title="cxrnet viewer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.worker, app.state.settings = store, worker, settings
    app.add_middleware(_Guard, allowed_hosts=list(allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def session_or_404(sid: str) -> Session | JSONResponse:
        session = store.get(sid)
        if session is None:
            return _error(
                404, "this session has ended (closed, or idle too long) and its uploads are deleted"
            )
        return session

    def task_or_404(sid: str, rid: str) -> Task | JSONResponse:
        session = session_or_404(sid)
        if isinstance(session, JSONResponse):
            return session
        task = session.results.get(rid)
        if task is None:
            return _error(404, f"no result {rid!r} in this session")
        return task

    def queue(session: Session, tasks: list[Task], refused: list[dict[str, str]]) -> JSONResponse:
        job = Job(f"j{session.next_number()}", tasks, refused)
        # Registered before queueing: a task the worker finishes at once must find its session (kept copies).
        session.jobs[job.id] = job
        session.results.update((task.id, task) for task in tasks)
        if not worker.submit(tasks, settings.max_queue):
            del session.jobs[job.id]
            for task in tasks:
                del session.results[task.id]
                if task.source == "upload":
                    task.image.unlink(missing_ok=True)
                shutil.rmtree(task.folder, ignore_errors=True)
            return _error(
                503,
                f"the model is busy: {worker.pending} images are waiting (at most {settings.max_queue}); "
                "try again in a moment",
            )
        return JSONResponse(job.status(), status_code=202)

    def new_task(session: Session, name: str, image: Path, source: str, row: int | None = None) -> Task:
        rid = f"r{session.next_number()}"
        folder = session.folder / "results" / rid
        folder.mkdir()
        return Task(rid, name, image, folder, session.closed, source=source, row=row)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {
            "notice": NOTICE,
            "model": card,
            "limits": settings.public(),
            "accepted": sorted({*ACCEPTED.values(), ".jpeg", ".dicom"}),
            "browse": None
            if predictions is None
            else {"rows": len(predictions), "folder": predictions.folder.name},
        }

    @app.post("/api/sessions", status_code=201)
    async def open_session() -> Any:
        try:
            session = store.create()
        except SessionLimitError as err:
            return _error(503, str(err))
        return {"session": session.id, "ttl": settings.session_ttl}

    @app.post("/api/sessions/{sid}/ping", status_code=204)
    async def ping(sid: str) -> Response:
        found = session_or_404(sid)
        return found if isinstance(found, JSONResponse) else Response(status_code=204)

    # Plain functions: FastAPI runs them in its thread pool, so deleting or copying a large session's files
    # never holds up the event loop.
    @app.post("/api/sessions/{sid}/close", status_code=204)
    def close(sid: str) -> Response:
        store.close(sid)  # idempotent: a second beacon, or one after the TTL, is fine
        return Response(status_code=204)

    @app.post("/api/sessions/{sid}/keep")
    def keep(sid: str) -> Any:
        try:
            folder = store.keep(sid)
        except PermissionError as err:
            return _error(409, str(err))
        except KeyError:
            return _error(404, "this session has ended")
        return {"keep": True, "folder": str(folder)}

    @app.post("/api/sessions/{sid}/jobs", status_code=202)
    async def upload(sid: str, request: Request) -> Any:
        session = session_or_404(sid)
        if isinstance(session, JSONResponse):
            return session
        if worker.pending >= settings.max_queue:
            return _error(
                503, f"the model is busy: {worker.pending} images are waiting; try again in a moment"
            )
        try:
            uploads = await receive_files(
                {k.lower(): v for k, v in request.headers.items()},
                request.stream(),
                session.uploads,
                max_files=settings.max_files,
                max_file_bytes=settings.max_upload_bytes,
                number=session.next_number,
            )
        except UploadRefused as err:
            return _error(err.status, err.message)
        refused = [{"name": u.name, "reason": u.refused} for u in uploads if u.refused is not None]
        accepted = [u for u in uploads if u.refused is None and u.path is not None]
        if not uploads:
            return _error(400, "the upload holds no files; choose PNG, JPEG or DICOM files")
        if not accepted:
            listed = "; ".join(f"{r['name']}: {r['reason']}" for r in refused)
            too_large = all(r["reason"].startswith("larger than") for r in refused)
            return _error(413 if too_large else 415, f"nothing to predict: {listed}", refused=refused)
        tasks = [new_task(session, u.name, u.path, "upload") for u in accepted if u.path is not None]
        return queue(session, tasks, refused)

    @app.post("/api/sessions/{sid}/browse/{row}", status_code=202)
    async def open_row(sid: str, row: int) -> Any:
        session = session_or_404(sid)
        if isinstance(session, JSONResponse):
            return session
        if predictions is None:
            return _error(
                404, "no predictions folder is open; start the server with predictions=<output_dir>"
            )
        try:
            image = predictions.image(row)
        except IndexError as err:
            return _error(404, str(err))
        if worker.pending >= settings.max_queue:
            return _error(
                503, f"the model is busy: {worker.pending} images are waiting; try again in a moment"
            )
        return queue(session, [new_task(session, predictions.name(row), image, "browse", row)], [])

    @app.get("/api/sessions/{sid}/jobs/{jid}")
    async def job_status(sid: str, jid: str) -> Any:
        session = session_or_404(sid)
        if isinstance(session, JSONResponse):
            return session
        job = session.jobs.get(jid)
        return _error(404, f"no job {jid!r} in this session") if job is None else job.status()

    @app.get("/api/sessions/{sid}/results/{rid}")
    async def result(sid: str, rid: str) -> Any:
        task = task_or_404(sid, rid)
        if isinstance(task, JSONResponse):
            return task
        if task.status != "done" or task.document is None:
            return _error(409, task.error or f"this result is {task.status}", state=task.status)
        return task.document

    @app.get("/api/sessions/{sid}/results/{rid}/layers/{layer}.png")
    async def layer(sid: str, rid: str, layer: str) -> Any:
        task = task_or_404(sid, rid)
        if isinstance(task, JSONResponse):
            return task
        if layer not in ("image", *LAYERS):
            return _error(404, f"no layer {layer!r}; layers are image, {', '.join(LAYERS)}")
        path = task.files.get(layer)
        if path is None:
            return _error(404, f"layer {layer!r} is not available for this result")
        return FileResponse(path, media_type="image/png")

    @app.get("/api/sessions/{sid}/results/{rid}/download/{what}")
    async def download(sid: str, rid: str, what: str) -> Any:
        task = task_or_404(sid, rid)
        if isinstance(task, JSONResponse):
            return task
        key = DOWNLOADS.get(what)
        if key is None:
            return _error(404, f"no download {what!r}; choose one of {', '.join(DOWNLOADS)}")
        path = task.files.get(key)
        if path is None:
            return _error(
                404, f"{what} is not available for this result (its head is untrained, or not done)"
            )
        media = "application/json" if key == "json" else "image/png"
        return FileResponse(path, media_type=media, filename=f"{_file_stem(task.name)}_{what}")

    @app.get("/api/browse")
    async def browse() -> Any:
        if predictions is None:
            return _error(
                404, "no predictions folder is open; start the server with predictions=<output_dir>"
            )
        return predictions.public()

    @app.get("/api/browse/{row}/record.json")
    async def browse_record(row: int) -> Any:
        if predictions is None:
            return _error(404, "no predictions folder is open")
        try:
            record = predictions.record(row)
        except IndexError as err:
            return _error(404, str(err))
        if record is None:
            return _error(404, f"row {row} has no JSON record in the predictions")
        name = _file_stem(predictions.name(row))
        return Response(
            json.dumps(record, indent=2) + "\n",
            media_type="application/json",
            headers={"content-disposition": f'attachment; filename="{name}_prediction.json"'},
        )

    @app.get("/api/browse/{row}/overlay.png")
    async def browse_overlay(row: int) -> Any:
        if predictions is None:
            return _error(404, "no predictions folder is open")
        try:
            path = predictions.overlay(row)
        except IndexError as err:
            return _error(404, str(err))
        if path is None:
            return _error(404, f"row {row} has no overlay inside the predictions folder")
        return FileResponse(path, media_type="image/png")

    return app
