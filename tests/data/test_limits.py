"""One bounded image decoder: every path refuses a decompression bomb or a lying header from its header.

Fast tests use bombs of 3000 x 3000 under a 1-megapixel limit (same code paths, small files); the slow ones
use the 14000 x 14000 bombs of issue 10 under the default limit and measure the reader's peak memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bombs import BOMB_SIDE, bomb_png, deflated_dicom, deflated_dicom_bomb, lying_dicom
from PIL import Image

from cxrnet.data import limits, raster
from cxrnet.data.build import SourceSpec, build_splits
from cxrnet.data.dicom import is_dicom
from cxrnet.data.images import MAX_IMAGE_PIXELS_ENV, ImageReadError, max_image_pixels, read_image
from cxrnet.data.masks import read_mask

from fixtures import gray, save, write_dicom

SMALL_SIDE = 3000
SMALL_LIMIT = 1_000_000


def _small_bombs(root: Path) -> dict[str, Path]:
    return {
        "bomb png": bomb_png(root / "bomb.png", SMALL_SIDE),
        "16-bit rgb bomb": bomb_png(root / "bomb16.png", SMALL_SIDE, bit_depth=16, colour_type=2),
        "deflated dicom bomb": deflated_dicom_bomb(root / "bomb.dcm", SMALL_SIDE),
    }


@pytest.mark.parametrize("kind", ["bomb png", "16-bit rgb bomb", "deflated dicom bomb"])
def test_a_bomb_is_refused_naming_file_size_and_limit(tmp_path: Path, kind: str) -> None:
    path = _small_bombs(tmp_path)[kind]
    with pytest.raises(ImageReadError) as caught:
        read_image(path, max_pixels=SMALL_LIMIT)
    assert caught.value.path == str(path)
    assert f"{SMALL_SIDE}x{SMALL_SIDE}" in caught.value.reason and str(SMALL_LIMIT) in caught.value.reason
    assert MAX_IMAGE_PIXELS_ENV in caught.value.reason  # says how to raise the limit
    with pytest.raises(ImageReadError, match="above the limit"):
        read_mask(path, max_pixels=SMALL_LIMIT)  # masks go through the same readers


def test_the_limit_comes_from_argument_then_environment_then_constant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path / "a.png", np.zeros((40, 50), np.uint8))
    assert max_image_pixels() == limits.MAX_IMAGE_PIXELS
    assert read_image(path, max_pixels=2000).shape == (40, 50)  # exactly at the limit is fine
    with pytest.raises(ImageReadError, match="40x50"):
        read_image(path, max_pixels=1999)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1999")
    with pytest.raises(ImageReadError, match="1999 pixels"):
        read_image(path)
    assert read_image(path, max_pixels=10_000).shape == (40, 50)  # the argument wins
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_IMAGE_PIXELS_ENV):
        read_image(path)
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV)
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 1999)
    with pytest.raises(ImageReadError, match="1999 pixels"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".jpg", ".tif", ".bmp"])
def test_every_pillow_format_is_checked_before_decoding(tmp_path: Path, suffix: str) -> None:
    path = save(tmp_path / f"a{suffix}", gray(0, (120, 100)))
    with pytest.raises(ImageReadError, match="120x100"):
        read_image(path, max_pixels=11_999)
    assert read_image(path, max_pixels=12_000).shape == (120, 100)


def test_pillows_own_bomb_guard_becomes_an_image_read_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path / "a.jpg", gray(0, (120, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this, in Image.open
    with pytest.raises(ImageReadError, match=r"PIL\.Image\.MAX_IMAGE_PIXELS") as caught:
        read_image(path, max_pixels=10**8)
    assert caught.value.path == str(path)


def test_truncated_files_are_size_checked_before_the_opencv_fallback(tmp_path: Path) -> None:
    path = save(tmp_path / "cut.png", gray(3, (300, 200)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="300x200"):
        read_image(path, max_pixels=50_000)


def test_dicom_whose_rows_and_columns_lie_is_refused(tmp_path: Path) -> None:
    # Same byte count as the real 256 x 256 image: only the shape gives the lie away.
    strip = lying_dicom(tmp_path / "strip.dcm", 16384, 4)
    with pytest.raises(ImageReadError, match=r"16384x4.*strip") as caught:
        read_image(strip)
    assert caught.value.path == str(strip)
    # Rows x Columns smaller or larger than the pixel data.
    for rows, columns in [(128, 128), (512, 512)]:
        with pytest.raises(ImageReadError, match=rf"{rows}x{columns}x1x16 bits.*needs"):
            read_image(lying_dicom(tmp_path / f"{rows}.dcm", rows, columns))
    # An honest file of the same pixels still reads.
    honest = lying_dicom(tmp_path / "honest.dcm", 256, 256)
    assert read_image(honest).shape == (256, 256)


def test_dicom_header_limit_applies_before_pixel_data_is_read(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "big.dcm", np.zeros((1200, 1000), np.uint16))
    with pytest.raises(ImageReadError, match="1200x1000"):
        read_image(path, max_pixels=1_000_000)
    assert read_image(path, max_pixels=1_200_000).shape == (1200, 1000)


def test_a_honest_deflated_dicom_reads_like_pydicom_reads_it(tmp_path: Path) -> None:
    import pydicom

    stored = np.arange(200 * 240, dtype=np.uint16).reshape(200, 240)
    path = deflated_dicom(tmp_path / "deflated.dcm", stored)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, stored)
    image = read_image(path)
    np.testing.assert_allclose(image, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6)


def test_a_fifo_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(fifo)
    fifo_dcm = tmp_path / "IM0001"
    os.mkfifo(fifo_dcm)
    assert not is_dicom(fifo_dcm)


def test_a_decoder_crash_of_any_type_becomes_an_image_read_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path / "a.png", gray(0))

    def explode(im: Image.Image) -> None:
        raise struct_error("unpack requires a buffer of 4 bytes")

    struct_error = __import__("struct").error
    monkeypatch.setattr(raster, "_pil_to_raster", explode)
    with pytest.raises(ImageReadError, match=r"decoder failed \(error: unpack") as caught:
        read_image(path)
    assert caught.value.path == str(path)


def _folder_with_bombs(root: Path) -> tuple[Path, list[Path]]:
    """A class-per-folder tree of 16 readable images and one of each hostile file, the bombs small."""
    for index in range(16):
        save(root / ("normal" if index % 2 else "covid") / f"ok{index}.png", gray(index, (64, 64)))
    hostile = [
        bomb_png(root / "covid" / "bomb.png", SMALL_SIDE),
        bomb_png(root / "normal" / "bomb16.png", SMALL_SIDE, bit_depth=16, colour_type=2),
        deflated_dicom_bomb(root / "covid" / "bomb.dcm", SMALL_SIDE),
        lying_dicom(root / "normal" / "liar.dcm"),
    ]
    return root, hostile


def test_hostile_files_are_skipped_and_listed_by_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(SMALL_LIMIT))
    root, hostile = _folder_with_bombs(tmp_path / "data")
    spec = SourceSpec("folder", str(root))
    build = build_splits(
        [spec], ["normal", "covid19"], on_error="skip", duplicate_max_distance=None, workers=2
    )
    dropped = {issue.path for issue in build.report.issues if issue.dropped}
    assert dropped == {str(p) for p in hostile}
    assert sum(len(records) for records in build.splits.values()) == 16
    # With on_error=error the scan (here for near-duplicates) stops at the first, naming it and the way out.
    with pytest.raises(ImageReadError, match="on_error=skip") as caught:
        build_splits([spec], ["normal", "covid19"], on_error="error", duplicate_max_distance=24)
    assert caught.value.path in {str(p) for p in hostile}


def test_data_check_lists_every_hostile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrnet.data.check import main

    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(SMALL_LIMIT))
    root, hostile = _folder_with_bombs(tmp_path / "data")
    report = tmp_path / "report.json"
    code = main(["data=folder", f"data.root={root}", "data.classes=[normal,covid19]", f"report={report}"])
    assert code == 1
    listed = {problem["path"]: problem["detail"] for problem in json.loads(report.read_text())["problems"]}
    assert set(listed) == {str(p) for p in hostile}
    assert "above the limit" in listed[str(hostile[0])] and "strip" in listed[str(hostile[3])]


def test_training_data_skips_hostile_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrnet.datamodule import CXRDataModule

    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(SMALL_LIMIT))
    root, hostile = _folder_with_bombs(tmp_path / "data")
    datamodule = CXRDataModule(
        name="folder", root=str(root), classes=["normal", "covid19"], image_size=64, on_error="skip"
    )
    datamodule.setup("fit")
    used = {item.path for dataset in datamodule.datasets.values() for item in dataset.items}
    assert len(used) == 16 and not used & {str(p) for p in hostile}
    assert {str(p) for p in hostile} <= {issue.path for issue in datamodule.report.issues}


# ------------------------------------------------------------------------------ full-size bombs


@pytest.fixture(scope="module")
def full_size_bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files of issue 10: 14000 x 14000 bombs (1.1 MB 16-bit RGB PNG, 380 kB deflated DICOM), a liar."""
    root = tmp_path_factory.mktemp("bombs")
    return {
        "bomb png": bomb_png(root / "bomb.png"),
        "16-bit rgb bomb": bomb_png(root / "bomb16rgb.png", bit_depth=16, colour_type=2),
        "deflated dicom bomb": deflated_dicom_bomb(root / "bomb.dcm"),
        "lying dicom": lying_dicom(root / "liar.dcm"),
    }


_MEASURE = """
import json, sys
from cxrnet.data.images import ImageReadError, read_image

def peak_mb():
    # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, inherited at fork).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

before = peak_mb()
try:
    read_image(sys.argv[1])
    outcome = {"error": None}
except ImageReadError as exc:
    outcome = {"error": str(exc), "path": exc.path}
outcome["peak_mb"], outcome["peak_after_import_mb"] = peak_mb(), before
print(json.dumps(outcome))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
@pytest.mark.parametrize("kind", ["bomb png", "16-bit rgb bomb", "deflated dicom bomb", "lying dicom"])
def test_full_size_hostile_files_are_refused_in_bounded_memory(
    full_size_bombs: dict[str, Path], kind: str
) -> None:
    path = full_size_bombs[kind]
    env = {key: value for key, value in os.environ.items() if key != MAX_IMAGE_PIXELS_ENV}
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] is not None and outcome["path"] == str(path)
    if kind != "lying dicom":
        assert (
            f"{BOMB_SIDE}x{BOMB_SIDE}" in outcome["error"]
            and str(limits.MAX_IMAGE_PIXELS) in outcome["error"]
        )
    # Decoded, the bombs would need 0.2-1.2 GB (stored pixels) and several GB as float; refused from the
    # header, the reader stays near its import footprint (pydicom's import adds ~20 MB).
    assert outcome["peak_mb"] < 150, outcome


@pytest.mark.slow
def test_training_with_on_error_skip_runs_past_hostile_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrnet.checkpoint import read_checkpoint
    from cxrnet.train import train

    from conftest import TINY_MODEL, compose_train

    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(SMALL_LIMIT))
    root, hostile = _folder_with_bombs(tmp_path / "data")
    overrides = [
        "data=folder",
        f"data.root={root}",
        "data.classes=[normal,covid19]",
        "data.on_error=skip",
        "data.num_workers=0",
        "data.image_size=64",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        *TINY_MODEL,
    ]
    metrics = train(compose_train(overrides, tmp_path / "run"))
    assert metrics["test/cls/n"] > 0
    trained_on = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["cxrnet"]["training_data"]
    assert not {p.stem for p in hostile} & set(trained_on["patient_ids"])  # a folder's patient id: the stem
