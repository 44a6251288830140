"""Behaviour of the synthetic chest X-ray phantoms (ground truth, class signatures, splits, files)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cxrnet.data.phantoms import (
    CLASSES,
    MANIFEST_COLUMNS,
    SEVERITY_TARGETS,
    generate_phantoms,
    make_phantom,
    phantom_seeds,
    write_phantom_folder,
)
from cxrnet.severity import severity_targets

SIZE = 96
SEEDS = range(8)
DISEASES = ("bacterial", "viral", "covid19")


def _noise(image: np.ndarray) -> float:
    """Pixel-noise proxy: robust spread (MAD) of what a 1-pixel blur removes; edges barely move it."""
    detail = image - ndimage.gaussian_filter(image, 1.0)
    return float(1.4826 * np.median(np.abs(detail - np.median(detail))))


def _side_rows_cols(item, side: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(item.meta["lung_sides"] == side)
    return rows, cols


@pytest.mark.parametrize("size", [32, 77, 128])
@pytest.mark.parametrize("label", CLASSES)
def test_arrays_have_documented_shapes_types_and_ranges(size: int, label: str) -> None:
    item = make_phantom(5, size=size, label=label)

    assert item.image.shape == (size, size) and item.image.dtype == np.float32
    assert item.image.min() >= 0.0 and item.image.max() <= 1.0
    assert item.lung_mask.dtype == bool and item.lung_mask.shape == (size, size)
    assert item.infection_mask.dtype == bool and item.infection_mask.shape == (size, size)
    sides = item.meta["lung_sides"]
    assert sides.dtype == np.int8 and set(np.unique(sides)) == {0, 1, 2}
    np.testing.assert_array_equal(sides > 0, item.lung_mask)
    assert item.label == label
    assert item.meta["source"] == "synthetic"
    assert item.meta["seed"] == 5 and item.meta["difficulty"] == 0.5
    assert item.meta["patient_id"] == "phantom-5"
    assert item.meta["path"].startswith("phantom://")


def test_same_arguments_give_identical_phantoms_and_other_seeds_differ() -> None:
    a, b = make_phantom(11, SIZE), make_phantom(11, SIZE)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.lung_mask, b.lung_mask)
    np.testing.assert_array_equal(a.infection_mask, b.infection_mask)
    assert a.label == b.label and a.severity == b.severity

    c = make_phantom(12, SIZE, label=a.label)
    assert np.abs(a.image - c.image).mean() > 0.01
    assert (a.lung_mask != c.lung_mask).any()


def test_label_drawn_from_seed_covers_all_classes() -> None:
    labels = {make_phantom(seed, 32).label for seed in range(40)}
    assert labels == set(CLASSES)


def test_a_seed_renders_the_same_anatomy_at_every_size() -> None:
    small, large = make_phantom(3, 64), make_phantom(3, 128)
    downsampled = large.lung_mask.reshape(64, 2, 64, 2).mean(axis=(1, 3)) > 0.5
    iou = (small.lung_mask & downsampled).sum() / (small.lung_mask | downsampled).sum()
    assert iou > 0.9


def test_label_changes_only_the_lungs_so_overlays_carry_no_class_information() -> None:
    # Markers and devices come from a stream independent of the label: for one seed, a diseased
    # phantom and its normal twin are identical outside the (slightly dilated, for the blur) lungs.
    for seed in range(12):
        normal = make_phantom(seed, SIZE, label="normal", difficulty=1.0)
        for label in DISEASES:
            sick = make_phantom(seed, SIZE, label=label, difficulty=1.0)
            np.testing.assert_array_equal(sick.lung_mask, normal.lung_mask)
            outside = ~ndimage.binary_dilation(normal.lung_mask, iterations=4)
            assert np.abs(sick.image - normal.image)[outside].max() < 1e-3


@pytest.mark.parametrize("label", CLASSES)
def test_infection_lies_inside_the_lungs_and_normal_has_none(label: str) -> None:
    for seed in SEEDS:
        item = make_phantom(seed, SIZE, label=label)
        assert not (item.infection_mask & ~item.lung_mask).any()
        if label == "normal":
            assert not item.infection_mask.any()
        else:
            assert item.infection_mask.sum() > 0.02 * item.lung_mask.sum()


def test_lungs_are_two_separate_single_pieces() -> None:
    for seed in range(20):
        item = make_phantom(seed, SIZE)
        sides = item.meta["lung_sides"]
        for side in (1, 2):
            assert ndimage.label(sides == side)[1] == 1
        # A gap of mediastinum: the lungs stay apart even after growing each by two pixels.
        grown = ndimage.binary_dilation(sides == 1, iterations=2)
        assert not (grown & (sides == 2)).any()
        # The patient's right lung is on the image left.
        assert _side_rows_cols(item, 1)[1].max() < _side_rows_cols(item, 2)[1].min()


def test_lung_mask_excludes_the_heart() -> None:
    # The heart covers the lower medial part of the patient's left lung: there, the lung's medial
    # border steps laterally, and the notch it leaves is bright soft tissue, not dark lung.
    for seed in SEEDS:
        item = make_phantom(seed, SIZE, label="normal", difficulty=0.0)
        rows, cols = _side_rows_cols(item, 2)
        top, bottom = rows.min(), rows.max()
        height = bottom - top
        medial = np.array([cols[rows == r].min() if (rows == r).any() else -1 for r in range(SIZE)])
        upper = np.median(medial[top + height // 4 : top + height // 2])
        lower = np.median(medial[bottom - height // 5 : bottom])
        assert lower - upper > 0.08 * SIZE
        notch = np.zeros_like(item.lung_mask)
        for r in range(bottom - height // 5, bottom):
            notch[r, int(upper) : medial[r]] = True
        assert not (notch & item.lung_mask).any()
        assert item.image[notch].mean() > item.image[item.meta["lung_sides"] == 2].mean() + 0.15


def test_bacterial_infection_is_unilateral() -> None:
    for seed in range(12):
        item = make_phantom(seed, SIZE, label="bacterial")
        sides_hit = set(np.unique(item.meta["lung_sides"][item.infection_mask]))
        assert len(sides_hit) == 1


@pytest.mark.parametrize("label", ["viral", "covid19"])
def test_viral_and_covid_infection_is_bilateral(label: str) -> None:
    for seed in range(12):
        item = make_phantom(seed, SIZE, label=label)
        sides = item.meta["lung_sides"]
        for side in (1, 2):
            assert (item.infection_mask & (sides == side)).sum() > 0.01 * (sides == side).sum()


def _lateral_and_lower_shares(item) -> tuple[float, float]:
    """Share of infected pixels in the lateral half and in the lower half of their own lung."""
    lateral = lower = total = 0
    for side in (1, 2):
        rows, cols = _side_rows_cols(item, side)
        inf = item.infection_mask[rows, cols]
        mid_col, mid_row = (cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2
        is_lateral = cols < mid_col if side == 1 else cols > mid_col
        lateral += int((inf & is_lateral).sum())
        lower += int((inf & (rows > mid_row)).sum())
        total += int(inf.sum())
    return lateral / total, lower / total


def test_covid_is_peripheral_and_basal_while_viral_is_perihilar() -> None:
    covid = [_lateral_and_lower_shares(make_phantom(s, SIZE, label="covid19")) for s in range(12)]
    viral = [_lateral_and_lower_shares(make_phantom(s, SIZE, label="viral")) for s in range(12)]
    assert min(lat for lat, _ in covid) > 0.6
    assert min(low for _, low in covid) > 0.75
    assert max(lat for lat, _ in viral) < 0.5


@pytest.mark.parametrize("label", DISEASES)
def test_infection_is_brighter_than_clear_lung(label: str) -> None:
    for seed in SEEDS:
        item = make_phantom(seed, SIZE, label=label)
        clear = item.lung_mask & ~item.infection_mask
        assert item.image[item.infection_mask].mean() > item.image[clear].mean() + 0.03
        # Against the same patient without disease the opacity stands well above the pixel noise.
        twin = make_phantom(seed, SIZE, label="normal")
        added = (item.image - twin.image)[item.infection_mask].mean()
        assert added > 2 * _noise(twin.image)


def test_difficulty_adds_noise_and_weakens_opacities() -> None:
    noise, contrast = {}, {}
    for difficulty in (0.0, 1.0):
        n, c = [], []
        for seed in range(6):
            twin = make_phantom(seed, SIZE, label="normal", difficulty=difficulty)
            n.append(_noise(twin.image))
            for label in DISEASES:
                item = make_phantom(seed, SIZE, label=label, difficulty=difficulty)
                c.append((item.image - twin.image)[item.infection_mask].mean())
        noise[difficulty], contrast[difficulty] = np.mean(n), np.mean(c)
    assert noise[1.0] > 1.5 * noise[0.0]
    assert contrast[1.0] < 0.7 * contrast[0.0]


def test_severity_targets_match_the_masks_and_normal_scores_zero() -> None:
    for label in CLASSES:
        for seed in range(4):
            item = make_phantom(seed, SIZE, label=label)
            assert set(item.severity) == set(SEVERITY_TARGETS)
            assert 0 <= item.severity["geographic_extent"] <= 8
            assert 0 <= item.severity["brixia"] <= 18
            expected = severity_targets(item.lung_mask, item.infection_mask)
            assert item.severity == {k: expected[k] for k in SEVERITY_TARGETS}
            if label == "normal":
                assert item.severity == {"geographic_extent": 0.0, "brixia": 0.0}
            else:
                assert item.severity["geographic_extent"] >= 1 and item.severity["brixia"] >= 1


def test_severity_varies_within_a_class() -> None:
    for label in DISEASES:
        scores = {make_phantom(seed, 64, label=label).severity["brixia"] for seed in range(16)}
        assert len(scores) >= 3


def test_phantom_seeds_are_disjoint_across_splits() -> None:
    n = 1_000_000
    splits = {name: np.asarray(phantom_seeds(name, n)) for name in ("train", "val", "test", "extra")}
    for name, seeds in splits.items():
        assert len(seeds) == n and (np.diff(np.sort(seeds)) > 0).all(), name  # n distinct seeds
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert len(np.intersect1d(splits[a], splits[b], assume_unique=True)) == 0, (a, b)
    assert phantom_seeds("train", 5) == phantom_seeds("train", 5)
    assert phantom_seeds("train", 5) == phantom_seeds("train", 9)[:5]
    assert not set(phantom_seeds("train", 100, seed=1)) & set(phantom_seeds("train", 100, seed=0))


def test_phantom_seeds_rejects_what_it_cannot_keep_disjoint() -> None:
    with pytest.raises(ValueError, match="n must lie"):
        phantom_seeds("train", 2**20 + 1)
    with pytest.raises(ValueError, match="non-negative"):
        phantom_seeds("train", 3, seed=-1)


def test_generate_phantoms_is_class_balanced_and_uses_the_split_seeds() -> None:
    items = generate_phantoms(8, split="val", seed=2, size=48)
    assert [item.label for item in items] == list(CLASSES) * 2
    assert [item.meta["seed"] for item in items] == phantom_seeds("val", 8, seed=2)
    assert len({item.meta["path"] for item in items}) == 8
    assert all(item.meta["path"].startswith("phantom://val/") for item in items)

    subset = generate_phantoms(5, size=32, classes=("normal", "covid19"))
    assert [item.label for item in subset] == ["normal", "covid19", "normal", "covid19", "normal"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 16}, "size must be"),
        ({"difficulty": 1.5}, "difficulty must"),
        ({"label": "fungal"}, "unknown phantom label"),
        ({"seed": -3}, "seed must be"),
    ],
)
def test_invalid_arguments_say_what_is_wrong(kwargs: dict, message: str) -> None:
    args = {"seed": 0, "size": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_phantom(**args)


def test_write_phantom_folder_writes_files_that_match_the_manifest(tmp_path) -> None:
    manifest = write_phantom_folder(tmp_path / "demo", 4, seed=1, size=48)
    assert manifest == tmp_path / "demo" / "manifest.csv"
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        rows = list(reader)
    items = generate_phantoms(4, split="test", seed=1, size=48)
    assert [row["label"] for row in rows] == [item.label for item in items]
    assert len({row["patient_id"] for row in rows}) == 4
    for row, item in zip(rows, items):
        image = np.asarray(Image.open(manifest.parent / row["path"]))
        lung = np.asarray(Image.open(manifest.parent / row["lung_mask"]))
        infection = np.asarray(Image.open(manifest.parent / row["infection_mask"]))
        assert image.dtype == np.uint8 and image.shape == (48, 48)
        assert np.abs(image / 255.0 - item.image).max() <= 0.5 / 255 + 1e-6
        assert set(np.unique(lung)) <= {0, 255} and set(np.unique(infection)) <= {0, 255}
        np.testing.assert_array_equal(lung == 255, item.lung_mask)
        np.testing.assert_array_equal(infection == 255, item.infection_mask)
        assert row["patient_id"] == item.meta["patient_id"]
        for name in SEVERITY_TARGETS:
            assert float(row[name]) == item.severity[name]
