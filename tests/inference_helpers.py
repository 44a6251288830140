"""Shared pieces of the inference and batch-prediction tests: a tiny checkpoint and awkward input files.

Import the fixtures into a test module (``from inference_helpers import tiny_checkpoint``) to use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cxrnet.checkpoint import save_checkpoint
from cxrnet.data.records import Record
from cxrnet.data.synthetic import synthetic_splits
from cxrnet.data.transforms import Preprocessing
from cxrnet.models import CXRNet, create_model
from cxrnet.provenance import training_heads

CLASSES = ["normal", "bacterial", "viral", "covid19"]
SEVERITY_TARGETS = ["geographic_extent", "brixia"]
SEVERITY_SCALES = {"geographic_extent": 8, "brixia": 18}
IMAGE_SIZE = 64


def tiny_net(seed: int = 0) -> CXRNet:
    """A random-init two-encoder CXRNet small enough for 64-pixel tests on a CPU."""
    torch.manual_seed(seed)
    return create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        severity_targets=SEVERITY_TARGETS,
        severity_scales=SEVERITY_SCALES,
    ).eval()


def write_tiny_checkpoint(path: Path, seed: int = 0, **extra: Any) -> Path:
    """Save :func:`tiny_net` with 64-pixel preprocessing as a cxrnet checkpoint (``extra``: more metadata)."""
    preprocessing = Preprocessing(image_size=IMAGE_SIZE, mean=0.5, std=0.25)
    return save_checkpoint(path, tiny_net(seed), preprocessing, extra or None)


def cohen_heads() -> dict[str, Any]:
    """The ``heads`` record of a model trained on Cohen-like data: lung masks, labels, extent; no infection."""
    records = [
        Record(
            path=f"/data/cohen/{i}.png",
            patient_id=f"p{i}",
            source="cohen",
            label="covid19",
            lung_mask=(f"/data/cohen/masks/{i}.png",),
            severity={"geographic_extent": 2.0},
        )
        for i in range(4)
    ]
    return training_heads(records, CLASSES, SEVERITY_TARGETS)


def synthetic_heads() -> dict[str, Any]:
    """The ``heads`` record of a model trained on phantoms only."""
    items = synthetic_splits(n_train=8, n_val=0, n_test=0, size=32, classes=CLASSES)["train"]
    return training_heads(items, CLASSES, SEVERITY_TARGETS)


#: A training fingerprint whose ids and paths must not leak into shared files (see tests/test_pretrained.py).
SECRET_PATIENTS = ["patient-7f3a", "patient-91bc"]
FINGERPRINT = {
    "patient_ids": SECRET_PATIENTS,
    "image_hashes": ["ab" * 32, "cd" * 32, "ef" * 32],
    "hash": "phash-256",
    "source": ["cohen"],
    "n_items": 3,
}
RUN_METRICS = {"test/cls/macro_f1": 0.6125, "test/lung/dice": 0.8375, "run/precision": "32-true"}


def write_run_checkpoint(run: Path) -> Path:
    """``<run>/checkpoints/best.ckpt`` of a calibrated tiny model trained on Cohen-like data, and the run's
    ``metrics.json``: temperature 1.7, recorded heads (no infection masks), fingerprint, precision."""
    calibration = {
        "temperature": 1.7,
        "data": "cohen",
        "split": "val",
        "n_items": 20,
        "ece_before": 0.12,
        "ece_after": 0.04,
        "root": "/private/hospital/films",
        "checkpoint": "/private/runs/uncalibrated.ckpt",
    }
    checkpoint = write_tiny_checkpoint(
        run / "checkpoints" / "best.ckpt",
        temperature=1.7,
        calibrated_on=calibration,
        heads=cohen_heads(),
        training_data=FINGERPRINT,
        precision="bf16-mixed",
    )
    (run / "metrics.json").write_text(json.dumps(RUN_METRICS))
    return checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random-init checkpoint, written once per test session."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def radiograph(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 H x W test image: bright 'mediastinum' between two dark 'lungs', plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    lungs = (((x / width - 0.3) / 0.15) ** 2 + ((y / height - 0.5) / 0.3) ** 2 < 1) | (
        ((x / width - 0.7) / 0.15) ** 2 + ((y / height - 0.5) / 0.3) ** 2 < 1
    )
    image = np.where(lungs, 60.0, 190.0) + rng.normal(0, 12, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Save uint8 gray/RGB/RGBA or uint16 gray pixels as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_monochrome1_dicom(path: Path, pixels: np.ndarray) -> Path:
    """Write uint16 H x W ``pixels`` as a 16-bit MONOCHROME1 DICOM (no window: cxrnet min-max scales it)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_corrupt_files(folder: Path) -> dict[str, Path]:
    """Three unreadable 'images': a truncated PNG, random bytes named .jpg and an empty .png."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = write_png(folder / "whole.png", radiograph(64, 64)).read_bytes()
    (folder / "whole.png").unlink()
    files = {
        "truncated": folder / "truncated.png",
        "random": folder / "random_bytes.jpg",
        "empty": folder / "empty.png",
    }
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    files["empty"].write_bytes(b"")
    return files
