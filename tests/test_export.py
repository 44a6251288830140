"""Exported ONNX / TorchScript models reproduce the network, with free batch and image size, and say what they are."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cxrnet.checkpoint import save_checkpoint
from cxrnet.data.transforms import Preprocessing
from cxrnet.export import FORMATS, METADATA_FILE, export_model, output_names
from cxrnet.models import CXRNet, create_model

CLASSES = ["normal", "bacterial", "viral", "covid19"]
PREPROCESSING = Preprocessing(image_size=64, mean=0.45, std=0.3)
ALL_OUTPUTS = ["lung_logits", "infection_logits", "explanation", "class_logits", "severity"]
# (batch, height, width): the export size, then another batch size and a non-square size.
SHAPES = [(1, 64, 64), (3, 96, 128)]


def tiny_net(severity: bool) -> CXRNet:
    torch.manual_seed(0)
    return create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        severity_targets=["brixia"] if severity else [],
        severity_scales={"brixia": 18},
    ).eval()


def reference(net: CXRNet, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net(x)._asdict()
    return {name: value.numpy() for name, value in out.items() if value is not None}


@pytest.fixture(scope="module")
def severity_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[CXRNet, Path]:
    net = tiny_net(severity=True)
    return net, save_checkpoint(tmp_path_factory.mktemp("ckpt") / "net.ckpt", net, PREPROCESSING)


@pytest.fixture(scope="module")
def onnx_file(severity_checkpoint: tuple[CXRNet, Path]) -> Path:
    _, checkpoint = severity_checkpoint
    return export_model(checkpoint, "onnx", checkpoint.parent / "out" / "model.onnx")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_onnxruntime_matches_pytorch_for_every_output(
    severity_checkpoint: tuple[CXRNet, Path], onnx_file: Path, shape: tuple[int, int, int]
) -> None:
    net, _ = severity_checkpoint
    batch, height, width = shape
    x = torch.randn(batch, 1, height, width, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ALL_OUTPUTS
    assert [i.name for i in session.get_inputs()] == ["image"]
    got = dict(zip(names, session.run(None, {"image": x.numpy()})))
    expected = reference(net, x)
    assert set(got) == set(expected)
    for name in names:
        assert got[name].shape == expected[name].shape, name
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-4, err_msg=name)


def test_onnx_metadata_names_classes_preprocessing_and_outputs(onnx_file: Path) -> None:
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["classes"]) == CLASSES
    assert json.loads(props["preprocessing"]) == PREPROCESSING.to_dict()
    assert json.loads(props["output_names"]) == ALL_OUTPUTS
    assert json.loads(props["input_name"]) == "image"
    assert json.loads(props["severity_targets"]) == ["brixia"]


def test_torchscript_matches_and_carries_metadata(tmp_path: Path) -> None:
    net = tiny_net(severity=False)
    checkpoint = save_checkpoint(tmp_path / "net.ckpt", net, PREPROCESSING)
    path = export_model(checkpoint, "torchscript", tmp_path / "model.pt")
    files = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's own deprecation notice
        loaded = torch.jit.load(str(path), _extra_files=files)
    metadata = json.loads(files[METADATA_FILE])
    assert metadata["classes"] == CLASSES and metadata["output_names"] == ALL_OUTPUTS[:4]
    for batch, height, width in SHAPES:
        x = torch.randn(batch, 1, height, width)
        with torch.no_grad():
            got = loaded(x)
        expected = reference(net, x)
        assert sorted(got) == sorted(expected) == sorted(ALL_OUTPUTS[:4])
        for name, value in expected.items():
            np.testing.assert_allclose(got[name].numpy(), value, rtol=0, atol=1e-4, err_msg=name)


def test_lung_gated_model_exports_and_matches_at_the_export_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        gate_with_lungs=True,
    ).eval()
    path = export_model(
        save_checkpoint(tmp_path / "net.ckpt", net, PREPROCESSING), "onnx", tmp_path / "m.onnx"
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 64, 64)
    got = dict(zip(ALL_OUTPUTS, session.run(None, {"image": x.numpy()})))
    for name, value in reference(net, x).items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-4, err_msg=name)


def test_output_names_follow_the_severity_head() -> None:
    assert output_names(tiny_net(severity=True)) == ALL_OUTPUTS
    assert output_names(tiny_net(severity=False)) == ALL_OUTPUTS[:4]


def test_unknown_format_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"valid formats: onnx, torchscript, hf$") as info:
        export_model(tmp_path / "missing.ckpt", "tflite", tmp_path / "m.tflite")
    assert "'tflite'" in str(info.value)
    assert FORMATS == ("onnx", "torchscript", "hf")


def test_an_existing_file_is_replaced_only_with_overwrite(
    severity_checkpoint: tuple[CXRNet, Path], tmp_path: Path
) -> None:
    _, checkpoint = severity_checkpoint
    output = tmp_path / "model.pt"
    output.write_bytes(b"another model")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export_model(checkpoint, "torchscript", output)
    assert output.read_bytes() == b"another model"
    export_model(checkpoint, "torchscript", output, overwrite=True)
    assert output.read_bytes() != b"another model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left behind


def test_image_size_must_fit_the_output_stride(
    severity_checkpoint: tuple[CXRNet, Path], tmp_path: Path
) -> None:
    _, checkpoint = severity_checkpoint
    with pytest.raises(ValueError, match="multiple of 32"):
        export_model(checkpoint, "onnx", tmp_path / "m.onnx", image_size=70)


@pytest.mark.slow
def test_cli_writes_only_the_model(severity_checkpoint: tuple[CXRNet, Path], tmp_path: Path) -> None:
    _, checkpoint = severity_checkpoint
    output = tmp_path / "exported" / "model.onnx"
    command = [
        sys.executable,
        "-m",
        "cxrnet.export",
        f"checkpoint={checkpoint}",
        "format=onnx",
        f"output={output}",
    ]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no outputs/ in the working directory
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.onnx"]  # no .hydra, no log file
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ALL_OUTPUTS

    failed = subprocess.run(
        [sys.executable, "-m", "cxrnet.export", f"checkpoint={checkpoint}", "format=keras", "output=m.keras"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "valid formats: onnx, torchscript, hf" in failed.stderr
    assert not (tmp_path / "outputs").exists()
