"""``python -m cxrnet.serve checkpoint=<model> [host=127.0.0.1] [port=8765] [predictions=<predict output_dir>]``.

:func:`serve` loads the model and the predictions table, builds the app (:func:`cxrnet.serve.app.create_app`)
and runs it on uvicorn until interrupted; ``main`` is the thin Hydra wrapper (config ``conf/serve.yaml``).
A bad model, folder or limit ends the command with one line saying what is wrong, before the server starts.
"""

from __future__ import annotations

import ipaddress
import logging
import os

import hydra
from omegaconf import DictConfig

from cxrnet.command import CONFIG_PATH

__all__ = ["EXTRA_HINT", "allowed_hosts", "main", "serve"]

log = logging.getLogger(__name__)

EXTRA_HINT = 'pip install "cxrnet[serve]"'


def allowed_hosts(host: str) -> tuple[str, ...]:
    """The host names requests may address when the server binds ``host``.

    Loopback only for a loopback address; the address itself too for another one; any for ``0.0.0.0`` or
    ``::`` (the machine's every name), which :func:`serve` warns about.
    """
    from cxrnet.serve.settings import DEFAULT_ALLOWED_HOSTS

    if host in ("0.0.0.0", "::", ""):
        return ("*",)
    return tuple(dict.fromkeys((*DEFAULT_ALLOWED_HOSTS, host.strip("[]"))))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(cfg: DictConfig) -> None:
    """Load ``cfg.checkpoint`` (and ``cfg.predictions``) and serve the viewer on ``cfg.host:cfg.port``.

    Raises:
        ImportError: fastapi or uvicorn is not installed (the message gives the pip command).
        cxrnet.checkpoint.CheckpointError: the model cannot be loaded.
        FileNotFoundError, ValueError: a predictions folder that is not a predict run, a bad limit.
    """
    try:
        import uvicorn

        from cxrnet.serve.app import create_app
    except ImportError as err:
        raise ImportError(
            f"the viewer needs fastapi, uvicorn and python-multipart: {EXTRA_HINT} ({err})"
        ) from err
    import torch

    from cxrnet.data.limits import MAX_IMAGE_PIXELS_ENV, max_image_pixels
    from cxrnet.inference import load_model
    from cxrnet.serve.browse import PredictionsTable
    from cxrnet.serve.settings import ServeSettings

    settings = ServeSettings.from_config(cfg)
    if cfg.get("max_image_pixels"):
        os.environ[MAX_IMAGE_PIXELS_ENV] = str(max_image_pixels(int(cfg.max_image_pixels)))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    table = PredictionsTable(cfg.predictions) if cfg.get("predictions") else None
    predictor = load_model(
        cfg.checkpoint,
        device=cfg.get("device", "cpu"),
        batch_size=1,
        precision=str(cfg.get("precision") or "auto"),
    )
    predictor.warn_if_synthetic_only()  # on the console once, as predict does; the page shows the caveat
    host, port = str(cfg.host), int(cfg.port)
    if not _is_loopback(host):
        log.warning(
            "serving on %s: other machines can reach this viewer, and it has no authentication; "
            "bind host=127.0.0.1 unless you mean it",
            host,
        )
    app = create_app(predictor, settings=settings, predictions=table, allowed_hosts=allowed_hosts(host))
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "cxrnet viewer for %s%s at http://%s:%d/ (Ctrl+C stops it). Research software, not a medical device.",
        predictor.checkpoint,
        f", browsing {table.folder} ({len(table)} rows)" if table is not None else "",
        shown,
        port,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def _run(cfg: DictConfig) -> None:
    from cxrnet.checkpoint import CheckpointError

    try:
        serve(cfg)
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as err:
        raise SystemExit(f"cxrnet.serve: {err}") from None


def main() -> None:
    """Command-line entry point (Hydra): see ``conf/serve.yaml``."""
    hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="serve")(_run)()
