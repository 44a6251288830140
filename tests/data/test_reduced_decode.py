"""Reduced reads for a training size: JPEG DCT scaling, early area reduction, aligned masks, parallel fill.

Tolerances, for 1/f-noise images (more fine detail than a radiograph): a JPEG decoded at 1/2, 1/4 or 1/8 scale
is within 0.012 (3 grey levels of 255) of the full decode area-averaged by the same factor, 0.003 on average;
once letterboxed to the training size, within 0.03 of the full-size read's letterbox, 0.006 on average.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxrnet.data import raster, reduction
from cxrnet.data.build import SourceSpec, build_splits
from cxrnet.data.cache import DataCache
from cxrnet.data.dataset import CXRDataset
from cxrnet.data.images import (
    ImageReadError,
    TruncatedImageWarning,
    decode_image,
    read_image,
    read_image_noting,
    reduction_factor,
)
from cxrnet.data.items import ItemInfo, ItemReadError, load_record
from cxrnet.data.masks import read_mask
from cxrnet.data.records import Record
from cxrnet.data.reduction import REDUCED_READ_MARGIN
from cxrnet.data.splits import hamming, image_hash
from cxrnet.data.transforms import Preprocessing, letterbox

from fixtures import natural, save

CLASSES = ["normal", "covid19"]


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """The reference reduction: the mean of each factor x factor block, in float64."""
    h, w = image.shape
    return image.reshape(h // factor, factor, w // factor, factor).astype(np.float64).mean(axis=(1, 3))


@pytest.mark.parametrize(
    ("height", "width", "size", "factor"),
    [
        (2000, 2000, 128, 4),  # 1/8 would leave 250 < 2 x 128
        (2000, 2000, 256, 2),
        (2048, 2048, 128, 8),  # 256 = 2 x 128 exactly
        (2500, 2048, 256, 4),  # 8 does not divide 2500
        (1000, 3000, 128, 2),  # the shorter side decides
        (2001, 2000, 64, 1),  # an odd side: never reduced (the aspect ratio would change)
        (300, 300, 128, 1),
    ],
)
def test_the_reduction_rule(height: int, width: int, size: int, factor: int) -> None:
    assert reduction_factor(height, width, size) == factor


def test_the_reduction_never_goes_below_twice_the_target_size() -> None:
    for height in range(64, 1100, 8):
        for width in (height, height + 8, 2 * height):
            for size in (32, 64, 128):
                factor = reduction_factor(height, width, size)
                assert height % factor == 0 and width % factor == 0
                assert factor == 1 or min(height, width) // factor >= REDUCED_READ_MARGIN * size
                larger = 2 * factor
                if factor < 8 and height % larger == 0 and width % larger == 0:
                    assert min(height, width) // larger < REDUCED_READ_MARGIN * size  # the largest that fits


@pytest.mark.parametrize("shape", [(520, 600), (704, 520), (256, 256)])
def test_a_jpeg_is_decoded_reduced_and_close_to_the_full_decode(
    tmp_path: Path, shape: tuple[int, int]
) -> None:
    path = save(tmp_path / "x.jpg", natural(1, shape), quality=90)
    size = min(shape) // 8  # every shape allows 1/4 (or 1/8) here
    decoded = decode_image(path, target_size=size)
    full = read_image(path)
    assert decoded.shape == shape and decoded.factor == reduction_factor(*shape, size) > 1
    assert decoded.image.shape == (shape[0] // decoded.factor, shape[1] // decoded.factor)
    assert decoded.image.dtype == np.float32
    difference = np.abs(decoded.image - block_mean(full, decoded.factor))
    assert difference.mean() < 0.003 and difference.max() < 0.012
    at_input = np.abs(letterbox(decoded.image, size) - letterbox(full, size))
    assert at_input.mean() < 0.006 and at_input.max() < 0.03
    assert hamming(image_hash(decoded.image), image_hash(full)) <= 8


def test_a_jpeg_really_uses_libjpeg_scaling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "x.jpg", natural(2, (512, 512)))
    decoded_at = []
    original = raster._pil_to_raster

    def spy(im):  # the size Pillow decoded at
        decoded_at.append(im.size)
        return original(im)

    monkeypatch.setattr(raster, "_pil_to_raster", spy)
    decode_image(path, target_size=32)
    assert decoded_at == [(64, 64)]


@pytest.mark.parametrize(
    ("suffix", "pixels"),
    [
        (".png", (natural(3, (480, 640)).astype(np.uint16) * 257)),  # 16-bit gray
        (".png", natural(4, (480, 640))),  # 8-bit gray
        (".png", np.stack([natural(5, (480, 640)), natural(6, (480, 640)), natural(7, (480, 640))], -1)),
        (".tif", natural(8, (480, 640))),
    ],
)
def test_other_formats_are_area_reduced_right_after_decoding(
    tmp_path: Path, suffix: str, pixels: np.ndarray
) -> None:
    path = save(tmp_path / f"x{suffix}", pixels)
    decoded = decode_image(path, target_size=60)
    assert decoded.factor == 4 and decoded.shape == (480, 640)
    np.testing.assert_allclose(decoded.image, block_mean(read_image(path), 4), atol=1e-6)


def test_an_rgba_png_is_composited_before_it_is_reduced(tmp_path: Path) -> None:
    rgba = np.stack([natural(9, (128, 128))] * 3 + [natural(10, (128, 128))], -1)
    path = save(tmp_path / "x.png", rgba)
    decoded = decode_image(path, target_size=16)
    np.testing.assert_allclose(decoded.image, block_mean(read_image(path), 4), atol=1e-6)


def test_a_dicom_is_reduced_after_windowing(tmp_path: Path) -> None:
    from fixtures import write_dicom

    pixels = (natural(11, (256, 256)).astype(np.uint16) * 16) + 100
    path = write_dicom(tmp_path / "x.dcm", pixels, center=2000.0, width=3000.0)
    decoded = decode_image(path, target_size=32)
    assert decoded.factor == 4
    np.testing.assert_allclose(decoded.image, block_mean(read_image(path), 4), atol=1e-6)


def test_without_a_target_size_or_room_to_reduce_the_read_is_the_full_size_one(tmp_path: Path) -> None:
    path = save(tmp_path / "x.jpg", natural(12, (200, 240)))
    full, notes = read_image_noting(path)
    for target in (None, 64, 1000):  # 64: 200 / 2 < 2 x 64
        decoded = decode_image(path, target_size=target)
        assert decoded.factor == 1 and decoded.shape == (200, 240) and notes == list(decoded.notes)
        assert np.array_equal(decoded.image, full)


def differ_only_along_edges(mask: np.ndarray, expected: np.ndarray) -> bool:
    """Whether ``mask`` is ``expected`` with its edges moved by at most one pixel."""
    kernel = np.ones((3, 3), np.uint8)
    as_bytes = expected.astype(np.uint8)
    band = cv2.dilate(as_bytes, kernel).astype(bool) & ~cv2.erode(as_bytes, kernel).astype(bool)
    return bool(np.all(band[mask != expected])) and mask.sum() > 0.8 * expected.sum()


def bright_square_item(root: Path, suffix: str, shape: tuple[int, int] = (480, 640)) -> Record:
    """An image that is 1 inside a square and 0 outside, the same square as a lung and an infection mask."""
    rows, cols = slice(101, 263), slice(205, 390)  # not on block boundaries
    image = np.zeros(shape, np.uint8)
    image[rows, cols] = 255
    path = save(root / f"square{suffix}", image, **({"quality": 95} if suffix == ".jpg" else {}))
    lung = save(root / "lung.png", image)
    infection = save(root / "infection.png", image // 255)  # a 0/1 mask
    return Record(
        str(path), "p", "test", label="normal", lung_mask=(str(lung),), infection_mask=str(infection)
    )


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_masks_are_reduced_with_their_image_and_stay_aligned(tmp_path: Path, suffix: str) -> None:
    record = bright_square_item(tmp_path, suffix)
    item = load_record(record, target_size=60)
    assert item.image.shape == item.lung_mask.shape == item.infection_mask.shape == (120, 160)
    assert item.lung_mask.dtype == bool and np.array_equal(item.lung_mask, item.infection_mask)
    bright = item.image > 0.5
    if suffix == ".png":  # a block mean of 0/1 is the block's fraction: the mask rule exactly
        assert np.array_equal(bright, item.lung_mask)
    else:  # libjpeg's ringing may flip a few edge pixels, never move the square
        assert (bright != item.lung_mask).sum() <= 0.02 * item.lung_mask.sum()
    # Thresholded once more than a full-size read, an edge may move by one pixel at the training size
    expected = letterbox(load_record(record).lung_mask, 64, is_mask=True)
    assert differ_only_along_edges(letterbox(item.lung_mask, 64, is_mask=True), expected)


def test_the_uncached_dataset_reads_reduced_and_keeps_image_and_masks_aligned(tmp_path: Path) -> None:
    record = bright_square_item(tmp_path, ".png")
    sample = CXRDataset([record], CLASSES, Preprocessing(64, mean=0.0, std=1.0))[0]
    image, mask = sample["image"][0].numpy(), sample["lung_mask"][0].numpy()
    assert differ_only_along_edges(mask > 0.5, image > 0.5)


def test_mask_checks_apply_to_the_full_size_mask(tmp_path: Path) -> None:
    image = save(tmp_path / "x.png", natural(13, (480, 640)))
    smaller = save(tmp_path / "m.png", np.zeros((476, 640), np.uint8))  # the same size once divided by 4
    with pytest.raises(ImageReadError, match=r"m\.png: mask 476x640 differs from image 480x640"):
        load_record(Record(str(image), "p", "s", lung_mask=(str(smaller),)), target_size=60)
    with pytest.raises(ValueError, match="does not divide"):
        read_mask(smaller, factor=8)


def test_the_pixel_limit_applies_to_the_full_size_file(tmp_path: Path) -> None:
    path = save(tmp_path / "x.jpg", natural(14, (512, 512)))
    with pytest.raises(ImageReadError, match=r"x\.jpg: image is 512x512 .* above the limit"):
        decode_image(path, target_size=8, max_pixels=100 * 100)


def truncated_jpeg(path: Path, cut: int | float) -> Path:
    """A 512x512 JPEG missing its last ``cut`` bytes (or that share of the file)."""
    data = (save(path, natural(15, (512, 512)), quality=90)).read_bytes()
    path.write_bytes(data[: -cut if isinstance(cut, int) else int(len(data) * cut)])
    return path


def test_a_truncated_jpeg_reads_reduced_with_the_same_warning(tmp_path: Path) -> None:
    path = truncated_jpeg(tmp_path / "short.jpg", 26)
    full, notes = read_image_noting(path)
    decoded = decode_image(path, target_size=32)
    assert notes and list(decoded.notes) == notes
    assert decoded.factor == 8
    np.testing.assert_allclose(decoded.image, block_mean(full, 8), atol=1e-6)
    with pytest.warns(TruncatedImageWarning, match=r"short\.jpg: file ends early"):
        load_record(Record(str(path), "p", "s"), target_size=32)
    half = truncated_jpeg(tmp_path / "half.jpg", 0.5)
    with warnings.catch_warnings(), pytest.raises(ImageReadError, match=r"half\.jpg: truncated image"):
        warnings.simplefilter("error")
        decode_image(half, target_size=32)


def items_on_disk(root: Path, n: int = 5) -> list[Record]:
    """``n`` 256x320 items (PNG and JPEG images, PNG masks), then one whose mask file is not an image.

    A ``manifest.csv`` lists them for the ``folder`` reader.
    """
    records, rows = [], ["path,label,patient_id,lung_mask"]
    for i in range(n):
        pixels = natural(20 + i, (256, 320))
        suffix = ".jpg" if i % 2 else ".png"
        image = save(root / f"x{i}{suffix}", pixels)
        mask = save(root / f"m{i}.png", (pixels > 128).astype(np.uint8) * 255)
        records.append(Record(str(image), f"p{i}", "s", label="normal", lung_mask=(str(mask),)))
        rows.append(f"{image.name},normal,p{i},{mask.name}")
    image = save(root / "broken.png", natural(30, (256, 320)))
    (root / "broken_mask.png").write_bytes(b"not a png")
    records.append(Record(str(image), "q", "s", lung_mask=(str(root / "broken_mask.png"),)))
    rows.append("broken.png,normal,q,broken_mask.png")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return records


def entry_arrays(cache: DataCache, record: Record) -> dict[str, np.ndarray]:
    with np.load(cache.path(record), allow_pickle=False) as entry:
        return {name: entry[name] for name in entry.files}


def test_a_parallel_cache_fill_stores_the_same_entries_as_a_serial_one(tmp_path: Path) -> None:
    records = items_on_disk(tmp_path / "data")
    serial, parallel = DataCache(tmp_path / "serial", 32), DataCache(tmp_path / "parallel", 32)
    first = list(serial.fill(records, workers=0))
    second = list(parallel.fill(records, workers=2))
    assert all(isinstance(info, ItemInfo) for info in first[:-1]) and first[:-1] == second[:-1]
    for result in (first[-1], second[-1]):  # an unreadable item comes back from a process whole
        assert isinstance(result, ItemReadError) and result.kind == "unreadable file"
        assert "broken_mask.png: unsupported or unrecognised image format" in str(result)
    for record in records[:-1]:
        a, b = entry_arrays(serial, record), entry_arrays(parallel, record)
        assert a.keys() == b.keys() and {"image", "lung_mask", "hash", "shape"} <= a.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    assert entry_arrays(serial, records[0])["shape"].tolist() == [256, 320]  # the full size, as before


def test_the_scan_fills_the_cache_in_worker_processes(tmp_path: Path) -> None:
    items_on_disk(tmp_path / "data")
    sources = [SourceSpec("folder", str(tmp_path / "data"))]
    options = {"fractions": {"train": 1.0}, "duplicate_max_distance": None}
    builds = [
        build_splits(
            sources,
            CLASSES,
            cache=DataCache(tmp_path / f"cache{w}", 32),
            workers=w,
            on_error="skip",
            **options,
        )
        for w in (0, 2)
    ]
    assert len(builds[0].hashes) == 5 and builds[0].hashes == builds[1].hashes
    assert [i.path for i in builds[0].report.issues] == [i.path for i in builds[1].report.issues]
    with pytest.raises(ImageReadError, match=r"broken_mask\.png: .*data\.on_error=skip"):
        build_splits(sources, CLASSES, cache=DataCache(tmp_path / "cache", 32), workers=2, **options)


def test_cached_and_uncached_reduced_reads_give_identical_samples(tmp_path: Path) -> None:
    records = items_on_disk(tmp_path / "data")[:-1]
    cache = DataCache(tmp_path / "cache", 32)
    plain = CXRDataset(records, CLASSES, Preprocessing(32))
    cached = CXRDataset(records, CLASSES, Preprocessing(32), loader=cache.load_item)
    for i in range(len(records)):
        for sample in (cached[i], cached[i]):  # filled, then read back
            for key in ("image", "lung_mask", "infection_mask"):
                assert torch.equal(sample[key], plain[i][key]), key


def test_the_reading_rule_is_part_of_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = items_on_disk(tmp_path / "data", n=1)[0]
    cache = DataCache(tmp_path / "cache", 32)
    key = cache.key(record)
    monkeypatch.setattr(reduction, "REDUCED_READ_MARGIN", 3)
    assert cache.key(record) != key


def test_block_mean_reference_matches_opencv_area() -> None:
    image = np.random.default_rng(0).random((64, 96), dtype=np.float32)
    reduced = cv2.resize(image, (24, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(reduced, block_mean(image, 4), atol=1e-6)
