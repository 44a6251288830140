"""Pretrained folders (``python -m cxrnet.export format=hf``): three files that rebuild the checkpoint's
predictor exactly, a model card that says what the model is, and refusals that name the file at fault."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cxrnet.pretrained
from cxrnet import Prediction, __version__, load_model
from cxrnet.checkpoint import CheckpointError, load_network
from cxrnet.data.phantoms import make_phantom
from cxrnet.export import export_model
from cxrnet.pretrained import CARD_FILE, CONFIG_FILE, FILES, WEIGHTS_FILE, load_pretrained

from inference_helpers import (
    CLASSES,
    FINGERPRINT,
    RUN_METRICS,
    SECRET_PATIENTS,
    SEVERITY_SCALES,
    write_run_checkpoint,
    write_tiny_checkpoint,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_checkpoint(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def folder(checkpoint: Path) -> Path:
    return export_model(checkpoint, "hf", checkpoint.parents[2] / "shared" / "cxrnet-cohen")


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CONFIG_FILE).read_text())


def assert_identical(a: Prediction, b: Prediction) -> None:
    assert a.probabilities == b.probabilities and a.label == b.label
    for name in ("lung_mask", "infection_map", "explanation"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.severity == b.severity
    assert a.untrained == b.untrained and a.caveats == b.caveats


def test_the_folder_holds_weights_config_and_card(folder: Path, checkpoint: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    net, meta = load_network(checkpoint)
    config = config_of(folder)
    assert config["format"] == "cxrnet-pretrained" and config["format_version"] == 1
    assert config["model"] == {**net.config, "pretrained": False}
    assert config["model"]["severity_scales"] == SEVERITY_SCALES
    assert config["classes"] == CLASSES and config["severity_targets"] == net.severity_targets
    assert config["preprocessing"] == meta["preprocessing"] and "letterboxed" in config["input"]
    assert config["precision"] == "bf16-mixed" and config["temperature"] == 1.7
    assert config["trained_heads"]["infection"] is False and config["trained_heads"]["lung"] is True
    assert "infection_map" in config["untrained_outputs"]
    assert config["cxrnet_version"] == config["exported_with"] == __version__
    weights = load_file(folder / WEIGHTS_FILE)
    expected = net.state_dict()
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], value) for key, value in expected.items())


def test_load_model_of_the_folder_predicts_exactly_as_the_checkpoint(folder: Path, checkpoint: Path) -> None:
    from_checkpoint = load_model(checkpoint, precision="32-true")
    from_folder = load_model(folder, precision="32-true")
    assert from_folder.temperature == from_checkpoint.temperature == 1.7
    assert from_folder.untrained == from_checkpoint.untrained and "infection_map" in from_folder.untrained
    images = [make_phantom(3, size=96, label="covid19").image, make_phantom(4, size=80).image[:, :70]]
    for a, b in zip(from_checkpoint.predict(images), from_folder.predict(images)):
        assert_identical(a, b)
    assert load_pretrained(folder)[1]["heads"] == from_checkpoint.heads


def test_shared_files_hold_no_patient_ids_or_local_paths(folder: Path) -> None:
    text = (folder / CONFIG_FILE).read_text() + (folder / CARD_FILE).read_text()
    for secret in [*SECRET_PATIENTS, *FINGERPRINT["image_hashes"], "/private/"]:
        assert secret not in text
    summary = config_of(folder)["training_data"]
    assert summary["n_patients"] == 2 and summary["n_items"] == 3 and summary["source"] == ["cohen"]
    assert len(summary["sha256"]) == 64 and summary["sha256"] in text


def test_the_model_card_says_what_the_model_is_and_is_not(folder: Path) -> None:
    card = (folder / CARD_FILE).read_text()
    front, body = card.split("\n---\n", 1)
    assert front.startswith("---\nlibrary_name: cxrnet\ntags:\n") and "- chest-x-ray" in front
    for section in ("## Intended use", "## Classes", "## Training data", "## Evaluation", "## Limitations"):
        assert section in body
    assert "NOT A MEDICAL DEVICE" in body and "Research only" in body
    classes = body.split("## Classes", 1)[1].split("##", 1)[0]
    assert all(f"| {name} |" in classes for name in CLASSES) and "| covid19 | 4 |" in classes
    evaluation = body.split("## Evaluation", 1)[1].split("##", 1)[0]
    assert "| test/cls/macro_f1 | 0.6125 |" in evaluation and "| test/lung/dice | 0.8375 |" in evaluation
    assert "| infection map | no | 0 |" in body  # the head Cohen-like data never trained
    assert "Temperature **1.7**" in body and "`cohen`" in body


def test_a_checkpoint_outside_a_run_folder_gets_a_card_without_metrics(tmp_path: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "loose.ckpt")
    card = (export_model(checkpoint, "hf", tmp_path / "model") / CARD_FILE).read_text()
    assert "No `metrics.json` was found" in card and "test/cls/macro_f1" not in card
    assert "Not calibrated" in card
    explicit = tmp_path / "scores.json"
    explicit.write_text(json.dumps(RUN_METRICS))
    card = (export_model(checkpoint, "hf", tmp_path / "with", metrics=explicit) / CARD_FILE).read_text()
    assert "| test/lung/dice | 0.8375 |" in card


def test_a_non_empty_folder_is_refused_unless_overwrite(checkpoint: Path, tmp_path: Path) -> None:
    target = tmp_path / "clone"
    target.mkdir()
    (target / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    with pytest.raises(FileExistsError, match="overwrite=true") as caught:
        export_model(checkpoint, "hf", target)
    assert str(target) in str(caught.value)
    assert sorted(p.name for p in target.iterdir()) == [".gitattributes"]
    export_model(checkpoint, "hf", target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == sorted([".gitattributes", *FILES])
    assert load_model(target).classes == CLASSES
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sorted(p.name for p in export_model(checkpoint, "hf", empty).iterdir()) == sorted(FILES)


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "overwrite"])
def test_a_failed_export_leaves_nothing_half_written(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    target = tmp_path / "model"
    before = {}
    if existing:
        export_model(write_tiny_checkpoint(tmp_path / "other.ckpt", seed=1), "hf", target)
        before = {name: (target / name).read_bytes() for name in FILES}
    write = cxrnet.pretrained._write

    def disk_full(path: Path, data: bytes) -> None:
        if path.name == CONFIG_FILE:
            raise OSError(28, "No space left on device")
        write(path, data)

    monkeypatch.setattr(cxrnet.pretrained, "_write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_model(checkpoint, "hf", target, overwrite=existing)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model", "other.ckpt"] if existing else [])
    if existing:
        assert {name: (target / name).read_bytes() for name in FILES} == before


def _edit_config(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = config_of(folder)
        for key, value in changes.items():
            node = config
            *parents, last = key.split(".")
            for parent in parents:
                node = node[parent]
            if value is None:
                del node[last]
            else:
                node[last] = value
        (folder / CONFIG_FILE).write_text(json.dumps(config))

    return edit


BROKEN: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # case: (edit, file named in the message, message)
    "no preprocessing": (
        _edit_config(preprocessing=None),
        CONFIG_FILE,
        r"lacks the key\(s\) \['preprocessing'\]",
    ),
    "not JSON": (
        lambda f: (f / CONFIG_FILE).write_text('{"format": '),
        CONFIG_FILE,
        "not valid JSON .line 1",
    ),
    "a list": (lambda f: (f / CONFIG_FILE).write_text("[1, 2]"), CONFIG_FILE, "holds a JSON list"),
    "another format": (_edit_config(format="diffusers"), CONFIG_FILE, "has format 'diffusers'"),
    "image size": (
        _edit_config(**{"preprocessing.image_size": 70}),
        CONFIG_FILE,
        r"config.json: preprocessing.image_size is 70; expected a whole number, a multiple of 32",
    ),
    "classes disagree": (_edit_config(classes=["a", "b", "c", "d"]), CONFIG_FILE, "config.json: classes is"),
    "unknown setting": (
        _edit_config(**{"model.wings": 2}),
        CONFIG_FILE,
        r"model has unknown settings \['wings'\]",
    ),
    "fewer classes than the weights": (
        _edit_config(classes=CLASSES[:3], **{"model.classes": CLASSES[:3]}),
        WEIGHTS_FILE,
        "tensor 'classification_head.fc.weight' has 4 outputs but classes names 3",
    ),
    "weights of another network": (
        _edit_config(**{"model.decoder_channels": [32, 24, 16, 16, 4]}),
        WEIGHTS_FILE,
        "do not fit the network",
    ),
    "no weights": (lambda f: (f / WEIGHTS_FILE).unlink(), WEIGHTS_FILE, "it has no model.safetensors"),
    "truncated weights": (
        lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:5000]),
        WEIGHTS_FILE,
        "cannot read",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_folder_is_refused_naming_the_file(folder: Path, tmp_path: Path, case: str) -> None:
    edit, name, message = BROKEN[case]
    broken = shutil.copytree(folder, tmp_path / "broken")
    edit(broken)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_model(broken)
    assert name in str(caught.value) and str(broken) in str(caught.value)
    assert "format=hf" in str(caught.value)  # says how to get a usable folder


def test_the_folder_itself_loads(folder: Path, tmp_path: Path) -> None:
    """Guards the cases above: a copy that is not edited loads."""
    assert load_model(shutil.copytree(folder, tmp_path / "copy")).classes == CLASSES


def test_image_size_is_refused_for_hf(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size applies to format=onnx"):
        export_model(checkpoint, "hf", tmp_path / "m", image_size=64)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_cli_writes_the_folder_and_refuses_to_overwrite_it(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "exported" / "cxrnet-cohen"
    command = [
        sys.executable,
        "-m",
        "cxrnet.export",
        f"checkpoint={checkpoint}",
        "format=hf",
        f"output={output}",
    ]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no outputs/ in the working directory
    assert sorted(p.name for p in output.parent.iterdir()) == ["cxrnet-cohen"]  # no .hydra, no log file
    assert sorted(p.name for p in output.iterdir()) == sorted(FILES)
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode != 0 and "overwrite=true" in again.stderr
