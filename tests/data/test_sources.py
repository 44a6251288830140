"""Every dataset reader on a tiny copy of its exact native layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrnet.data.items import load_record
from cxrnet.data.masks import mask_problems
from cxrnet.data.records import Record
from cxrnet.data.sources import (
    SOURCES,
    SourceResult,
    cohen,
    covid_qu_ex,
    covidx,
    folder,
    get_source,
    montgomery,
    qata,
    read_source,
    shenzhen,
)

from fixtures import (
    COHEN_LUNG_BOX,
    LEFT_BOX,
    MANIFEST_INFECTION_BOX,
    QATA_COVID_BOX,
    QUEX_INFECTION_BOX,
    RIGHT_BOX,
    SHAPE,
    box_mask,
    make_cohen,
    make_covid_qu_ex,
    make_covidx,
    make_folder_tree,
    make_manifest,
    make_montgomery,
    make_qata,
    make_shenzhen,
)


def by_name(result: SourceResult) -> dict[str, Record]:
    return {Path(r.path).name: r for r in result}


def box(rows: slice, cols: slice) -> np.ndarray:
    return box_mask(rows, cols) > 0


# ----------------------------------------------------------------------------------------- registry


def test_registry_names_every_reader_and_rejects_unknown_names() -> None:
    assert set(SOURCES) == {
        "covidx",
        "qata",
        "covid_qu_ex",
        "cohen",
        "montgomery",
        "shenzhen",
        "folder",
        "xrv",
    }
    assert get_source("qata") is qata.read
    with pytest.raises(ValueError, match="valid names: cohen, covid_qu_ex, covidx, folder"):
        get_source("chexpert")


# ------------------------------------------------------------------------------------------- covidx


def test_covidx_reads_official_splits_and_reports_missing_files(tmp_path: Path) -> None:
    result = read_source("covidx", make_covidx(tmp_path))
    records = by_name(result)
    assert len(result) == 6 and result.label_counts() == {"covid19": 3, "normal": 2, "pneumonia": 1}
    assert [r.split for r in result].count("train") == 4
    assert records["a1.png"].patient_id == records["a2.png"].patient_id == "p1"
    assert records["b1.png"].meta["origin"] == "rsna"  # "rnsa" normalised
    assert records["d1.png"].meta["origin"] == "" and records["d1.png"].split == "test"
    assert records["a1.png"].raw_label == "COVID-19"
    assert [(Path(e.path).name, e.reason) for e in result.excluded] == [("gone.png", "missing file")]
    with pytest.raises(FileNotFoundError, match=r"train\.txt line 5 names .*gone\.png"):
        covidx.read(tmp_path, on_missing="error")


def test_covidx_finds_versioned_label_files_and_custom_maps(tmp_path: Path) -> None:
    make_covidx(tmp_path, label_files=("train_COVIDx9A.txt", "test_COVIDx9A.txt"))
    result = covidx.read(
        tmp_path, label_map={"COVID-19": "positive", "normal": "negative", "pneumonia": None}
    )
    assert result.label_counts() == {"negative": 2, "positive": 3}
    assert result.excluded_counts() == {"missing file": 1, "label mapped to None": 1}


def test_covidx_unknown_label_names_label_and_file(tmp_path: Path) -> None:
    make_covidx(tmp_path)
    with pytest.raises(ValueError, match=r"unknown label 'pneumonia' for .*c1\.jpg"):
        covidx.read(tmp_path, label_map={"COVID-19": "covid19", "normal": "normal"})
    result = covidx.read(
        tmp_path, label_map={"COVID-19": "covid19", "normal": "normal"}, on_unknown_label="exclude"
    )
    assert len(result) == 5 and result.excluded_counts()["unknown label"] == 1


# --------------------------------------------------------------------------------------------- qata


def test_qata_masks_controls_and_splits(tmp_path: Path) -> None:
    result = qata.read(make_qata(tmp_path))
    records = by_name(result)
    assert len(result) == 7 and result.label_counts() == {"covid19": 4, "normal": 3}
    assert [r.split for r in result].count("test") == 2
    assert records["covid_1.png"].infection_mask.endswith("Train Set/Ground-truths/mask_covid_1.png")
    assert (
        records["covid_3.png"].infection_mask is None
        and not records["covid_3.png"].meta["infection_mask_empty"]
    )
    assert any("1 COVID-19 images have no mask" in note for note in result.notes)

    item = load_record(records["covid_1.png"])
    np.testing.assert_array_equal(item.infection_mask, box(*QATA_COVID_BOX))
    control = load_record(records["sub-S09_ses-E1_run-1_bp-chest_cr.png"])
    assert control.infection_mask is not None and not control.infection_mask.any()
    assert load_record(records["covid_3.png"]).infection_mask is None
    assert records["Normal (1).png"].infection_mask is not None  # a control's own mask file is used


# -------------------------------------------------------------------------------------- covid_qu_ex


def test_covid_qu_ex_both_parts_with_spaces_in_folder_names(tmp_path: Path) -> None:
    result = covid_qu_ex.read(make_covid_qu_ex(tmp_path / "wrapper"), part="both")
    assert len(result) == 14
    assert result.label_counts() == {"covid19": 4, "non_covid": 5, "normal": 5}
    assert sorted({r.split for r in result}) == ["test", "train", "val"]
    assert any("1 Lung-part images also appear" in note for note in result.notes)
    infection = [r for r in result if r.meta["part"] == "infection"]
    assert len(infection) == 6 and all(r.infection_mask and r.lung_mask for r in infection)
    assert all(r.infection_mask is None for r in result if r.meta["part"] == "lung")

    covid = next(r for r in infection if r.label == "covid19")
    item = load_record(covid)
    np.testing.assert_array_equal(item.infection_mask, box(*QUEX_INFECTION_BOX))
    assert item.lung_mask.sum() == 17 * 20
    normal = load_record(next(r for r in infection if r.label == "normal"))
    assert not normal.infection_mask.any()


def test_covid_qu_ex_single_part_and_wrapper_folder(tmp_path: Path) -> None:
    make_covid_qu_ex(tmp_path / "download" / "COVID-QU-Ex", parts=("infection",))
    assert len(covid_qu_ex.read(tmp_path, part="infection")) == 6
    assert len(covid_qu_ex.read(tmp_path)) == 6  # "both" tolerates a missing part
    with pytest.raises(FileNotFoundError, match="Lung Segmentation Data"):
        covid_qu_ex.read(tmp_path, part="lung")
    with pytest.raises(ValueError, match="part='lungs' is not valid"):
        covid_qu_ex.read(tmp_path, part="lungs")


def test_covid_qu_ex_label_map_is_configurable(tmp_path: Path) -> None:
    make_covid_qu_ex(tmp_path, parts=("infection",))
    with pytest.raises(ValueError, match=r"unknown label 'Non-COVID' for .*non_COVID \(1\)\.png"):
        covid_qu_ex.read(tmp_path, label_map={"COVID-19": "covid19", "Normal": "normal"})
    result = covid_qu_ex.read(
        tmp_path, label_map={"COVID-19": "covid19", "Non-COVID": "pneumonia", "Normal": "normal"}
    )
    assert result.label_counts() == {"covid19": 2, "normal": 2, "pneumonia": 2}


# -------------------------------------------------------------------------------------------- cohen


def test_cohen_keeps_frontal_xrays_and_counts_the_rest(tmp_path: Path) -> None:
    result = cohen.read(make_cohen(tmp_path), brixia_file="brixia.csv")
    records = by_name(result)
    assert sorted(records) == ["covid-a.jpg", "covid-b.png", "flat.png", "normal.png", "strep.png"]
    assert result.label_counts() == {"bacterial": 1, "covid19": 3, "normal": 1}
    assert result.excluded_counts() == {
        "view not kept": 2,
        "modality not kept": 1,
        "missing file": 1,
        "label mapped to None": 1,
    }
    assert {e.detail for e in result.excluded if e.reason == "view not kept"} == {"L", "(blank)"}
    assert records["covid-a.jpg"].patient_id == records["covid-b.png"].patient_id == "1"
    assert records["flat.png"].raw_label == "COVID-19, ARDS"
    assert records["covid-a.jpg"].meta["view"] == "PA"


def test_cohen_severity_brixia_and_lung_masks(tmp_path: Path) -> None:
    result = cohen.read(make_cohen(tmp_path), brixia_file=tmp_path / "brixia.csv")
    records = by_name(result)
    a = records["covid-a.jpg"]
    assert a.severity == {"geographic_extent": 6.0, "opacity": 4.0, "brixia": 8.0}
    assert a.meta["brixia_raters"] == {"S": 9.0, "J": 7.0}
    assert a.meta["brixia_zones"]["C"] == 2.5
    assert records["strep.png"].severity == {"geographic_extent": 0.3, "opacity": 0.3}
    assert a.meta["lung_mask_origin"] == "v7labs" and a.lung_mask[0].endswith("v7labs-lung-masks/covid-a.jpg")
    b = records["covid-b.png"]
    assert b.meta["lung_mask_origin"] == "lungVAE" and b.lung_mask[0].endswith("covid-b_mask.png")
    assert records["normal.png"].lung_mask == () and records["normal.png"].meta["lung_mask_origin"] == ""

    # the hand-drawn mask is a JPEG: thresholded on load, flagged for the data check
    assert np.mean(load_record(a).lung_mask == box(*COHEN_LUNG_BOX)) > 0.95
    assert "distinct values" in " ".join(mask_problems(a.lung_mask[0], SHAPE))
    np.testing.assert_array_equal(load_record(b).lung_mask, box(*COHEN_LUNG_BOX))
    assert cohen.read(tmp_path, lung_masks=("lungVAE",))[0].lung_mask == ()


def test_cohen_unknown_finding_and_options(tmp_path: Path) -> None:
    make_cohen(tmp_path, unknown_finding=True)
    with pytest.raises(ValueError, match=r"unknown label 'Sarcoidosis' for .*sarcoid\.png"):
        cohen.read(tmp_path)
    result = cohen.read(tmp_path, on_unknown_label="exclude", views=("PA", "AP", "L"))
    assert result.excluded_counts()["unknown label"] == 1
    assert "covid-lateral.png" in by_name(result)
    with pytest.raises(FileNotFoundError, match=r"line 10 names .*never-downloaded"):
        cohen.read(tmp_path, on_unknown_label="exclude", on_missing="error")


def test_cohen_older_flat_release(tmp_path: Path) -> None:
    make_cohen(tmp_path)
    # the first releases: capitalised "Patientid", no modality or folder column, CT written as a view
    (tmp_path / "metadata.csv").write_text(
        "Patientid,offset,sex,age,finding,survival,view,date,location,filename,doi, url,license,notes\n"
        "1,,,,COVID-19,,PA,2020,,covid-a.jpg,,,,\n"
        "2,,,,Streptococcus,,AP,2020,,strep.png,,,,\n"
        "3,,,,SARS,,CT,2020,,flat.png,,,,\n"
    )
    result = cohen.read(tmp_path)
    assert result.label_counts() == {"bacterial": 1, "covid19": 1}
    assert result.excluded_counts() == {"modality not kept": 1}


# -------------------------------------------------------------------------------- montgomery, shenzhen


def test_montgomery_labels_and_union_of_left_and_right_masks(tmp_path: Path) -> None:
    result = montgomery.read(make_montgomery(tmp_path))
    records = by_name(result)
    assert result.label_counts() == {"normal": 1, "tuberculosis": 2}
    first = records["MCUCXR_0001_0.png"]
    assert first.patient_id == "MCUCXR_0001" and first.raw_label == "0"
    assert [Path(p).parent.name for p in first.lung_mask] == ["leftMask", "rightMask"]
    np.testing.assert_array_equal(load_record(first).lung_mask, box(*LEFT_BOX) | box(*RIGHT_BOX))
    assert records["MCUCXR_0003_1.png"].lung_mask == ()
    assert any("only one of the two lung masks" in note for note in result.notes)


def test_shenzhen_masks_where_present(tmp_path: Path) -> None:
    result = shenzhen.read(make_shenzhen(tmp_path))
    records = by_name(result)
    assert result.label_counts() == {"normal": 1, "tuberculosis": 2}
    np.testing.assert_array_equal(load_record(records["CHNCXR_0002_1.png"]).lung_mask, box(*LEFT_BOX))
    assert records["CHNCXR_0003_1.png"].lung_mask == ()
    assert any("1 images have no lung mask" in note for note in result.notes)


def test_tb_suffix_without_mapping_is_an_error(tmp_path: Path) -> None:
    make_shenzhen(tmp_path)
    (tmp_path / "CXR_png" / "CHNCXR_0002_1.png").rename(tmp_path / "CXR_png" / "CHNCXR_0002_x.png")
    with pytest.raises(ValueError, match=r"unknown label 'x' for .*CHNCXR_0002_x\.png"):
        shenzhen.read(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected layout"):
        montgomery.read(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------- folder


def test_folder_tree_with_split_folders(tmp_path: Path) -> None:
    result = folder.read(make_folder_tree(tmp_path / "data"))
    assert result.label_counts() == {"covid19": 4, "non_covid": 5}
    assert sorted(r.split for r in result).count("test") == 3
    assert [(Path(e.path).name, e.reason) for e in result.excluded] == [
        ("stray.png", "outside class folders")
    ]
    assert any("nested" in r.path for r in result)


def test_folder_tree_without_split_folders(tmp_path: Path) -> None:
    make_folder_tree(tmp_path, splits=False)
    result = folder.read(tmp_path)
    assert len(result) == 9 and {r.split for r in result} == {None}
    with pytest.raises(ValueError, match=r"unknown label 'non'"):
        folder.read(tmp_path, label_map={"covid": "covid19"})


def test_folder_manifest_reads_masks_scores_and_reports_missing_rows(tmp_path: Path) -> None:
    make_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"manifest\.csv row 6 \(path\) names .*missing\.png"):
        folder.read(tmp_path)
    result = folder.read(tmp_path, on_missing="exclude")
    records = by_name(result)
    assert len(result) == 4 and [e.detail for e in result.excluded] == ["manifest.csv row 6 (path)"]
    x0 = records["x0.png"]
    assert x0.label == "covid19" and x0.patient_id == "P1" and x0.split == "train"
    assert x0.severity == {"brixia": 7.5} and x0.meta == {"site": "A"}
    item = load_record(x0)
    np.testing.assert_array_equal(item.lung_mask, box(*LEFT_BOX) | box(*RIGHT_BOX))
    np.testing.assert_array_equal(item.infection_mask, box(*MANIFEST_INFECTION_BOX))
    assert records["x2.png"].label is None and records["x2.png"].split == "val"
    assert records["x3.png"].patient_id == "x3" and records["x3.png"].severity == {"brixia": 3.0}


def test_folder_manifest_options(tmp_path: Path) -> None:
    make_manifest(tmp_path)
    (tmp_path / "manifest.csv").rename(tmp_path / "list.csv")
    result = folder.read(tmp_path / "list.csv", on_missing="exclude", severity_columns=())
    assert len(result) == 4 and all(r.severity == {} for r in result)
    with pytest.raises(ValueError, match="severity columns"):
        folder.read(tmp_path, manifest="list.csv", on_missing="exclude", severity_columns=("opacity",))
