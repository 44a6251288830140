"""Reading a record into pixels: masks united and checked, meta filled, issues listed, one reader for all."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrnet.data.images import ImageReadError, read_image
from cxrnet.data.items import ItemReadError, load_record, read_item
from cxrnet.data.masks import mask_problems
from cxrnet.data.records import Record

from fixtures import SHAPE, box_mask, gray, save


def test_load_record_unions_lung_masks_and_fills_meta(tmp_path: Path) -> None:
    image = save(tmp_path / "x.png", gray(0))
    left = save(tmp_path / "l.png", box_mask(slice(0, 5), slice(0, 5)))
    right = save(tmp_path / "r.png", box_mask(slice(10, 15), slice(10, 15)))
    infection = save(tmp_path / "i.png", box_mask(slice(1, 3), slice(1, 3)))
    record = Record(
        path=str(image),
        patient_id="P7",
        source="demo",
        label="covid19",
        lung_mask=(str(left), str(right)),
        infection_mask=str(infection),
        severity={"brixia": 4.0},
        meta={"view": "PA"},
    )
    item = load_record(record)
    assert item.image.shape == SHAPE and item.lung_mask.sum() == 50 and item.infection_mask.sum() == 4
    assert item.label == "covid19" and item.severity == {"brixia": 4.0}
    assert item.meta["path"] == str(image) and item.meta["patient_id"] == "P7"
    assert item.meta["source"] == "demo" and item.meta["view"] == "PA"


def test_load_record_absent_masks_and_known_empty_infection(tmp_path: Path) -> None:
    image = str(save(tmp_path / "x.png", gray(0)))
    item = load_record(Record(path=image, patient_id="p", source="s"))
    assert item.lung_mask is None and item.infection_mask is None
    item = load_record(Record(path=image, patient_id="p", source="s", meta={"infection_mask_empty": True}))
    assert (
        item.infection_mask is not None
        and item.infection_mask.shape == SHAPE
        and not item.infection_mask.any()
    )


def test_load_record_refuses_a_mask_of_another_size(tmp_path: Path) -> None:
    image = str(save(tmp_path / "x.png", gray(0)))
    mask = str(save(tmp_path / "m.png", np.zeros((8, 8), np.uint8)))
    with pytest.raises(ImageReadError, match="differs from image"):
        load_record(Record(path=image, patient_id="p", source="s", lung_mask=(mask,)))
    problems = mask_problems(mask, read_image(image).shape)  # what cxrnet.data.check lists for it
    assert len(problems) == 1 and "differs from image" in problems[0]


def test_read_item_lists_non_binary_masks_and_names_bad_files(tmp_path: Path) -> None:
    image = save(tmp_path / "a.png", gray(1))
    soft = box_mask(slice(2, 9), slice(3, 10))
    soft[2, 3] = 100
    save(tmp_path / "soft.png", soft)
    save(tmp_path / "small.png", np.zeros((10, 10), np.uint8))
    item = read_item(Record(str(image), "p", "test", lung_mask=(str(tmp_path / "soft.png"),)))
    assert [(i.kind, Path(i.path).name) for i in item.info.issues] == [("non-binary mask", "soft.png")]
    assert item.lung_mask.sum() == 7 * 7 - 1  # thresholded at half range, like load_record
    with pytest.raises(ItemReadError, match=r"small\.png: mask 10x10 differs from image 20x24") as err:
        read_item(Record(str(image), "p", "test", infection_mask=str(tmp_path / "small.png")))
    assert err.value.kind == "mask size mismatch"
    with pytest.raises(ItemReadError, match=r"gone\.png: file does not exist") as err:
        read_item(Record(str(tmp_path / "gone.png"), "p", "test"))
    assert err.value.kind == "unreadable file"


def test_load_record_reads_the_pixels_read_item_reads(tmp_path: Path) -> None:
    image = save(tmp_path / "x.png", np.arange(40 * 48, dtype=np.uint16).reshape(40, 48))
    lung = save(tmp_path / "l.png", np.pad(box_mask(slice(4, 30), slice(6, 40)), ((0, 20), (0, 24))))
    soft = np.pad(box_mask(slice(2, 20), slice(2, 20)), ((0, 20), (0, 24)))
    soft[3, 3] = 100  # non-binary: thresholded by both, listed only by read_item
    infection = save(tmp_path / "i.png", soft)
    record = Record(str(image), "p", "s", lung_mask=(str(lung),), infection_mask=str(infection))
    for target_size in (None, 8):
        item = read_item(record, target_size=target_size, with_hash=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no issue of this item is a warning of load_record
            raw = load_record(record, target_size=target_size)
        assert item.info.hash is None and [i.kind for i in item.info.issues] == ["non-binary mask"]
        for name in ("image", "lung_mask", "infection_mask"):
            np.testing.assert_array_equal(getattr(raw, name), getattr(item, name))
    assert raw.image.shape == (20, 24)  # read at half scale for 8 px
