"""The leakage guard: fingerprints of training data, and overlap of an evaluation split with them."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from cxrnet.data.dataset import CXRDataset
from cxrnet.data.phantoms import CLASSES
from cxrnet.data.records import RawItem
from cxrnet.data.splits import DUPLICATE_MAX_DISTANCE, image_hash
from cxrnet.data.synthetic import synthetic_splits
from cxrnet.data.transforms import Preprocessing
from cxrnet.leakage import (
    LeakageError,
    check_leakage,
    fingerprint,
    guard_split,
    hash_to_hex,
    training_fingerprint,
)


@pytest.fixture(scope="module")
def phantom_splits() -> dict[str, list[RawItem]]:
    return synthetic_splits(n_train=24, n_val=0, n_test=12, size=64, seed=0)


def _ids(items: list[RawItem]) -> list[str]:
    return [str(item.meta["patient_id"]) for item in items]


def _hashes(items: list[RawItem]) -> list[int]:
    return [image_hash(item.image) for item in items]


def test_fingerprint_is_json_ready_and_complete(phantom_splits: dict[str, list[RawItem]]) -> None:
    train = phantom_splits["train"]
    fp = training_fingerprint(train)
    assert json.loads(json.dumps(fp)) == fp
    assert fp["n_items"] == len(train) == len(fp["image_hashes"])
    assert fp["patient_ids"] == sorted(set(_ids(train)))
    assert fp["source"] == ["synthetic"]
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in fp["image_hashes"])
    assert fp["image_hashes"][0] == hash_to_hex(image_hash(train[0].image))


def test_real_phantom_train_and_test_splits_pass(phantom_splits: dict[str, list[RawItem]]) -> None:
    test = phantom_splits["test"]
    report = check_leakage(training_fingerprint(phantom_splits["train"]), _ids(test), _hashes(test))
    assert not report.leaked
    assert report.images_checked and report.n_eval == len(test)
    assert "no overlap" in report.describe()


def test_shared_patient_is_found(phantom_splits: dict[str, list[RawItem]]) -> None:
    train, test = phantom_splits["train"], phantom_splits["test"]
    fp = fingerprint([*_ids(train), _ids(test)[3]], [item.image for item in [*train, train[0]]])
    report = check_leakage(fp, _ids(test), _hashes(test))
    assert report.leaked
    assert report.shared_patients == [_ids(test)[3]]
    assert _ids(test)[3] in report.describe()


def test_near_duplicate_under_another_patient_id_is_found(phantom_splits: dict[str, list[RawItem]]) -> None:
    train, test = phantom_splits["train"], phantom_splits["test"]
    # The same radiograph re-published: contrast changed, stored at another size, another patient id.
    altered = np.kron(test[5].image ** 0.8, np.ones((2, 2), dtype=np.float32))
    fp = fingerprint([*_ids(train), "someone-else"], [item.image for item in train] + [altered])
    report = check_leakage(fp, _ids(test), _hashes(test))
    assert report.leaked and not report.shared_patients
    assert report.eval_items_with_duplicates == [5]
    eval_index, train_index, distance = report.near_duplicates[0]
    assert (eval_index, train_index) == (5, len(train)) and distance <= DUPLICATE_MAX_DISTANCE
    paths = [str(item.meta["path"]) for item in test]
    assert paths[5] in report.describe(paths)
    assert report.as_dict()["near_duplicate_images"] == 1


def test_hex_and_int_hashes_compare_alike(phantom_splits: dict[str, list[RawItem]]) -> None:
    test = phantom_splits["test"]
    fp = fingerprint(["x"], [test[0].image])
    as_int = check_leakage(fp, _ids(test), _hashes(test))
    as_hex = check_leakage(fp, _ids(test), [hash_to_hex(h) for h in _hashes(test)])
    assert as_int.near_duplicates == as_hex.near_duplicates == [(0, 0, 0)]


def test_patients_only_when_no_hashes_are_given(phantom_splits: dict[str, list[RawItem]]) -> None:
    test = phantom_splits["test"]
    fp = fingerprint(_ids(test)[:1], [test[0].image])
    report = check_leakage(fp, _ids(test), None)
    assert report.shared_patients == _ids(test)[:1] and not report.near_duplicates
    assert not report.images_checked


def test_mismatched_inputs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="one id per image"):
        fingerprint(["a", "b"], [np.zeros((8, 8))])
    with pytest.raises(ValueError, match="hash"):
        check_leakage({"hash": "md5", "patient_ids": [], "image_hashes": []}, ["a"], None)
    with pytest.raises(ValueError, match="1 evaluation patient ids but 2 hashes"):
        check_leakage(fingerprint([], []), ["a"], [0, 1])


def _dataset(items: list[RawItem]) -> CXRDataset:
    return CXRDataset(items, list(CLASSES), Preprocessing(image_size=64))


def test_guard_refuses_overlap_names_the_override_and_allows_it_on_request(
    phantom_splits: dict[str, list[RawItem]], caplog: pytest.LogCaptureFixture
) -> None:
    train, test = phantom_splits["train"], phantom_splits["test"]
    dataset = _dataset(test)
    assert not guard_split(training_fingerprint(train), dataset).leaked
    leaky = training_fingerprint([*train, test[4]])
    with pytest.raises(LeakageError, match=r"phantom-\d+.*allow_leakage=true"):
        guard_split(leaky, dataset, name="the test split")
    report = guard_split(leaky, dataset, allow=True)
    assert report is not None and report.shared_patients == [_ids(test)[4]]
    assert report.eval_items_with_duplicates == [4]  # images are still compared when overlap is allowed
    with caplog.at_level(logging.WARNING, logger="cxrnet.leakage"):
        assert guard_split(None, dataset) is None
    assert "could not be checked" in caplog.text
