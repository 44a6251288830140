"""What the viewer allows: upload limits, session lifetime, where kept uploads go, the preview size.

Every limit is checked once here, when the server starts, with a message that names the config key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ALLOWED_HOSTS", "ServeSettings"]

DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Host names a request may address (the ``Host`` header): a page on another site that rebinds its DNS
name to 127.0.0.1 must not reach the viewer's API."""


@dataclass(frozen=True)
class ServeSettings:
    """Limits and lifetimes of one viewer.

    Attributes:
        max_upload_mb: largest file accepted, in MiB (a larger one is refused while it is being received).
        max_files: most files in one upload; more are refused before anything is predicted.
        max_queue: most images waiting for the model over all sessions; a new upload beyond it is refused.
        max_sessions: most browser sessions open at once.
        session_ttl: seconds without a request after which a session and its uploads are deleted (the page
            pings well within it while it is open).
        preview_size: longer side, in pixels, of the image and layers sent to the browser.
        keep_dir: folder into which a session's uploads and results are copied when the user asks to keep
            them; ``None`` turns the option off.
    """

    max_upload_mb: float = 50.0
    max_files: int = 20
    max_queue: int = 200
    max_sessions: int = 16
    session_ttl: float = 1800.0
    preview_size: int = 1024
    keep_dir: Path | None = None

    def __post_init__(self) -> None:
        for key in ("max_upload_mb", "session_ttl"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key}={value!r} must be a positive number")
        for key in ("max_files", "max_queue", "max_sessions", "preview_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} must be a whole number >= 1")
        if self.preview_size < 64:
            raise ValueError(f"preview_size={self.preview_size} is too small to read; use at least 64")

    @property
    def max_upload_bytes(self) -> int:
        """:attr:`max_upload_mb` in bytes."""
        return int(self.max_upload_mb * (1 << 20))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ServeSettings:
        """The settings of a composed ``serve.yaml`` (keys of the same names; missing ones keep the defaults)."""
        values: dict[str, Any] = {}
        for key in ("max_upload_mb", "session_ttl"):
            if cfg.get(key) is not None:
                values[key] = float(cfg[key])
        for key in ("max_files", "max_queue", "max_sessions", "preview_size"):
            if cfg.get(key) is not None:
                values[key] = int(cfg[key])
        if cfg.get("keep_dir"):
            values["keep_dir"] = Path(str(cfg["keep_dir"])).expanduser().absolute()
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """What the page needs to know to check a batch before sending it."""
        return {
            "max_upload_mb": self.max_upload_mb,
            "max_files": self.max_files,
            "session_ttl": self.session_ttl,
            "keep_available": self.keep_dir is not None,
        }
