"""The quirks of real public collections, copied into tiny fixtures: readers survive them with the defaults.

Each fixture reproduces something found in the covid-chestxray-dataset (Cohen et al.): flat organism-name
findings, ``X, ARDS`` combinations, a JPEG that ends 26 bytes early, a UTF-8 byte-order mark before the CSV
header, blank views, and a split override that Hydra merges into the default.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrnet.data.findings import KIND_TRUNCATED
from cxrnet.data.images import ImageReadError, TruncatedImageWarning, read_image, read_image_noting
from cxrnet.data.items import read_item
from cxrnet.data.records import Record
from cxrnet.data.sources import cohen, taxonomy
from cxrnet.datamodule import CXRDataModule

from fixtures import COHEN_HEADER, gray, natural, save


@pytest.mark.parametrize(
    ("finding", "family"),
    [
        ("Mycoplasma Bacterial Pneumonia", "Bacterial"),
        ("Streptococcus", "Bacterial"),
        ("Haemophilus influenzae", "Bacterial"),  # "influenzae" is not influenza
        ("E.Coli", "Bacterial"),
        ("Pneumonia/Viral/Influenza/H1N1", "Viral"),
        ("Pneumonia/Viral/SARS-CoV-2", "COVID-19"),  # the specific beats the generic word before it
        ("Viral pneumonia (SARS-CoV-2)", "COVID-19"),
        ("Pneumonia/Fungal/Aspergillosis", "Fungal"),
        ("Pneumocystis", "Fungal"),
        ("Mycobacterium tuberculosis", "Tuberculosis"),
        ("Lipoid", None),
        ("todo", None),
    ],
)
def test_taxonomy_maps_pathogen_words_to_their_family(finding: str, family: str | None) -> None:
    assert taxonomy.family(finding) == family


def make_real_cohen(root: Path) -> Path:
    """A Cohen metadata table as the 2020 releases wrote it: BOM before the header, flat organism names."""
    rows = [
        ("1", "COVID-19", "PA", "covid.jpg"),
        ("2", "COVID-19, ARDS", "AP Supine", "covid-ards.jpg"),
        ("3", "Mycoplasma Bacterial Pneumonia", "PA", "myco.jpg"),
        ("4", "Klebsiella", "AP", "kleb.jpg"),
        ("5", "Haemophilus influenzae", "PA", "haemo.jpg"),  # not in any label map: mapped by taxonomy
        ("6", "Pneumonia/Fungal/Aspergillosis", "PA", "asp.jpg"),  # dropped on purpose (fungal)
        ("7", "SARS", "PA", "sars.jpg"),
        ("8", "No Finding", "PA", "normal.jpg"),
        ("9", "Sarcoidosis", "PA", "sarcoid-a.jpg"),  # names no pathogen and is in no map: unknown
        ("9", "Sarcoidosis", "PA", "sarcoid-b.jpg"),
        ("10", "COVID-19", "", "blank-view.jpg"),
        ("11", "COVID-19", "", "blank-view-2.jpg"),
        ("12", "COVID-19", "L", "lateral.jpg"),
        ("13", "todo", "PA", "todo.jpg"),
    ]
    lines = [COHEN_HEADER]
    for seed, (patient, finding, view, filename) in enumerate(rows):
        lines.append(f'{patient},0,M,50,"{finding}",Y,,{view},X-ray,2020,,images,{filename},,,,,,\n')
        save(root / "images" / filename, gray(seed), quality=90)
    (root / "metadata.csv").write_text("\ufeff" + "".join(lines), encoding="utf-8")
    return root


def test_cohen_organism_names_map_by_taxonomy_and_unknowns_are_counted(tmp_path: Path) -> None:
    result = cohen.read(make_real_cohen(tmp_path), on_unknown_label="exclude")
    assert {Path(r.path).name: r.label for r in result} == {
        "covid.jpg": "covid19",
        "covid-ards.jpg": "covid19",
        "myco.jpg": "bacterial",
        "kleb.jpg": "bacterial",
        "haemo.jpg": "bacterial",
        "sars.jpg": "viral",
        "normal.jpg": "normal",
    }
    assert result[0].patient_id == "1"  # the BOM did not glue itself to the first column name
    assert result.excluded_counts() == {"unknown label": 2, "view not kept": 3, "label mapped to None": 2}
    assert sorted(e.detail for e in result.excluded if e.reason == "view not kept") == [
        "(blank)",
        "(blank)",
        "L",
    ]
    assert any("'Haemophilus influenzae' mapped to bacterial through 'Bacterial'" in n for n in result.notes)
    with pytest.raises(ValueError, match=r"unknown label 'Sarcoidosis' for .*sarcoid-a\.jpg"):
        cohen.read(tmp_path, on_unknown_label="error")


def test_datamodule_defaults_never_stop_at_a_finding_and_summarise_them(tmp_path: Path) -> None:
    make_real_cohen(tmp_path)
    dm = CXRDataModule(name="cohen", root=str(tmp_path), image_size=32, batch_size=2, augment="none")
    dm.setup("fit")  # the default on_unknown_label is "exclude": no exception
    summary = dm.report.summary()
    assert "unknown label: 'Sarcoidosis' 2" in summary
    assert "view not kept: '(blank)' 2, 'L' 1" in summary
    assert "label mapped to None: 'Pneumonia/Fungal/Aspergillosis' 1, 'todo' 1" in summary
    assert sum(len(d) for d in dm.datasets.values()) == 7


def truncated_jpeg(path: Path, cut: int | float) -> Path:
    """A real-looking JPEG with its last ``cut`` bytes (an int) or share of bytes (a float) removed."""
    buffer = io.BytesIO()
    Image.fromarray(natural(3, (256, 320))).save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    keep = len(data) - cut if isinstance(cut, int) else int(len(data) * (1 - cut))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:keep])
    return path


def test_a_jpeg_that_ends_26_bytes_early_is_read_with_a_warning(tmp_path: Path) -> None:
    path = truncated_jpeg(tmp_path / "short.jpeg", 26)
    with Image.open(path) as im, pytest.raises(OSError, match="truncated"):
        im.load()  # what stopped training: Pillow refuses it
    with pytest.warns(TruncatedImageWarning, match=r"short\.jpeg: file ends early"):
        image = read_image(path)
    assert image.shape == (256, 320) and image.dtype == np.float32
    whole = np.asarray(Image.fromarray(natural(3, (256, 320)))) / 255.0
    assert np.abs(image - whole).mean() < 0.02  # the picture is all there, not a grey lower half
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scan's variant reports instead of warning
        _, notes = read_image_noting(path)
    assert notes and "rows missing" in notes[0]


def test_a_jpeg_cut_in_half_is_refused_naming_the_missing_rows(tmp_path: Path) -> None:
    path = truncated_jpeg(tmp_path / "half.jpg", 0.5)
    with pytest.raises(
        ImageReadError, match=r"half\.jpg: truncated image: .*bottom \d+ of 256 rows are missing"
    ):
        read_image(path)


def test_the_data_report_lists_a_truncated_file_as_a_warning_and_keeps_it(tmp_path: Path) -> None:
    path = truncated_jpeg(tmp_path / "short.jpeg", 26)
    item = read_item(Record(str(path), "p", "test", label="covid19"))
    assert [(i.kind, i.problem) for i in item.info.issues] == [(KIND_TRUNCATED, False)]

    root = make_real_cohen(tmp_path / "cohen")
    truncated_jpeg(root / "images" / "covid.jpg", 26)
    dm = CXRDataModule(name="cohen", root=str(root), image_size=32, batch_size=2, augment="none")
    dm.setup("fit")  # on_error=error (the default) and nothing stops
    kinds = {(i.kind, Path(i.path).name) for i in dm.report.warnings}
    assert (KIND_TRUNCATED, "covid.jpg") in kinds
    assert any(Path(i.path).name == "covid.jpg" for split in dm.datasets.values() for i in split.items)


def test_a_split_override_that_hydra_merges_badly_fails_before_any_file_is_read(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    missing = tmp_path / "not-there"  # nothing on disk: the check must come first
    overrides = ["data=cohen", f"data.root={missing}", "data.split_fractions={train:0.85,val:0.15}"]
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    assert dict(cfg.data.split_fractions) == {"train": 0.85, "val": 0.15, "test": 0.15}  # what Hydra makes
    with pytest.raises(
        InstantiationException, match=r"split_fractions=\{train:0.85,val:0.15,test:0.15\} sums"
    ):
        instantiate(cfg.data, _convert_="all")
    with pytest.raises(ValueError, match=r"unknown splits \['tset'\]"):
        CXRDataModule(name="cohen", root=str(missing), split_fractions={"train": 0.8, "tset": 0.2})
    with pytest.raises(ValueError, match=r"unknown keys \['view'\]; valid: brixia_file, lung_masks"):
        CXRDataModule(name="cohen", root=str(missing), options={"view": ["PA"]})
    with pytest.raises(ValueError, match=r"unknown keys \['n_trian'\]"):
        CXRDataModule(name="synthetic", options={"n_trian": 8})
    with pytest.raises(ValueError, match=r"data\.fold=3 must be an integer in 0\.\.2"):
        CXRDataModule(name="cohen", root=str(missing), folds=3, fold=3)
