"""torchxrayvision interop: any xrv dataset as a cxrnet source (data=xrv), and xrv's pixel convention.

Two kinds of dataset: tiny in-memory subclasses of ``torchxrayvision.datasets.Dataset`` (every branch of the
reader), and the real ``COVID19_Dataset`` on a tiny copy of its repository layout (its quirks: its own view
and ``todo`` filters, multi-label findings from ``str.contains``, lung masks from the archive xrv ships, kept
at the original image size). Nothing is downloaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchxrayvision as xrv
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cxrnet.data.arrays import from_xrv, to_gray, to_xrv
from cxrnet.data.build import SourceSpec, build_splits, check_options
from cxrnet.data.cache import DataCache
from cxrnet.data.dataset import CXRDataset
from cxrnet.data.images import ImageReadError, read_image
from cxrnet.data.items import ItemReadError, load_record, read_item
from cxrnet.data.records import RawItem
from cxrnet.data.sources import read_source
from cxrnet.data.sources import xrv as xrv_source
from cxrnet.data.transforms import Preprocessing, letterbox
from cxrnet.datamodule import CXRDataModule

from fixtures import natural, save

CLASSES = ["normal", "bacterial", "viral", "covid19"]
PATHOLOGIES = ["Bacterial", "COVID-19", "Fungal", "Lung Opacity", "No Finding", "Pneumonia", "Viral"]
SIDE = 48
LEFT, RIGHT = (slice(10, 38), slice(6, 20)), (slice(10, 38), slice(28, 42))
OPACITY = (slice(14, 24), slice(30, 40))


def box(where: tuple[slice, slice], shape: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    mask = np.zeros((1, *shape), dtype=np.float32)
    mask[(0, *where)] = 1.0
    return mask


class TinyXrv(xrv.datasets.Dataset):
    """An in-memory xrv dataset: 8-bit images, labels, optional patient ids and masks, as xrv items look.

    Masks are given for the listed items only: lung masks as xrv's "Left Lung"/"Right Lung" semantic masks,
    an opacity box as the pathology mask of "Lung Opacity".
    """

    def __init__(
        self,
        labels: list[list[float]],
        pathologies: list[str] = PATHOLOGIES,
        patients: list[str] | None = None,
        lungs: tuple[int, ...] = (),
        opacities: tuple[int, ...] = (),
        broken: tuple[int, ...] = (),
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.pathologies = list(pathologies)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.images = [natural(seed, (SIDE, SIDE)) for seed in range(len(labels))]
        self.csv = pd.DataFrame({"patientid": patients}) if patients is not None else None
        self.lungs, self.opacities, self.broken, self.scale = lungs, opacities, broken, scale
        self.semantic_masks, self.pathology_masks = bool(lungs), bool(opacities)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict:
        self.reads += 1
        if idx in self.broken:
            raise OSError(f"cannot open image {idx}")
        sample = {"idx": idx, "lab": self.labels[idx]}
        sample["img"] = xrv.datasets.normalize(self.images[idx], maxval=255, reshape=True) * self.scale
        if self.semantic_masks:
            sample["semantic_masks"] = (
                {"Left Lung": box(LEFT), "Right Lung": box(RIGHT), "Heart": box(OPACITY)}
                if idx in self.lungs
                else {}
            )
        if self.pathology_masks:
            opacity = self.pathologies.index("Lung Opacity")
            sample["pathology_masks"] = {opacity: box(OPACITY)} if idx in self.opacities else {}
        return sample


def row(*present: str, unknown: tuple[str, ...] = (), pathologies: list[str] = PATHOLOGIES) -> list[float]:
    return [1.0 if p in present else np.nan if p in unknown else 0.0 for p in pathologies]


def mixed_findings() -> TinyXrv:
    """Items 0-7: covid19 (also Pneumonia and Viral, as xrv marks them), viral, bacterial, normal, fungal
    (dropped on purpose), bare pneumonia (unknown), nothing known (unknown), covid19 + bacterial (covid19
    first in the map)."""
    return TinyXrv(
        [
            row("COVID-19", "Pneumonia", "Viral"),
            row("Pneumonia", "Viral"),
            row("Pneumonia", "Bacterial"),
            row("No Finding"),
            row("Pneumonia", "Fungal"),
            row("Pneumonia"),
            row(unknown=tuple(PATHOLOGIES)),
            row("COVID-19", "Viral", "Bacterial"),
        ],
        patients=["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"],
    )


# ------------------------------------------------------------------------------------------------- labels


def test_labels_map_onto_the_run_classes_in_map_order_and_the_rest_is_counted() -> None:
    result = read_source("xrv", None, dataset=mixed_findings(), on_unknown_label="exclude")
    assert [(r.meta["xrv_index"], r.label) for r in result] == [
        (0, "covid19"),
        (1, "viral"),
        (2, "bacterial"),
        (3, "normal"),
        (7, "covid19"),
    ]
    assert result[0].raw_label == "COVID-19|Pneumonia|Viral"
    assert result.excluded_counts() == {"unknown label": 2, "label mapped to None": 1}
    excluded = {e.path: (e.reason, e.detail) for e in result.excluded}
    assert excluded["xrv://TinyXrv/4"] == ("label mapped to None", "Fungal|Pneumonia")
    assert excluded["xrv://TinyXrv/5"] == ("unknown label", "Pneumonia")
    assert excluded["xrv://TinyXrv/6"] == ("unknown label", "(none present)")
    assert any("several classes" in note for note in result.notes)  # item 7: covid19 and bacterial


def test_the_class_to_pathologies_form_and_map_order_decide_alike() -> None:
    dataset = mixed_findings()
    inverse = {
        "covid19": ["COVID-19"],
        "viral": ["Viral"],
        "bacterial": ["bacterial"],
        "normal": ["no finding"],
    }
    result = xrv_source.read(dataset=dataset, label_map=inverse, on_unknown_label="exclude")
    assert [r.label for r in result] == ["covid19", "viral", "bacterial", "normal", "covid19"]
    assert result.excluded_counts() == {"unknown label": 3}  # without a null entry, Fungal is unknown
    # bacterial listed first: the co-infected item 7 becomes bacterial
    swapped = xrv_source.read(
        dataset=dataset,
        label_map={"Bacterial": "bacterial", "COVID-19": "covid19"},
        on_unknown_label="exclude",
    )
    assert {r.meta["xrv_index"]: r.label for r in swapped} == {0: "covid19", 2: "bacterial", 7: "bacterial"}
    with pytest.raises(ValueError, match="mixes two forms"):
        xrv_source.read(dataset=dataset, label_map={"covid19": ["COVID-19"], "Viral": "viral"})


def test_an_unmapped_item_is_an_error_naming_it_unless_excluded() -> None:
    with pytest.raises(
        ValueError, match=r"item 5 of TinyXrv \(xrv://TinyXrv/5\).*'Pneumonia'.*on_unknown_label"
    ):
        xrv_source.read(dataset=mixed_findings())  # item 4 (Fungal) is dropped on purpose, item 5 is unknown


def test_no_finding_class_takes_items_labelled_absent_for_every_pathology() -> None:
    nih = ["Effusion", "Pneumonia"]
    dataset = TinyXrv(
        [
            row(pathologies=nih),
            row("Pneumonia", pathologies=nih),
            row(unknown=("Effusion",), pathologies=nih),
        ],
        pathologies=nih,
    )
    result = xrv_source.read(
        dataset=dataset,
        label_map={"Pneumonia": "pneumonia"},
        no_finding_class="normal",
        on_unknown_label="exclude",
    )
    assert [(r.meta["xrv_index"], r.label) for r in result] == [(0, "normal"), (1, "pneumonia")]
    assert result.excluded_counts() == {"unknown label": 1}  # item 2: Effusion unknown, so not "no finding"
    assert any(
        "does not have" in note and "COVID-19" in note
        for note in xrv_source.read(
            dataset=dataset, no_finding_class="normal", on_unknown_label="exclude"
        ).notes
    )  # the default map names pathologies NIH lacks: said, not silently ignored


# ------------------------------------------------------------------------------------------------- pixels


def test_pixels_come_back_in_cxrnets_convention() -> None:
    dataset = mixed_findings()
    record = xrv_source.read(dataset=dataset, on_unknown_label="exclude")[1]
    item = load_record(record)
    assert item.image.dtype == np.float32 and item.image.shape == (SIDE, SIDE)
    np.testing.assert_allclose(item.image, dataset.images[1] / 255.0, atol=1e-6)  # what read_image gives
    assert item.lung_mask is None and item.infection_mask is None
    assert item.meta["path"] == "xrv://TinyXrv/1" and item.meta["patient_id"] == "p1"


def test_lung_and_infection_masks_come_from_semantic_and_pathology_masks() -> None:
    labels = [row("COVID-19", "Lung Opacity"), row("No Finding"), row("Viral")]
    dataset = TinyXrv(labels, lungs=(0, 1), opacities=(0,))
    result = xrv_source.read(dataset=dataset)
    with_masks = {r.meta["xrv_index"]: (bool(r.lung_mask), r.infection_mask is not None) for r in result}
    assert with_masks == {0: (True, True), 1: (True, False), 2: (False, False)}  # known before training
    first = load_record(result[0])
    expected_lung = (box(LEFT) + box(RIGHT))[0] > 0  # the left and right lungs; "Heart" is not lung
    np.testing.assert_array_equal(first.lung_mask, expected_lung)
    np.testing.assert_array_equal(first.infection_mask, box(OPACITY)[0] > 0)
    samples = CXRDataset(result.records, CLASSES, Preprocessing(image_size=64))
    flags = [
        (bool(s["has_lung_mask"]), bool(s["has_infection_mask"])) for s in (samples[i] for i in range(3))
    ]
    assert flags == [(True, True), (True, False), (False, False)]
    np.testing.assert_array_equal(
        samples[0]["lung_mask"][0].numpy() > 0, letterbox(expected_lung, 64, is_mask=True)
    )


def test_masks_false_skips_the_masks_and_the_read_at_setup() -> None:
    dataset = TinyXrv([row("COVID-19", "Lung Opacity")], lungs=(0,), opacities=(0,))
    result = xrv_source.read(dataset=dataset, masks=False)
    assert dataset.reads == 0 and not result[0].lung_mask and result[0].infection_mask is None
    assert load_record(result[0]).lung_mask is None


def test_an_unreadable_item_is_named_and_skipped_with_on_error_skip() -> None:
    dataset = TinyXrv([row("COVID-19"), row("Viral"), row("Bacterial"), row("No Finding")], broken=(2,))
    spec = SourceSpec("xrv", "", {"dataset": dataset})
    with pytest.raises(ImageReadError, match=r"xrv://TinyXrv/2: OSError: cannot open image 2"):
        build_splits([spec], CLASSES, on_error="error")  # the scan for near-duplicates reads every item
    with pytest.raises(ItemReadError, match="cannot open image 2"):
        read_item(xrv_source.read(dataset=dataset)[2])
    build = build_splits([spec], CLASSES, on_error="skip", fractions={"train": 1.0})
    assert [r.meta["xrv_index"] for r in build.splits["train"]] == [0, 1, 3]
    assert [(i.kind, i.path) for i in build.report.issues] == [("unreadable file", "xrv://TinyXrv/2")]


def test_an_image_not_in_xrvs_range_is_refused_with_the_fix() -> None:
    dataset = TinyXrv([row("Viral")], scale=1 / 2048)  # shrunk into [-0.5, 0.5]: fine for xrv, but look:
    assert read_item(xrv_source.read(dataset=dataset)[0]).image.std() < 1e-3  # a flat grey, as it should
    wide = TinyXrv([row("Viral")], scale=4.0)
    with pytest.raises(ItemReadError, match=r"outside torchxrayvision's \[-1024, 1024\].*normalize"):
        read_item(xrv_source.read(dataset=wide)[0])


# ------------------------------------------------------------------------------------- patients and splits


def test_patient_ids_drive_a_patient_level_split() -> None:
    patients = [f"p{i // 3}" for i in range(24)]  # 8 patients, 3 images each, labels alternating by patient
    labels = [row("COVID-19") if i // 3 % 2 else row("No Finding") for i in range(24)]
    dm = CXRDataModule(
        name="xrv", dataset=TinyXrv(labels, patients=patients), classes=CLASSES, image_size=64, augment="none",
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
    )  # fmt: skip
    dm.setup("fit")
    owners = {
        split: {item.meta["patient_id"] for item in (dm.datasets[split].load(i) for i in range(len(ds)))}
        for split, ds in dm.datasets.items()
    }
    assert sum(len(ds) for ds in dm.datasets.values()) == 24
    assert all(owners[a].isdisjoint(owners[b]) for a in owners for b in owners if a < b)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 64, 64) and batch["meta"][0]["source"] == "xrv"


def test_without_patient_ids_each_image_is_its_own_patient_and_a_note_says_so() -> None:
    result = xrv_source.read(dataset=TinyXrv([row("COVID-19"), row("Viral")]))
    assert [r.patient_id for r in result] == ["TinyXrv-0", "TinyXrv-1"]
    assert any("no patient ids" in note for note in result.notes)


def test_an_xrv_source_mixes_with_others_without_a_root() -> None:
    spec = SourceSpec.from_mapping(
        {"name": "xrv", "options": {"dataset": TinyXrv([row("COVID-19")], lungs=(0,))}, "use_masks": False}
    )
    build = build_splits([spec], CLASSES, fractions={"train": 1.0})
    (record,) = build.splits["train"]
    assert record.lung_mask == () and load_record(record).lung_mask is None  # use_masks: false reaches pixels
    with pytest.raises(ValueError, match="needs a 'name' and a 'root'"):
        SourceSpec.from_mapping({"name": "qata"})
    with pytest.raises(ValueError, match="no dataset"):
        xrv_source.read()
    with pytest.raises(ValueError, match="not a torchxrayvision dataset"):
        xrv_source.read(dataset=[1, 2, 3])


def test_cache_keys_are_never_shared_between_in_memory_datasets(tmp_path: Path) -> None:
    cache = DataCache(tmp_path, 64)
    first, again = (xrv_source.read(dataset=TinyXrv([row("Viral")]))[0] for _ in range(2))
    assert cache.key(first) == cache.key(first) and cache.key(first) != cache.key(again)
    dataset = TinyXrv([row("Viral"), row("No Finding")] * 2)
    dm = CXRDataModule(
        name="xrv", dataset=dataset, classes=CLASSES, image_size=64, cache_dir=str(tmp_path),
        split_fractions={"train": 1.0}, augment="none", num_workers=2,
    )  # fmt: skip
    dm.setup("fit")
    assert dataset.reads == 4 and len(list(tmp_path.rglob("*.npz"))) == 4  # filled here, not in processes
    cached = dm.datasets["train"][0]["image"]
    assert dataset.reads == 4  # read from the cache
    uncached = CXRDataset(dm.datasets["train"].items, CLASSES, dm.preprocessing)[0]["image"]
    torch.testing.assert_close(cached, uncached)


# --------------------------------------------------------------- the real COVID19_Dataset on a tiny layout

ARCHIVE = Path(xrv.__file__).parent / "data" / "semantic_masks_v7labs_lungs.zip"
MASKED = "ryct.2020003.fig2-a.png"  # in the archive, at 156 x 157
MASKED_OTHER_SIZE = "ryct.2020003.fig2-b.png"  # in the archive at 157 x 173; our copy is 64 x 64


def archived_mask_shape(name: str) -> tuple[int, int]:
    import imageio.v2 as imageio

    with zipfile.ZipFile(ARCHIVE) as archive:
        return imageio.imread(archive.read(f"semantic_masks_v7labs_lungs/{name}")).shape[:2]


def make_covid_repo(root: Path) -> Path:
    """covid-chestxray-dataset's layout: ``metadata.csv`` and ``images/``. Rows (patient, finding, view):

    p1 COVID-19 PA (MASKED: the archive has its lung mask), p1 COVID-19 AP, p2 SARS PA, p3 Streptococcus PA,
    p4 No Finding PA, p5 Pneumocystis PA (Fungal: dropped), p6 bare Pneumonia PA (unknown), p7 COVID-19 L
    (lateral: xrv drops it), p8 todo PA (xrv drops it), p9 COVID-19 PA (MASKED_OTHER_SIZE)."""
    rows = [
        ("p1", "Pneumonia/Viral/COVID-19", "PA", MASKED, archived_mask_shape(MASKED)),
        ("p1", "Pneumonia/Viral/COVID-19", "AP", "p1-day3.png", (64, 64)),
        ("p2", "Pneumonia/Viral/SARS", "PA", "sars.jpg", (64, 72)),
        ("p3", "Pneumonia/Bacterial/Streptococcus", "PA", "strep.png", (64, 64)),
        ("p4", "No Finding", "PA", "normal.png", (72, 64)),
        ("p5", "Pneumonia/Fungal/Pneumocystis", "PA", "pcp.png", (64, 64)),
        ("p6", "Pneumonia", "PA", "pneumonia.png", (64, 64)),
        ("p7", "Pneumonia/Viral/COVID-19", "L", "lateral.png", (64, 64)),
        ("p8", "todo", "PA", "todo.png", (64, 64)),
        ("p9", "Pneumonia/Viral/COVID-19", "PA", MASKED_OTHER_SIZE, (64, 64)),
    ]
    lines = ["patientid,offset,sex,age,finding,RT_PCR_positive,view,modality,folder,filename"]
    for seed, (patient, finding, view, filename, shape) in enumerate(rows):
        save(root / "images" / filename, natural(seed, shape))
        lines.append(f"{patient},{seed},M,50,{finding},Y,{view},X-ray,images,{filename}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def covid_repo(tmp_path: Path) -> Path:
    return make_covid_repo(tmp_path / "covid-chestxray-dataset")


def covid19(repo: Path, **kwargs: object) -> xrv.datasets.COVID19_Dataset:
    return xrv.datasets.COVID19_Dataset(
        imgpath=str(repo / "images"), csvpath=str(repo / "metadata.csv"), semantic_masks=True, **kwargs
    )


def test_real_covid19_dataset_reads_with_its_quirks(covid_repo: Path) -> None:
    result = xrv_source.read(dataset=covid19(covid_repo), on_unknown_label="exclude")
    names = {Path(r.path).name: r for r in result}
    assert {name: r.label for name, r in names.items()} == {
        MASKED: "covid19",
        "p1-day3.png": "covid19",
        "sars.jpg": "viral",
        "strep.png": "bacterial",
        "normal.png": "normal",
        MASKED_OTHER_SIZE: "covid19",
    }  # lateral and todo rows never leave xrv; SARS is viral through "Viral"
    assert result.excluded_counts() == {"label mapped to None": 1, "unknown label": 1}
    assert names[MASKED].path == str(covid_repo / "images" / MASKED)  # the file: for messages, the cache key
    assert (names[MASKED].patient_id, names["p1-day3.png"].patient_id) == ("p1", "p1")
    assert names[MASKED].raw_label == "COVID-19|Pneumonia|Viral"  # xrv's str.contains labels
    # xrv 1.5 names the archived mask "Lungs"; it covers the images it was drawn on
    assert [bool(r.lung_mask) for r in (names[MASKED], names["strep.png"])] == [True, False]
    item = load_record(names[MASKED])
    assert item.lung_mask.shape == item.image.shape == archived_mask_shape(MASKED) and item.lung_mask.any()
    # the same file read by cxrnet's own reader gives the same pixels: one convention, whoever decodes it
    np.testing.assert_allclose(item.image, read_image(names[MASKED].path), atol=1e-6)
    jpeg = names["sars.jpg"]  # two JPEG decoders may differ by a grey level
    np.testing.assert_allclose(load_record(jpeg).image, read_image(jpeg.path), atol=2 / 255)
    # xrv does not resize the archived mask to a resized copy of the image: a mask size mismatch, named
    with pytest.raises(ItemReadError, match=rf"{MASKED_OTHER_SIZE}: lung mask is 157x173, image 64x64"):
        read_item(names[MASKED_OTHER_SIZE])


def test_real_covid19_dataset_through_the_data_config(covid_repo: Path, tmp_path: Path) -> None:
    overrides = [
        "data=xrv",
        f"data.dataset.imgpath={covid_repo / 'images'}",  # csvpath defaults to the repository's metadata.csv
        "data.image_size=64",
        "data.num_workers=0",
        "data.on_error=skip",
        "data.split_fractions={train: 0.6, val: 0.2, test: 0.2}",
    ]
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    check_options("xrv", OmegaConf.to_container(cfg.data.options), xrv_source.read)  # every key is an option
    assert OmegaConf.to_container(cfg.model, resolve=True)["classes"] == CLASSES
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    kept = sorted(Path(item.path).name for ds in dm.datasets.values() for item in ds.items)
    assert kept == sorted([MASKED, "p1-day3.png", "sars.jpg", "strep.png", "normal.png"])
    splits_of_p1 = {s for s, ds in dm.datasets.items() for item in ds.items if item.patient_id == "p1"}
    assert len(splits_of_p1) == 1  # both of p1's films in one split
    kinds = sorted(issue.kind for issue in dm.report.issues)
    assert kinds == ["label mapped to None", "mask size mismatch", "unknown label"]
    split = next(s for s in splits_of_p1)
    index = [Path(i.path).name for i in dm.datasets[split].items].index(MASKED)
    sample = dm.datasets[split][index]
    assert (
        bool(sample["has_lung_mask"])
        and sample["lung_mask"].sum() > 0
        and sample["image"].shape == (1, 64, 64)
    )


def test_the_data_check_instantiates_the_dataset_from_its_config(covid_repo: Path) -> None:
    from cxrnet.data.check import check

    overrides = ["data=xrv", f"data.dataset.imgpath={covid_repo / 'images'}", "data.image_size=64"]
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="check", overrides=overrides)
    report = check(cfg)  # data as plain data: the reader builds COVID19_Dataset from the mapping
    assert report.n_items == 5
    assert {issue.kind for issue in report.problems} >= {"mask size mismatch", "unknown label"}


# ---------------------------------------------------------------------------------- input conventions


def test_an_xrv_normalised_array_gives_the_model_the_same_input_as_its_pixels() -> None:
    pixels = natural(7, (50, 70))
    preprocessing = Preprocessing(image_size=64)
    normal_path = CXRDataset([RawItem(image=to_gray(pixels))], CLASSES, preprocessing)[0]["image"].numpy()
    np.testing.assert_array_equal(preprocessing.prepare(pixels), normal_path)  # prepare is that path
    as_xrv = xrv.datasets.normalize(pixels, maxval=255, reshape=True)  # 1 x H x W in [-1024, 1024]
    np.testing.assert_allclose(preprocessing.prepare(as_xrv, convention="xrv"), normal_path, atol=1e-5)
    np.testing.assert_allclose(
        preprocessing.prepare(torch.from_numpy(as_xrv), convention="xrv"), normal_path, atol=1e-5
    )


def test_to_xrv_and_from_xrv_are_xrvs_normalisation_and_its_inverse() -> None:
    pixels = natural(3, (20, 24))
    np.testing.assert_allclose(to_xrv(pixels), xrv.datasets.normalize(pixels, 255, reshape=True), atol=1e-3)
    np.testing.assert_allclose(from_xrv(to_xrv(pixels)), pixels / 255.0, atol=1e-6)
    assert (
        from_xrv(np.full((1, 4, 4), -1024.0)).max() == 0.0 and from_xrv(np.full((4, 4), 1024.0)).min() == 1.0
    )


def test_inputs_in_the_wrong_convention_are_refused_with_the_fix() -> None:
    unit = natural(1, (16, 16)) / 255.0
    with pytest.raises(ValueError, match=r"cxrnet's \[0, 1\] convention"):
        from_xrv(unit)
    with pytest.raises(ValueError, match="outside torchxrayvision's"):
        from_xrv(unit * 4096 - 2048)
    with pytest.raises(ValueError, match="floats in"):
        from_xrv(natural(1, (16, 16)))  # uint8 is cxrnet's convention
    with pytest.raises(ValueError, match=r"from_xrv\(x\)"):
        to_gray(xrv.datasets.normalize(natural(1, (16, 16)), 255))
    with pytest.raises(ValueError, match="cxrnet, xrv"):
        to_gray(unit, convention="dicom")  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_model_trains_on_a_real_xrv_dataset_and_its_checkpoint_records_it(
    covid_repo: Path, tmp_path: Path
) -> None:
    from cxrnet.checkpoint import read_checkpoint
    from cxrnet.train import train

    from conftest import TINY_MODEL, compose_train

    cfg = compose_train(
        ["data=xrv", f"data.dataset.imgpath={covid_repo / 'images'}", "data.image_size=64", "data.batch_size=2",
         "data.num_workers=0", "data.on_error=skip", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "logger=none", "allow_one_class=true", *TINY_MODEL],
        tmp_path / "run",
    )  # fmt: skip
    metrics = train(cfg)
    assert "test/cls/accuracy" in metrics
    training = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["cxrnet"]["training_data"]
    assert training["source"] == ["xrv"] and len(training["image_hashes"]) == training["n_items"] >= 1
