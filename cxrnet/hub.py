"""Share models on the Hugging Face Hub: :func:`push_to_hub` uploads a pretrained folder and
:func:`from_pretrained` loads one back as a :class:`~cxrnet.predictor.Predictor`.

>>> from cxrnet.hub import from_pretrained, push_to_hub
>>> push_to_hub("runs/covidx/checkpoints/best.ckpt", "me/cxrnet-covidx")   # exports, then uploads
>>> model = from_pretrained("me/cxrnet-covidx")                           # downloads once, then cached
>>> model = from_pretrained("exported/cxrnet-covidx")                     # a local folder: no network

A pretrained folder (``model.safetensors``, ``config.json``, ``README.md``) is what
``python -m cxrnet.export format=hf`` writes (:mod:`cxrnet.pretrained`). Uploading and downloading go through
``huggingface_hub`` (``upload_folder``, ``snapshot_download``), the optional extra ``hub``
(``pip install "cxrnet[hub]"``), imported only when the Hub is used: a local path never needs it or a
network. Without a network, or with ``HF_HUB_OFFLINE=1``, a repo id loads from the local Hugging Face cache
when it was downloaded before, and fails with :class:`HubOfflineError` otherwise. Tokens are
``huggingface_hub``'s (``token=``, ``HF_TOKEN`` or ``huggingface-cli login``); cxrnet never stores one.

A downloaded folder is checked as any other (:func:`cxrnet.pretrained.load_pretrained`); safetensors weights
cannot run code, and only the three files of a pretrained folder are downloaded.
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cxrnet.inference import load_model
from cxrnet.predictor import Predictor
from cxrnet.pretrained import FILES, export_pretrained, read_config

if TYPE_CHECKING:
    import torch

__all__ = ["HUB_HINT", "HubOfflineError", "from_pretrained", "push_to_hub"]

HUB_HINT = 'pip install "cxrnet[hub]"'

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Names that are files cxrnet reads, never repo ids: a missing ``runs/best.ckpt`` is a typo, not a Hub lookup.
_FILE_SUFFIXES = (".ckpt", ".onnx", ".pt", ".safetensors", ".json")

#: Exception class names (anywhere in an error's chain) that mean the Hub could not be reached.
_NETWORK_ERRORS = frozenset(
    {
        "OfflineModeIsEnabled",
        "ConnectError",
        "ConnectTimeout",
        "ConnectionError",
        "NetworkError",
        "ProxyError",
        "ReadTimeout",
        "Timeout",
        "TimeoutException",
    }
)


class HubOfflineError(ConnectionError):
    """The Hugging Face Hub cannot be reached (no network, or ``HF_HUB_OFFLINE=1``) for what was asked."""


def _hub() -> ModuleType:
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError as err:
        raise ImportError(
            f"huggingface_hub is not installed: sharing models on the Hugging Face Hub needs the optional "
            f"extra 'hub': {HUB_HINT} (a local folder loads without it: cxrnet.load_model('<folder>'))"
        ) from err


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _named(err: BaseException, names: frozenset[str] | set[str]) -> bool:
    return any(cls.__name__ in names for e in _chain(err) for cls in type(e).__mro__)


def _offline_error(hub: ModuleType, err: BaseException, what: str) -> HubOfflineError | None:
    """A :class:`HubOfflineError` explaining ``err``, or ``None`` when ``err`` is not about the network."""
    constants = getattr(hub, "constants", None)
    offline_mode = bool(getattr(constants, "HF_HUB_OFFLINE", False)) or _named(err, {"OfflineModeIsEnabled"})
    cached_only = _named(err, {"LocalEntryNotFoundError"})
    if not (offline_mode or cached_only or _named(err, _NETWORK_ERRORS)):
        return None
    endpoint = getattr(constants, "ENDPOINT", "https://huggingface.co")
    if offline_mode:
        reason = "HF_HUB_OFFLINE is set, so huggingface_hub makes no network request"
        fix = "Unset HF_HUB_OFFLINE on a machine with a network"
    else:
        cause = next((e for e in reversed(_chain(err)) if e is not err), err)
        reason = (
            f"the Hub at {endpoint} cannot be reached ({type(cause).__name__}: {cause}): this machine seems "
            "to be offline"
        )
        fix = "Connect to the network (or check the proxy and HF_ENDPOINT)"
    return HubOfflineError(
        f"cannot {what}: {reason}. {fix}, or copy the model folder here and pass its path "
        "(cxrnet.load_model('<folder>') or from_pretrained('<folder>') need no network)"
    )


def from_pretrained(
    repo_id_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    keep_untrained: bool = False,
    precision: str = "auto",
) -> Predictor:
    """Load a model from a local path, or from a Hugging Face Hub repo (downloaded once, then cached).

    Args:
        repo_id_or_path: a local pretrained folder, checkpoint or ``.onnx`` file (anything
            :func:`cxrnet.load_model` reads; no network, no ``huggingface_hub`` needed), or a Hub repo id
            ``"<user or org>/<name>"`` holding a pretrained folder.
        revision: branch, tag or commit of the repo (default its main branch).
        cache_dir: where downloads are cached (default huggingface_hub's, ``~/.cache/huggingface/hub``).
        token: for private or gated repos (default huggingface_hub's: ``HF_TOKEN`` or the saved login).
        local_files_only: use the cache only, never the network.
        device, batch_size, keep_untrained, precision: as for :func:`cxrnet.load_model`.

    Raises:
        FileNotFoundError: a path that does not exist and is not a repo id of the form ``user/name``.
        HubOfflineError: the repo is not in the cache and the Hub cannot be reached (offline, or
            ``HF_HUB_OFFLINE=1``).
        ImportError: a repo id without huggingface_hub installed (``pip install "cxrnet[hub]"``).
        CheckpointError: the downloaded or local files are not a valid cxrnet model.
    """
    options: dict[str, Any] = dict(
        device=device, batch_size=batch_size, keep_untrained=keep_untrained, precision=precision
    )
    text = os.fspath(repo_id_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return load_model(path, **options)
    if not _REPO_ID.match(text) or path.suffix.lower() in _FILE_SUFFIXES:
        raise FileNotFoundError(
            f"{text} is neither a local file or folder nor a Hugging Face Hub repo id of the form 'user/name'"
        )
    hub = _hub()
    try:
        folder = hub.snapshot_download(
            text,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=list(FILES),
            library_name="cxrnet",
        )
    except Exception as err:
        if local_files_only and _named(err, {"LocalEntryNotFoundError"}):
            raise FileNotFoundError(
                f"{text} is not in the local Hugging Face cache{f' ({cache_dir})' if cache_dir else ''}, and "
                "local_files_only=True forbids downloading it"
            ) from err
        offline = _offline_error(
            hub, err, f"download {text} from the Hugging Face Hub, and it is not in the cache"
        )
        if offline is not None:
            raise offline from err
        raise
    return load_model(Path(folder), **options)


def push_to_hub(
    folder_or_checkpoint: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload a pretrained folder (or a checkpoint, exported to one first) to a Hugging Face Hub model repo.

    The repo is created when it does not exist (``private`` then applies). Every file of the folder is
    uploaded in one commit (a folder exported with ``overwrite=true`` into a clone keeps the clone's other
    files, and they are uploaded too).

    Args:
        folder_or_checkpoint: a folder written by ``python -m cxrnet.export format=hf``, or a checkpoint,
            exported into a temporary folder named after the repo (with the run's metrics.json, as the export
            finds it).
        repo_id: ``"<user or org>/<name>"``.
        private: create the repo private (only when it is created).
        token: a write token (default huggingface_hub's: ``HF_TOKEN`` or the saved login).
        commit_message: default ``"Upload cxrnet model"``.
        revision: the branch to commit to (default main).
        create_pr: open a pull request instead of committing.

    Returns:
        The URL of the commit (or pull request).

    Raises:
        ImportError: huggingface_hub is not installed (``pip install "cxrnet[hub]"``).
        FileNotFoundError: ``folder_or_checkpoint`` does not exist.
        CheckpointError: the folder is not a cxrnet pretrained folder, or the checkpoint fails validation.
        HubOfflineError: the Hub cannot be reached.
    """
    hub = _hub()
    path = Path(folder_or_checkpoint).expanduser()
    if path.is_dir():
        read_config(path)  # a folder that would not load is not uploaded
        return _upload(hub, path, repo_id, private, token, commit_message, revision, create_pr)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a pretrained folder or a checkpoint to push")
    with tempfile.TemporaryDirectory(prefix="cxrnet-push-") as scratch:
        folder = export_pretrained(path, Path(scratch) / repo_id.split("/")[-1])
        return _upload(hub, folder, repo_id, private, token, commit_message, revision, create_pr)


def _upload(
    hub: ModuleType,
    folder: Path,
    repo_id: str,
    private: bool | None,
    token: str | bool | None,
    commit_message: str | None,
    revision: str | None,
    create_pr: bool,
) -> str:
    try:
        hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = hub.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message or "Upload cxrnet model",
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    except Exception as err:
        offline = _offline_error(hub, err, f"upload {folder} to the Hugging Face Hub repo {repo_id}")
        if offline is not None:
            raise offline from err
        raise
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info)
