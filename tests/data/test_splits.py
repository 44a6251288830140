"""Patient-level splits: no patient in two splits, labels stratified, official splits kept, duplicates merged."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrnet.data.images import read_image
from cxrnet.data.records import Record
from cxrnet.data.sources import covidx
from cxrnet.data.splits import (
    DUPLICATE_MAX_DISTANCE,
    find_near_duplicates,
    hamming,
    image_hash,
    patient_split,
)

from fixtures import make_covidx, natural, save


def cohort(n_patients: int = 300, seed: int = 0, source: str = "a") -> list[Record]:
    """Patients with 1-4 images each and a 30/60/10 covid/normal/viral mix."""
    rng = random.Random(seed)
    records = []
    for p in range(n_patients):
        label = rng.choice(["covid19"] * 3 + ["normal"] * 6 + ["viral"])
        records += [
            Record(f"/{source}/{p}_{k}.png", f"p{p}", source, label) for k in range(rng.randint(1, 4))
        ]
    return records


def split_of_patients(splits: dict[str, list[Record]]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for name, records in splits.items():
        for r in records:
            found.setdefault((r.source, r.patient_id), set()).add(name)
    return found


def test_no_patient_in_two_splits_and_fractions_followed() -> None:
    records = cohort()
    splits = patient_split(records, seed=0)
    assert all(len(names) == 1 for names in split_of_patients(splits).values())
    assert sorted(r.path for rs in splits.values() for r in rs) == sorted(r.path for r in records)
    for name, share in {"train": 0.7, "val": 0.15, "test": 0.15}.items():
        assert len(splits[name]) / len(records) == pytest.approx(share, abs=0.03)


def test_labels_are_stratified() -> None:
    records = cohort()
    overall = Counter(r.label for r in records)
    splits = patient_split(records, seed=1)
    for members in splits.values():
        counts = Counter(r.label for r in members)
        for label, total in overall.items():
            assert counts[label] / len(members) == pytest.approx(total / len(records), abs=0.02)
    report = splits.report
    assert report.images["test"] == dict(sorted(Counter(r.label for r in splits["test"]).items()))
    assert sum(report.patients.values()) == 300 and report.merged_duplicates == 0


def test_split_is_deterministic_and_independent_of_input_order() -> None:
    records = cohort()

    def paths(splits: dict[str, list[Record]]) -> dict[str, list[str]]:
        return {name: sorted(r.path for r in rs) for name, rs in splits.items()}

    first = paths(patient_split(records, seed=3))
    assert paths(patient_split(list(reversed(records)), seed=3)) == first
    assert paths(patient_split(records, seed=4)) != first
    assert patient_split(records, stratify=False, seed=3).keys() == {"train", "val", "test"}


def test_official_split_is_kept_and_val_carved_from_train(tmp_path: Path) -> None:
    records = list(covidx.read(make_covidx(tmp_path)))
    records += [Record(f"/t/{i}.png", f"tp{i}", "covidx", "normal", split="train") for i in range(40)]
    splits = patient_split(records, seed=0)
    assert {r.path for r in splits["test"]} == {r.path for r in records if r.split == "test"}
    assert {r.split for r in splits["val"]} == {"train"} and len(splits["val"]) > 0
    assert all(len(names) == 1 for names in split_of_patients(splits).values())
    assert splits.report.carved_val == ["covidx"]


def test_official_val_is_kept_and_free_sources_are_split() -> None:
    official = [
        Record(f"/o/{s}{i}.png", f"{s}{i}", "o", "normal", split=s)
        for s in ("train", "val")
        for i in range(5)
    ]
    splits = patient_split(official + cohort(100, source="free"), seed=0)
    assert {r.path for r in splits["val"] if r.source == "o"} == {
        r.path for r in official if r.split == "val"
    }
    assert all(r.source == "free" for r in splits["test"]) and len(splits["test"]) > 0
    assert splits.report.carved_val == []


def test_patient_in_two_official_splits_goes_to_test_and_is_reported() -> None:
    records = [
        Record("/a.png", "p1", "s", "normal", split="train"),
        Record("/b.png", "p1", "s", "normal", split="test"),
        Record("/c.png", "p2", "s", "normal", split="train"),
    ]
    splits = patient_split(records, fractions={"train": 0.8, "test": 0.2})
    assert [r.path for r in splits["test"]] == ["/a.png", "/b.png"]
    assert splits.report.official_conflicts == 1


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        patient_split(cohort(5), fractions={"train": 0.7, "test": 0.2})


# ---------------------------------------------------------------------------------- near-duplicates


def test_image_hash_survives_reencoding_and_separates_different_images() -> None:
    image = natural(0) / 255
    smaller = np.asarray(Image.fromarray(natural(0)).resize((72, 60)), np.float64) / 255
    assert hamming(image_hash(image), image_hash(smaller)) <= DUPLICATE_MAX_DISTANCE // 2
    assert hamming(image_hash(image), image_hash(image**0.8)) <= DUPLICATE_MAX_DISTANCE
    for seed in range(1, 6):
        assert hamming(image_hash(image), image_hash(natural(seed) / 255)) > 2 * DUPLICATE_MAX_DISTANCE
    assert 0 <= image_hash(image) < 2**256 and hamming(5, 6) == 2


def test_duplicate_patients_are_merged_into_one_split(tmp_path: Path) -> None:
    records = cohort(60)
    # patient p0's first image re-published (re-encoded at half size) as patient "dup"
    original = save(tmp_path / "orig.png", natural(7))
    copy = save(tmp_path / "copy.jpg", np.asarray(Image.open(original).resize((72, 60))), quality=85)
    records[0] = Record(str(original), "p0", "a", records[0].label)
    records.append(Record(str(copy), "dup", "b", "covid19"))
    rng = random.Random(0)
    hashes = [rng.getrandbits(256) for _ in records]  # unrelated images are about 128 bits apart
    hashes[0], hashes[-1] = (image_hash(read_image(r.path)) for r in (records[0], records[-1]))
    groups = find_near_duplicates(records, hashes)
    assert groups == [{0, len(records) - 1}]
    for seed in range(5):
        splits = patient_split(records, seed=seed, duplicate_groups=groups)
        home = [name for name, rs in splits.items() for r in rs if r.patient_id in ("p0", "dup")]
        assert len(set(home)) == 1
        assert splits.report.merged_duplicates == 1


def test_find_near_duplicates_groups_transitively() -> None:
    base = 0b1111 << 100
    hashes = [base, base ^ 0b1, base ^ 0b11, 2**255, base ^ (2**40 - 1)]
    records = [Record(f"/{i}", str(i), "s") for i in range(5)]
    assert find_near_duplicates(records, hashes, max_distance=1) == [{0, 1, 2}]
    assert find_near_duplicates(records, hashes, max_distance=0) == []
    with pytest.raises(ValueError, match="one hash per record"):
        find_near_duplicates(records, hashes[:2])
