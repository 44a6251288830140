"""CXRDataModule over datasets in their native layouts: splits, samples, mixing, errors, sampling."""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

from cxrnet.data import images
from cxrnet.data.dataset import collate
from cxrnet.data.images import ImageReadError
from cxrnet.datamodule import ClassBalancedSampler, CXRDataModule, class_balanced_weights

_spec = importlib.util.spec_from_file_location(
    "cxrnet_test_fixtures", Path(__file__).parent / "data" / "fixtures.py"
)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

QUEX_CLASSES = ["normal", "non_covid", "covid19"]


def make_dm(name: str, root: Path, **kwargs: object) -> CXRDataModule:
    defaults = {"classes": QUEX_CLASSES, "image_size": 32, "batch_size": 4, "augment": "none"}
    dm = CXRDataModule(name=name, root=str(root), **{**defaults, **kwargs})
    dm.setup("fit")
    return dm


def manifest(root: Path, rows: list[tuple[str, str, str]], arrays: dict[str, np.ndarray]) -> Path:
    """Write images and a manifest of (file, label, patient) rows (plus lung masks named ``<stem>_lung.png``)."""
    lines = ["path,label,patient_id,lung_mask"]
    for name, label, patient in rows:
        fx.save(root / name, arrays[name])
        mask = f"{Path(name).stem}_lung.png"
        if mask in arrays:
            fx.save(root / mask, arrays[mask])
        lines.append(f"{name},{label},{patient},{mask if mask in arrays else ''}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_covid_qu_ex_counts_labels_masks_and_official_split(tmp_path: Path) -> None:
    root = fx.make_covid_qu_ex(tmp_path / "quex")
    dm = make_dm("covid_qu_ex", root)
    sizes = {split: len(ds) for split, ds in dm.datasets.items()}
    # the official split; the image in both parts is kept once
    assert sizes == {"train": 5, "val": 3, "test": 6}
    for split, dataset in dm.datasets.items():
        assert {item.split for item in dataset.items} == {split}
    test = dm.report.counts["test"]["all"]
    assert (test["images"], test["patients"], test["lung_masks"], test["infection_masks"]) == (6, 6, 6, 3)
    assert dm.report.counts["train"]["covid19"]["infection_masks"] == 1
    batch = collate([dm.datasets["test"][i] for i in range(6)])
    assert batch["image"].shape == (6, 1, 32, 32)
    assert batch["has_lung_mask"].all()
    part = [m["part"] for m in batch["meta"]]
    assert batch["has_infection_mask"].tolist() == [p == "infection" for p in part]
    names = [dm.classes[i] for i in batch["label"].tolist()]
    assert names == [item.label for item in dm.datasets["test"].items]


def test_qata_val_is_carved_from_official_train(tmp_path: Path) -> None:
    dm = make_dm("qata", fx.make_qata(tmp_path / "qata"), classes=["normal", "covid19"])
    assert len(dm.datasets["test"]) == 2
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 5
    assert all(item.split == "train" for item in dm.datasets["val"].items)


def test_only_official_test_falls_back_to_a_patient_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = fx.make_covid_qu_ex(tmp_path / "quex", parts=("infection",))
    for path in sorted((root / "Infection Segmentation Data" / "Train").rglob("*.png")):
        target = (
            root
            / "Infection Segmentation Data"
            / "Test"
            / path.relative_to(root / "Infection Segmentation Data" / "Train")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target.with_name("moved_" + target.name))
    with caplog.at_level(logging.WARNING):
        dm = make_dm("covid_qu_ex", root)
    assert all(len(ds) > 0 for ds in dm.datasets.values())
    assert sum(len(ds) for ds in dm.datasets.values()) == 6
    assert any("official splits leave" in note for note in dm.report.notes)
    assert "official splits leave" in caplog.text


def test_patients_never_span_two_splits(tmp_path: Path) -> None:
    rows, arrays = [], {}
    for i in range(30):
        patient, label = f"P{i // 3}", ("normal", "covid")[i % 2]
        arrays[f"im{i}.png"] = fx.natural(i, (40, 48))
        rows.append((f"im{i}.png", label, patient))
    dm = make_dm("folder", manifest(tmp_path, rows, arrays), classes=["normal", "covid19"])
    owner: dict[str, str] = {}
    for split, dataset in dm.datasets.items():
        assert len(dataset) > 0
        for item in dataset.items:
            assert owner.setdefault(item.patient_id, split) == split


def test_near_duplicates_share_a_split_and_are_reported(tmp_path: Path) -> None:
    rows, arrays = [], {}
    for i in range(12):
        arrays[f"im{i}.png"] = fx.natural(i, (40, 48))
        rows.append((f"im{i}.png", ("normal", "covid")[i % 2], f"P{i}"))
    arrays["copy.png"] = arrays["im3.png"]
    rows.append(("copy.png", "covid", "OTHER"))
    dm = make_dm("folder", manifest(tmp_path, rows, arrays), classes=["normal", "covid19"])
    assert len(dm.report.duplicates) == 1
    assert {Path(p).name for p in dm.report.duplicates[0]} == {"im3.png", "copy.png"}
    assert [i.kind for i in dm.report.warnings] == ["near-duplicate"]
    split_of = {Path(item.path).name: split for split, ds in dm.datasets.items() for item in ds.items}
    assert split_of["im3.png"] == split_of["copy.png"]


def test_train_augmentation_keeps_masks_aligned(tmp_path: Path) -> None:
    image = np.full((64, 64), 20, np.uint8)
    image[16:44, 20:50] = 230
    arrays = {"sq.png": image, "sq_lung.png": fx.box_mask(slice(16, 44), slice(20, 50), (64, 64))}
    root = manifest(tmp_path, [("sq.png", "normal", "P1")], arrays)
    dm = CXRDataModule(
        name="folder",
        root=str(root),
        classes=["normal", "covid19"],
        image_size=64,
        augment="default",
        split_fractions={"train": 1.0},
        duplicate_max_distance=None,
    )
    dm.setup("fit")
    for _ in range(8):
        sample = dm.datasets["train"][0]
        img, mask = sample["image"][0].numpy(), sample["lung_mask"][0].numpy() > 0.5
        threshold = (img[mask].mean() + img[~mask].mean()) / 2
        bright = img > threshold
        assert (bright & mask).sum() / (bright | mask).sum() > 0.85


def test_mixed_sources_collate_with_partial_labels(tmp_path: Path) -> None:
    quex = fx.make_covid_qu_ex(tmp_path / "quex")
    mont = fx.make_montgomery(tmp_path / "mont")
    dm = CXRDataModule(
        name="mixed",
        root=str(tmp_path),
        classes=QUEX_CLASSES,
        image_size=32,
        batch_size=64,
        augment="none",
        sources=[
            {"name": "covid_qu_ex", "root": "quex"},
            {"name": "montgomery", "root": str(mont), "use_labels": False},
        ],
    )
    dm.setup("fit")
    assert quex.exists()
    assert dm.report.source == "covid_qu_ex+montgomery"
    items = [item for ds in dm.datasets.values() for item in ds.items]
    assert Counter(item.source for item in items) == {"covid_qu_ex": 14, "montgomery": 3}
    batch = collate([ds[i] for ds in dm.datasets.values() for i in range(len(ds))])
    from_mont = torch.tensor([m["source"] == "montgomery" for m in batch["meta"]])
    assert (batch["label"][from_mont] == -1).all() and not batch["has_label"][from_mont].any()
    assert batch["has_label"][~from_mont].all()
    # MCUCXR_0003 has only a left mask, so no lung mask
    assert sorted(batch["has_lung_mask"][from_mont].tolist()) == [False, True, True]
    assert not batch["has_infection_mask"][from_mont].any()


def test_labels_outside_classes_fail_with_a_hint_or_are_excluded(tmp_path: Path) -> None:
    root = fx.make_montgomery(tmp_path / "mont")
    with pytest.raises(
        ValueError, match=r"'tuberculosis' of .*MCUCXR_000\d_1\.png is not one of data.classes"
    ):
        make_dm("montgomery", root, classes=["normal", "covid19"], on_unknown_label="error")
    dm = make_dm(  # the default: excluded and counted, never a stop
        "montgomery", root, classes=["normal", "covid19"], split_fractions={"train": 1.0, "val": 0, "test": 0}
    )
    assert len(dm.datasets["train"]) == 1
    assert sorted(i.kind for i in dm.report.problems) == ["label not in classes"] * 2


def _corrupt(root: Path) -> Path:
    bad = root / "Infection Segmentation Data" / "Test" / "Normal" / "images" / "Normal (2).png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    return bad


def test_on_error_error_names_the_file(tmp_path: Path) -> None:
    bad = _corrupt(fx.make_covid_qu_ex(tmp_path / "quex"))
    for threads in (0, 2):  # the setup scan, sequential or threaded
        with pytest.raises(ImageReadError, match=r"Normal \(2\)\.png.*on_error=skip"):
            make_dm("covid_qu_ex", bad.parents[4], num_workers=threads)
    dm = make_dm("covid_qu_ex", bad.parents[4], duplicate_max_distance=None)  # no scan: fails when loaded
    index = [Path(i.path).name for i in dm.datasets["test"].items].index(bad.name)
    with pytest.raises(ImageReadError, match=r"cannot read .*Normal \(2\)\.png: "):
        dm.datasets["test"][index]


def test_on_error_skip_drops_and_lists_the_file(tmp_path: Path) -> None:
    bad = _corrupt(fx.make_covid_qu_ex(tmp_path / "quex"))
    dm = make_dm("covid_qu_ex", bad.parents[4], on_error="skip")
    assert sum(len(ds) for ds in dm.datasets.values()) == 13
    assert all(item.path != str(bad) for ds in dm.datasets.values() for item in ds.items)
    (problem,) = dm.report.problems
    assert (problem.kind, problem.path, problem.dropped) == ("unreadable file", str(bad), True)
    assert "items not used: 1" in dm.report.summary()


def test_cached_datamodule_reads_no_source_file_on_the_second_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fx.make_covid_qu_ex(tmp_path / "quex")
    first = CXRDataModule(
        name="covid_qu_ex",
        root=str(root),
        classes=QUEX_CLASSES,
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        augment="none",
    )
    first.prepare_data()
    first.setup("fit")
    expected = next(iter(first.test_dataloader()))
    calls = []
    monkeypatch.setattr(images, "decode_image", lambda path, **kwargs: calls.append(path))
    second = CXRDataModule(
        name="covid_qu_ex",
        root=str(root),
        classes=QUEX_CLASSES,
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        augment="none",
    )
    second.prepare_data()
    second.setup("fit")
    batch = next(iter(second.test_dataloader()))
    fingerprint = second.training_fingerprint()
    assert calls == []
    assert torch.equal(batch["image"], expected["image"])
    assert torch.equal(batch["lung_mask"], expected["lung_mask"])
    assert fingerprint["n_items"] == 5 and len(fingerprint["image_hashes"]) == 5
    assert fingerprint["source"] == ["covid_qu_ex"] and fingerprint["hash"] == "phash-256"
    assert fingerprint["patient_ids"] == sorted({i.patient_id for i in second.datasets["train"].items})
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in fingerprint["image_hashes"])


def test_training_fingerprint_without_cache_matches_the_cached_one(tmp_path: Path) -> None:
    root = fx.make_qata(tmp_path / "qata")
    plain = make_dm("qata", root, classes=["normal", "covid19"], duplicate_max_distance=None)
    cached = make_dm("qata", root, classes=["normal", "covid19"], cache_dir=str(tmp_path / "c"))
    assert plain.training_fingerprint() == cached.training_fingerprint()
    synthetic = CXRDataModule(image_size=32, options={"n_train": 4, "n_val": 2, "n_test": 2})
    fingerprint = synthetic.training_fingerprint()
    assert fingerprint["source"] == ["synthetic"] and fingerprint["n_items"] == 4
    assert len(set(fingerprint["image_hashes"])) == 4


def test_synthetic_keeps_its_behaviour_and_gets_a_report() -> None:
    dm = CXRDataModule(image_size=32, options={"n_train": 8, "n_val": 4, "n_test": 4}, balanced_sampling=True)
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8, "val": 4, "test": 4}
    assert dm.report.counts["train"]["all"]["images"] == 8
    assert len(list(dm.train_dataloader())) == 1  # 8 items, batch 16: one partial batch


def test_class_balanced_weights_and_sampler_balance_classes() -> None:
    labels = [0] * 90 + [1] * 10 + [-1] * 5
    weights = class_balanced_weights(labels)
    assert torch.isclose(weights[:90].sum(), weights[90:100].sum())
    sampler = ClassBalancedSampler(weights, seed=3)
    drawn = Counter(labels[i] for i in sampler)
    assert len(sampler) == 105 and 0.6 < drawn[1] / drawn[0] < 1.6
    sampler.set_epoch(1)
    first = list(sampler)
    assert first == list(sampler)  # the draw is a function of (seed, epoch)
    sampler.set_epoch(2)
    assert first != list(sampler)


def test_balanced_sampler_is_sharded_across_ddp_ranks() -> None:
    labels = [0] * 40 + [1] * 8
    draws, shards = [], []
    for rank in range(2):
        sampler = ClassBalancedSampler(class_balanced_weights(labels), seed=7)  # one per rank, as under DDP
        wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True, seed=0)
        wrapper.set_epoch(4)
        shards.append(list(wrapper))
        draws.append(list(sampler))  # the draw the wrapper sharded (epoch forwarded to the sampler)
    assert draws[0] == draws[1]
    assert len(shards[0]) == len(shards[1]) == 24
    assert Counter(shards[0] + shards[1]) == Counter(draws[0])
    ones = sum(labels[i] for i in shards[0] + shards[1])
    assert 12 < ones < 36


def test_bad_arguments_fail_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error='ignore' is not valid; choose one of: error, skip"):
        CXRDataModule(name="qata", root=str(tmp_path), on_error="ignore")
    with pytest.raises(ValueError, match="valid names: cohen, covid_qu_ex"):
        CXRDataModule(name="nope", root=str(tmp_path))
    with pytest.raises(ValueError, match=r"data\.root=<dir>"):
        CXRDataModule(name="qata")
    with pytest.raises(ValueError, match="unknown keys"):
        CXRDataModule(name="mixed", sources=[{"name": "qata", "root": "x", "use_label": False}])


@pytest.mark.parametrize(
    "name", ["covidx", "qata", "covid_qu_ex", "cohen", "montgomery", "shenzhen", "folder", "mixed"]
)
def test_every_data_config_builds_a_datamodule(name: str, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = [f"data={name}", f"data.root={tmp_path}"]
    if name == "folder":
        overrides.append("data.classes=[normal,covid19]")
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, CXRDataModule)
    assert OmegaConf.to_container(cfg.model, resolve=True)["classes"] == dm.classes
    assert dm.specs and all(Path(spec.root).is_relative_to(tmp_path) for spec in dm.specs)
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        synthetic = compose(config_name="train", overrides=["data=synthetic"])
    assert set(synthetic.data) <= set(cfg.data)  # every data config has at least synthetic's keys


NATIVE_FORMATS = {
    "covidx": fx.make_covidx,
    "qata": fx.make_qata,
    "covid_qu_ex": fx.make_covid_qu_ex,
    "cohen": fx.make_cohen,
    "montgomery": fx.make_montgomery,
    "shenzhen": fx.make_shenzhen,
    "folder": fx.make_manifest,
}


@pytest.mark.parametrize("name", sorted(NATIVE_FORMATS))
def test_every_native_format_splits_by_patient_with_aligned_masks(name: str, tmp_path: Path) -> None:
    """Each reader's fixture through the real config: every item lands in one split, no patient in two, and
    the masks each reader pairs with an image stay aligned with it through letterbox and augmentation."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from cxrnet.data.dataset import CXRDataset
    from cxrnet.data.items import load_record
    from cxrnet.data.sources import read_source
    from cxrnet.data.transforms import build_augmentation

    root = NATIVE_FORMATS[name](tmp_path / name)
    overrides = [f"data={name}", f"data.root={root}", "data.image_size=64", "data.num_workers=0"]
    overrides += ["data.augment=default", "data.on_unknown_label=exclude"]
    options = {}
    if name == "folder":  # its fixture names a missing file on purpose
        overrides += ["data.classes=[normal,covid19]", "++data.options.on_missing=exclude"]
        options["on_missing"] = "exclude"
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")

    label_map = cfg.data.get("label_map")
    if label_map is not None:
        options["label_map"] = dict(label_map)
    records = read_source(name, root, on_unknown_label="exclude", **options).records
    kept = [
        r for r in records if r.label is None or r.label in dm.classes
    ]  # unlabelled items still train masks
    assert sum(len(ds) for ds in dm.datasets.values()) == len(kept)
    owner: dict[str, str] = {}
    for split, dataset in dm.datasets.items():
        for item in dataset.items:
            assert owner.setdefault(item.patient_id, split) == split, (
                f"patient {item.patient_id} in two splits"
            )

    def mask_shaped_image(record):  # the real reader's image and masks, with pixels that reveal a mask
        raw = load_record(record)
        mask = raw.lung_mask if raw.lung_mask is not None else raw.infection_mask
        if mask is not None:
            raw.image = np.where(mask, 0.9, 0.1).astype(np.float32)
        return raw

    checked = 0
    for dataset in dm.datasets.values():
        augmented = CXRDataset(dataset.items, dm.classes, dm.preprocessing, transform=build_augmentation("default"),
                               loader=mask_shaped_image)  # fmt: skip
        for index in range(len(augmented)):
            sample = augmented[index]
            key = "lung_mask" if bool(sample["has_lung_mask"]) else "infection_mask"
            if sample[key].sum() < 20:
                continue
            image, mask = sample["image"][0].numpy(), sample[key][0].numpy() > 0.5
            bright = image > (image[mask].mean() + image[~mask].mean()) / 2
            assert (bright & mask).sum() / (bright | mask).sum() > 0.85, f"{name}: mask misaligned"
            checked += 1
    assert checked > 0 or name == "covidx", f"{name}: no item with a mask was checked"  # COVIDx has no masks
