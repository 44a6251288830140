"""The one-time cache: no decoding after the first pass, identical tensors, invalidation, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrnet.data import images
from cxrnet.data.cache import DataCache
from cxrnet.data.dataset import CXRDataset
from cxrnet.data.items import load_record
from cxrnet.data.records import Record
from cxrnet.data.sources import read_source
from cxrnet.data.splits import image_hash
from cxrnet.data.transforms import Preprocessing, letterbox

from fixtures import QATA_COVID_BOX, SHAPE, box_mask, gray, make_covid_qu_ex, make_qata, save

CLASSES = ["normal", "non_covid", "covid19"]


@pytest.fixture
def records(tmp_path: Path) -> list[Record]:
    return read_source("covid_qu_ex", make_covid_qu_ex(tmp_path / "quex")).records


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = images.decode_image  # what read_image, load_record and the item reader decode through

    def counting(path: str | os.PathLike[str], **kwargs: object) -> images.DecodedImage:
        calls.append(str(path))
        return original(path, **kwargs)

    monkeypatch.setattr(images, "decode_image", counting)
    return calls


def test_second_pass_decodes_no_source_file(
    records: list[Record], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_reads(monkeypatch)
    cache = DataCache(tmp_path / "cache", 32)
    dataset = CXRDataset(records, CLASSES, Preprocessing(32), loader=cache.load_item)
    first = [dataset[i] for i in range(len(dataset))]
    assert len(calls) == len(records)
    calls.clear()
    again = CXRDataset(
        records, CLASSES, Preprocessing(32), loader=DataCache(tmp_path / "cache", 32).load_item
    )
    second = [again[i] for i in range(len(again))]
    infos = [cache.info(r) for r in records]
    assert calls == []
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, second))
    assert [i.hash for i in infos] == [image_hash(images.read_image(r.path)) for r in records]


def test_cached_and_uncached_samples_are_identical(records: list[Record], tmp_path: Path) -> None:
    cache = DataCache(tmp_path / "cache", 32)
    plain = CXRDataset(records, CLASSES, Preprocessing(32))
    cached = CXRDataset(records, CLASSES, Preprocessing(32), loader=cache.load_item)
    for i in range(len(records)):
        for sample in (cached[i], cached[i]):  # filled, then read back
            expected = plain[i]
            for key in ("image", "lung_mask", "infection_mask", "label", "has_infection_mask"):
                assert torch.equal(sample[key], expected[key]), key
            assert sample["meta"] == expected["meta"]


def test_letterbox_of_a_training_size_square_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((64, 64), dtype=np.float32)
    mask = rng.random((64, 64)) > 0.5
    assert np.array_equal(letterbox(image, 64), image)
    assert np.array_equal(letterbox(mask, 64, is_mask=True), mask)


def test_qata_control_gets_an_empty_infection_mask_from_the_cache(tmp_path: Path) -> None:
    records = read_source("qata", make_qata(tmp_path / "qata")).records
    cache = DataCache(tmp_path / "cache", 32)
    for record in records:
        expected = load_record(record)
        for _ in range(2):
            item = cache.load_item(record)
            assert (item.infection_mask is None) == (expected.infection_mask is None)
            assert item.meta == expected.meta and item.label == expected.label
    covid = next(r for r in records if Path(r.path).name == "covid_1.png")
    mask = cache.load_item(covid).infection_mask
    assert np.array_equal(mask, letterbox(box_mask(*QATA_COVID_BOX) > 0, 32, is_mask=True))


def test_changed_file_and_other_size_are_misses(
    records: list[Record], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DataCache(tmp_path / "cache", 32)
    record = records[0]
    cache.load_item(record)
    calls = count_reads(monkeypatch)
    cache.load_item(record)
    assert calls == []
    stat = os.stat(record.path)
    os.utime(record.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    cache.load_item(record)
    assert calls == [record.path]
    save(Path(record.path), 255 - gray(0))  # rewritten with other content
    item = cache.load_item(record)
    assert len(calls) == 2
    assert np.array_equal(item.image, letterbox(images.read_image(record.path), 32))
    calls.clear()
    DataCache(tmp_path / "cache", 64).load_item(record)
    assert calls == [record.path]
    mask = Path(record.lung_mask[0])
    stat = os.stat(mask)
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.load_item(record)
    assert len(calls) == 2


def test_a_broken_entry_is_rebuilt(records: list[Record], tmp_path: Path) -> None:
    cache = DataCache(tmp_path / "cache", 32)
    expected = cache.load_item(records[0]).image
    entry = cache.path(records[0])
    entry.write_bytes(entry.read_bytes()[:100])
    assert np.array_equal(cache.load_item(records[0]).image, expected)
    entry.write_bytes(b"")
    assert cache.info(records[0]).shape == SHAPE
    assert np.array_equal(np.load(entry)["image"], expected)


def _fill(root: str, records: list[Record]) -> list[int]:
    cache = DataCache(root, 32)
    return [int(cache.load_item(r).image.sum() * 1000) for r in records for _ in range(3)]


def test_concurrent_writers_do_not_corrupt_the_cache(records: list[Record], tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    with ThreadPoolExecutor(6) as pool:
        threads = list(pool.map(lambda _: _fill(root, records), range(6)))
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        processes = pool.starmap(_fill, [(str(tmp_path / "cache2"), records)] * 2)
    assert all(result == threads[0] for result in threads + processes)
    for folder in (tmp_path / "cache", tmp_path / "cache2"):
        entries = list(folder.rglob("*"))
        assert not [p for p in entries if p.name.endswith(".tmp")]
        assert len([p for p in entries if p.suffix == ".npz"]) == len(records)
