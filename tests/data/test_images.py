"""Image reading: every layout round-trips its values, every broken file names itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrnet.data.images import IMAGE_SUFFIXES, ImageReadError, find_images, read_image

from fixtures import SHAPE, gray, save, write_dicom

LUMA = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------------------- rasters


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_8bit_gray_is_divided_by_255(tmp_path: Path, suffix: str) -> None:
    pixels = gray(0)
    image = read_image(save(tmp_path / f"a{suffix}", pixels))
    assert image.dtype == np.float32 and image.shape == SHAPE
    np.testing.assert_allclose(image, pixels / 255, atol=1e-6)


def test_jpeg_is_close_to_its_source(tmp_path: Path) -> None:
    pixels = np.full(SHAPE, 128, np.uint8)
    image = read_image(save(tmp_path / "a.JPG", pixels, quality=95))
    np.testing.assert_allclose(image, 128 / 255, atol=2 / 255)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_keeps_precision(tmp_path: Path, suffix: str) -> None:
    pixels = np.zeros(SHAPE, np.uint16)
    pixels[0, :4] = [0, 1, 32768, 65535]
    image = read_image(save(tmp_path / f"a{suffix}", pixels))
    assert image[0, 3] == 1.0 and image[0, 0] == 0.0
    np.testing.assert_allclose(image[0, 1:3], [1 / 65535, 32768 / 65535], rtol=1e-6)


def test_rgb_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.stack([gray(0), gray(1), gray(2)], axis=-1)
    image = read_image(save(tmp_path / "a.png", rgb))
    np.testing.assert_allclose(image, rgb @ LUMA / 255, atol=1e-5)


def test_rgba_alpha_is_composited_over_black(tmp_path: Path) -> None:
    rgba = np.zeros((*SHAPE, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # transparent
    rgba[0, 1, 3] = 51  # 20 % opaque
    image = read_image(save(tmp_path / "a.png", rgba))
    assert image[5, 5] == pytest.approx(200 / 255, abs=1e-5)
    assert image[0, 0] == 0.0
    assert image[0, 1] == pytest.approx(200 / 255 * 0.2, abs=1e-5)


def test_gray_alpha_and_palette_images(tmp_path: Path) -> None:
    pixels = gray(3)
    la = Image.fromarray(pixels).convert("LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), pixels / 255, atol=1e-6)
    palette = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png")
    expected = np.asarray(palette.convert("RGB"), np.float64) @ LUMA / 255
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), expected, atol=1e-5)


def test_16bit_rgb_png_keeps_precision(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    rgb = np.zeros((*SHAPE, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 1000, 3  # R, G, B
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])  # OpenCV writes BGR
    expected = (0.299 * 65535 + 0.587 * 1000 + 0.114 * 3) / 65535
    assert read_image(tmp_path / "a.png")[0, 0] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome1_with_rescale_and_window(tmp_path: Path) -> None:
    stored = np.zeros(SHAPE, np.uint16)
    stored[0, :5] = [0, 500, 525, 550, 2000]  # after rescale 2x - 1000: -1000, 0, 50, 100, 3000
    path = write_dicom(
        tmp_path / "mono1.dcm",
        stored,
        photometric="MONOCHROME1",
        slope=2.0,
        intercept=-1000.0,
        center=50.5,
        width=101.0,
    )
    image = read_image(path)
    # the window maps rescaled 0 → 0, 50 → 0.5, 100 → 1 and clips outside; MONOCHROME1 then inverts
    np.testing.assert_allclose(image[0, :5], [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    assert image[1, 1] == 1.0  # stored 0 → -1000, below the window, inverted


def test_dicom_without_window_is_min_max_scaled(tmp_path: Path) -> None:
    stored = np.full(SHAPE, 100, np.uint16)
    stored[0, 0], stored[0, 1] = 300, 200
    image = read_image(write_dicom(tmp_path / "plain.dcm", stored, slope=1.0, intercept=-24.0))
    assert image[0, 0] == 1.0 and image[5, 5] == 0.0 and image[0, 1] == pytest.approx(0.5)


def test_dicom_voi_lut_is_applied(tmp_path: Path) -> None:
    stored = np.zeros(SHAPE, np.uint16)
    stored[0, :4] = [0, 1, 2, 3]
    image = read_image(write_dicom(tmp_path / "lut.dcm", stored, voi_lut=[0, 10, 200, 255]))
    np.testing.assert_allclose(image[0, :4], [0, 10 / 255, 200 / 255, 1.0], atol=1e-6)


def test_dicom_is_detected_without_suffix(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM0001", np.arange(480, dtype=np.uint16).reshape(SHAPE))
    assert read_image(path).max() == 1.0
    assert find_images(tmp_path) == [path]


def test_multiframe_dicom_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cine.dcm", np.zeros(SHAPE, np.uint16), frames=3)
    with pytest.raises(ImageReadError, match="multi-frame") as info:
        read_image(path)
    assert info.value.path == str(path)


# ------------------------------------------------------------------------------------------ errors


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return make


def _truncated_png(folder: Path) -> Path:
    data = save(folder / "ok.png", gray(0)).read_bytes()
    return _write("truncated.png", data[: len(data) // 2])(folder)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda folder: folder / "missing.png", "does not exist"),
        (_write("empty.png", b""), "empty"),
        (_truncated_png, "truncated or corrupt"),
        (_write("text.png", b"not an image"), "unrecognised"),
        (_write("bad.dcm", b"\0" * 200), "DICOM"),
    ],
    ids=["missing", "empty", "truncated", "not-an-image", "corrupt-dicom"],
)
def test_unreadable_files_raise_naming_the_file(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_multipage_tiff_is_refused(tmp_path: Path) -> None:
    pages = [Image.fromarray(gray(i)) for i in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageReadError, match="3 frames"):
        read_image(tmp_path / "stack.tif")


# --------------------------------------------------------------------------------------- discovery


def test_find_images_is_sorted_case_insensitive_and_skips_hidden(tmp_path: Path) -> None:
    wanted = [save(tmp_path / "b.PNG", gray(0)), save(tmp_path / "a.jpeg", gray(1))]
    wanted.append(save(tmp_path / "sub" / "c.TIFF", gray(2)))
    save(tmp_path / "._b.png", gray(3))  # macOS resource fork
    save(tmp_path / ".cache" / "d.png", gray(4))
    (tmp_path / "notes.txt").write_text("x")
    assert find_images(tmp_path) == sorted(wanted)
    assert find_images(tmp_path, recursive=False) == sorted(wanted[:2])
    assert {".png", ".jpg", ".dcm"} <= IMAGE_SUFFIXES
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "nowhere")
