"""cxrnet.hub: local folders load without a network or huggingface_hub; the Hub is reached only for repo ids,
and an offline machine gets a message saying so. No test contacts the Hub: uploads are monkeypatched, and the
offline runs point HF_ENDPOINT at a closed local port."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import pytest

import cxrnet
from cxrnet import load_model
from cxrnet.checkpoint import CheckpointError
from cxrnet.export import export_model
from cxrnet.hub import HubOfflineError, from_pretrained, push_to_hub
from cxrnet.pretrained import FILES, read_config

from inference_helpers import CLASSES, radiograph, write_run_checkpoint

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_checkpoint(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def folder(checkpoint: Path) -> Path:
    return export_model(checkpoint, "hf", checkpoint.parents[2] / "cxrnet-cohen")


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import huggingface_hub`` fails, as without the extra."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)


class FakeHub:
    """Records what cxrnet asks of huggingface_hub, and what the uploaded folder held at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: list[str] = []

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs: Any) -> Any:
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = sorted(p.name for p in folder.iterdir())
        read_config(folder)  # a loadable folder, at the moment of the upload
        return type(
            "CommitInfo", (), {"commit_url": "https://huggingface.co/me/model/commit/abc", "pr_url": None}
        )()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "create_repo", fake.create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake.upload_folder)
    return fake


def test_from_pretrained_loads_a_local_folder_without_huggingface_hub(folder: Path, no_hub: None) -> None:
    model = from_pretrained(folder, precision="32-true")
    image = radiograph(80, 64)
    expected = load_model(folder, precision="32-true").predict(image)
    got = model.predict(image)
    assert model.classes == CLASSES and got.probabilities == expected.probabilities
    assert np.array_equal(got.explanation, expected.explanation)
    assert from_pretrained(str(folder)).temperature == 1.7


def test_a_repo_id_without_the_hub_extra_says_how_to_install_it(folder: Path, no_hub: None) -> None:
    with pytest.raises(ImportError, match=r'pip install "cxrnet\[hub\]"'):
        from_pretrained("someone/cxrnet-model")
    with pytest.raises(ImportError, match=r'pip install "cxrnet\[hub\]"'):
        push_to_hub(folder, "someone/cxrnet-model")


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path: Path, no_hub: None) -> None:
    for path in (tmp_path / "missing", "./missing/model", "model.ckpt", "runs/best.ckpt"):
        with pytest.raises(
            FileNotFoundError, match="neither a local file or folder nor a Hugging Face Hub repo"
        ):
            from_pretrained(path)


def test_push_uploads_the_folder_with_its_three_files(folder: Path, fake_hub: FakeHub) -> None:
    url = push_to_hub(folder, "me/cxrnet-cohen", private=True, token="hf_test")
    assert url == "https://huggingface.co/me/model/commit/abc"
    (create, repo), (upload, kwargs) = fake_hub.calls
    assert create == "create_repo" and repo == {
        "repo_id": "me/cxrnet-cohen",
        "token": "hf_test",
        "private": True,
        "exist_ok": True,
    }
    assert upload == "upload_folder" and kwargs["repo_id"] == "me/cxrnet-cohen"
    assert Path(kwargs["folder_path"]) == folder and kwargs["token"] == "hf_test"
    assert fake_hub.uploaded == sorted(FILES)


def test_push_of_a_checkpoint_exports_it_first_and_cleans_up(checkpoint: Path, fake_hub: FakeHub) -> None:
    push_to_hub(checkpoint, "me/cxrnet-cohen")
    kwargs = fake_hub.calls[-1][1]
    assert fake_hub.uploaded == sorted(FILES)
    uploaded = Path(kwargs["folder_path"])
    assert uploaded.name == "cxrnet-cohen"  # the card's title is the repo's name
    assert not uploaded.exists()  # the temporary export is gone


def test_push_refuses_a_folder_that_is_not_a_model(tmp_path: Path, fake_hub: FakeHub) -> None:
    (tmp_path / "README.md").write_text("# notes\n")
    with pytest.raises(CheckpointError, match=r"no config\.json and no model\.safetensors"):
        push_to_hub(tmp_path, "me/notes")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_to_hub(tmp_path / "missing.ckpt", "me/notes")
    assert fake_hub.calls == []


def test_from_pretrained_downloads_only_the_model_files(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, Any] = {}

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        asked.update(kwargs, repo_id=repo_id)
        return str(folder)  # as if downloaded into the cache

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = from_pretrained("me/cxrnet-cohen", revision="v1", local_files_only=True)
    assert asked["repo_id"] == "me/cxrnet-cohen" and asked["revision"] == "v1"
    assert asked["local_files_only"] is True and sorted(asked["allow_patterns"]) == sorted(FILES)
    assert model.classes == CLASSES


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import sys
    from cxrnet.hub import HubOfflineError, from_pretrained, push_to_hub

    for name, call in [
        ("download", lambda: from_pretrained("someone/cxrnet-model")),
        ("upload", lambda: push_to_hub(sys.argv[1], "someone/cxrnet-model", token="hf_not_a_real_token")),
    ]:
        try:
            call()
        except HubOfflineError as err:
            print(name, "HubOfflineError", err)
        else:
            print(name, "no error")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("offline", [False, True], ids=["unreachable endpoint", "HF_HUB_OFFLINE=1"])
def test_without_a_network_the_hub_fails_with_an_offline_message(
    folder: Path, tmp_path: Path, offline: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_HOME=str(tmp_path / "hf-home"), OMP_WAIT_POLICY="PASSIVE")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(folder)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert set(lines) == {"download", "upload"}
    for name, line in lines.items():
        assert line.startswith("HubOfflineError"), (name, line)
        if offline:
            assert "HF_HUB_OFFLINE is set" in line
        else:
            assert f"{UNREACHABLE} cannot be reached" in line and "offline" in line
        assert "pass its path" in line  # the way out: a local folder
    assert "not in the cache" in lines["download"]


def test_the_hub_functions_are_public_names_of_cxrnet() -> None:
    assert cxrnet.from_pretrained is from_pretrained and cxrnet.push_to_hub is push_to_hub
    assert {"from_pretrained", "push_to_hub"} <= set(cxrnet.__all__)
    assert issubclass(HubOfflineError, ConnectionError)
