"""``python -m cxrnet.serve``: its config, its settings checks, and one-line refusals before the server starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from cxrnet.serve import main
from cxrnet.serve.run import allowed_hosts
from cxrnet.serve.settings import ServeSettings


def _serve_config(*overrides: str):
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(config_name="serve", overrides=["checkpoint=model.ckpt", *overrides])


def test_the_config_binds_localhost_and_maps_onto_the_settings(tmp_path: Path) -> None:
    cfg = _serve_config()
    assert (cfg.host, cfg.port, cfg.predictions) == ("127.0.0.1", 8765, None)
    assert ServeSettings.from_config(cfg) == ServeSettings()
    cfg = _serve_config("max_upload_mb=5", "max_files=3", f"keep_dir={tmp_path}", "session_ttl=60")
    settings = ServeSettings.from_config(cfg)
    assert (settings.max_upload_bytes, settings.max_files, settings.keep_dir) == (5 << 20, 3, tmp_path)
    assert callable(main)


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_files", 0), ("max_upload_mb", -1.0), ("session_ttl", float("nan")), ("preview_size", 8)],
)
def test_bad_limits_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        ServeSettings(**{key: value})


def test_hosts_a_request_may_name_follow_the_bound_address() -> None:
    assert allowed_hosts("127.0.0.1") == ("127.0.0.1", "localhost", "::1")
    assert "192.168.1.5" in allowed_hosts("192.168.1.5")
    assert allowed_hosts("0.0.0.0") == ("*",)


@pytest.mark.slow
def test_a_missing_model_ends_the_command_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cxrnet.serve", f"checkpoint={tmp_path / 'missing.ckpt'}", "port=0"],
        cwd=tmp_path,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("cxrnet.serve: ")
    assert "missing.ckpt" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing written in the working folder
