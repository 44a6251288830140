"""A checkpoint alone rebuilds the network; loading never unpickles arbitrary objects."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from cxrnet.checkpoint import (
    CheckpointError,
    load_network,
    preprocessing_of,
    read_checkpoint,
    save_checkpoint,
)
from cxrnet.data.transforms import Preprocessing
from cxrnet.models import create_model

CLASSES = ["normal", "bacterial", "viral", "covid19"]


def test_minimal_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        severity_targets=["brixia"],
        severity_scales={"brixia": 18},
    ).eval()
    path = save_checkpoint(tmp_path / "net.ckpt", net, Preprocessing(image_size=64, mean=0.4, std=0.3))
    rebuilt, meta = load_network(path)
    assert meta["classes"] == CLASSES and preprocessing_of(meta) == Preprocessing(64, 0.4, 0.3)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(net(x), rebuilt(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_explanation_smoothing_round_trips_and_is_stored_only_when_set(tmp_path: Path, smoothing: float) -> None:
    # 0.5 is the top of the range that both the model and checkpoint validation accept; without
    # smoothing the key is left out, so that cxrnet releases older than the option still load the file.
    net = create_model(
        classes=CLASSES, encoder="tu-mobilenetv3_small_100", explanation_smoothing=smoothing
    ).eval()
    path = save_checkpoint(tmp_path / "net.ckpt", net, Preprocessing(image_size=64, mean=0.4, std=0.3))
    stored = read_checkpoint(path)["cxrnet"]["model"]
    assert ("explanation_smoothing" in stored) == bool(smoothing)
    rebuilt, _ = load_network(path)
    assert rebuilt.explanation_smoothing == smoothing
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x).explanation, rebuilt(x).explanation, rtol=0, atol=0)


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned_by_checkpoint",))


def test_crafted_checkpoint_does_not_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "cxrnet": {"format_version": 1}, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned_by_checkpoint").exists()
    # A plain pickle file is refused too.
    with open(tmp_path / "plain.pkl", "wb") as fh:
        pickle.dump(_RunsCode(), fh)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "plain.pkl")
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_not_a_cxrnet_checkpoint(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a cxrnet checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.ckpt"):
        read_checkpoint(tmp_path / "text.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
