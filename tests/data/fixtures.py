"""Builders of tiny datasets in each reader's exact native layout, written under a test's ``tmp_path``.

Images are 20x24 (H x W, deliberately not square) so that a swapped axis shows. Every builder returns the
dataset root; the docstrings list what each fixture contains so tests can state expected counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (20, 24)  # H, W


def gray(seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A distinct uint8 image per seed (a gradient plus noise)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, shape[1])[None, :] + rng.integers(0, 50, shape)
    return ramp.astype(np.uint8)


def natural(seed: int, shape: tuple[int, int] = (120, 144)) -> np.ndarray:
    """A uint8 1/f-noise image per seed: its spectrum falls off like a radiograph's (and any natural image's)."""
    noise = np.fft.fft2(np.random.default_rng(seed).standard_normal(shape))
    radius = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :])
    radius[0, 0] = 1.0
    image = np.real(np.fft.ifft2(noise / radius))
    return np.round(255 * (image - image.min()) / (image.max() - image.min())).astype(np.uint8)


def box_mask(rows: slice, cols: slice, shape: tuple[int, int] = SHAPE, on: int = 255) -> np.ndarray:
    """A uint8 mask that is ``on`` inside the box and 0 elsewhere."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[rows, cols] = on
    return mask


def save(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    """Write ``array`` with Pillow (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    voi_lut: list[int] | None = None,
    frames: int = 1,
) -> Path:
    """Write a minimal uncompressed 16-bit DICOM (``pixels``: uint16 HxW, repeated ``frames`` times).

    ``voi_lut`` is an 8-bit VOI LUT whose first entry maps stored value 0.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "P1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if voi_lut is not None:
        lut = Dataset()
        lut.LUTDescriptor = [len(voi_lut), 0, 8]
        lut.add_new(0x00283006, "US", voi_lut)  # LUTData
        ds.VOILUTSequence = [lut]
    ds.PixelData = np.ascontiguousarray(np.stack([pixels] * frames), dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


# --------------------------------------------------------------------------------------- covidx


def make_covidx(root: Path, *, label_files: tuple[str, str] = ("train.txt", "test.txt")) -> Path:
    """COVIDx: train has 5 lines (patient p1 on two, one ``rnsa`` source, one missing file); test has 2 lines
    in the old three-field format.

    Expected with the defaults: 6 records (train 4, test 2), 1 excluded missing file.
    """
    train = [
        ("p1", "a1.png", "COVID-19", "cohen"),
        ("p1", "a2.png", "COVID-19", "cohen"),
        ("p2", "b1.png", "normal", "rnsa"),
        ("p3", "c1.jpg", "pneumonia", "rsna"),
        ("p4", "gone.png", "normal", "rsna"),  # file absent
    ]
    for i, (_, name, _, _) in enumerate(train[:4]):
        save(root / "train" / name, gray(i))
    (root / label_files[0]).write_text("".join(" ".join(fields) + "\n" for fields in train))
    save(root / "test" / "d1.png", gray(10))
    save(root / "test" / "e1.png", gray(11))
    (root / label_files[1]).write_text("p5 d1.png normal\n\np6 e1.png COVID-19\n")
    return root


# ----------------------------------------------------------------------------------------- qata


QATA_COVID_BOX = (slice(4, 10), slice(6, 12))


def make_qata(root: Path) -> Path:
    """QaTa-COV19-v2: Train Set has covid_1 and covid_2 with masks, covid_3 without, and two controls (one
    with an all-zero mask file, one without); Test Set has covid_4 with a mask and one control.

    Expected: 7 records (5 train, 2 test); covid19 4, normal 3; masks 0/255, covid_1's box at
    ``QATA_COVID_BOX``.
    """
    train, test = root / "Train Set", root / "Test Set"
    for split, name, seed in [(train, "covid_1.png", 1), (train, "covid_2.png", 2), (test, "covid_4.png", 4)]:
        save(split / "Images" / name, gray(seed))
        save(split / "Ground-truths" / f"mask_{name}", box_mask(*QATA_COVID_BOX))
    save(train / "Images" / "covid_3.png", gray(3))
    save(train / "Images" / "sub-S09_ses-E1_run-1_bp-chest_cr.png", gray(5))
    save(train / "Images" / "Normal (1).png", gray(6))
    save(train / "Ground-truths" / "mask_Normal (1).png", np.zeros(SHAPE, np.uint8))
    save(test / "Images" / "sub-S10_ses-E2_run-1_bp-chest_cr.png", gray(7))
    return root


# ---------------------------------------------------------------------------------- covid_qu_ex


QUEX_INFECTION_BOX = (slice(2, 8), slice(3, 9))
QUEX_LUNG_BOX = (slice(1, 18), slice(2, 22))


def make_covid_qu_ex(root: Path, *, parts: tuple[str, ...] = ("infection", "lung")) -> Path:
    """COVID-QU-Ex: the Infection part has one image per class in Train and Test (6); the Lung part has one
    image per class in Train, Val and Test (9), of which ``covid_1.png`` in Train/COVID-19 also exists in
    the Infection part.

    Expected with both parts: 14 records (the shared image kept once); infection masks only on the
    Infection part, with ``QUEX_INFECTION_BOX`` set for COVID-19 and all zero otherwise.
    """
    classes = {"COVID-19": "covid_{}.png", "Non-COVID": "non_COVID ({}).png", "Normal": "Normal ({}).png"}
    seed = 0
    if "infection" in parts:
        base = root / "Infection Segmentation Data"
        for number, split in enumerate(("Train", "Test"), start=1):
            for cls, pattern in classes.items():
                folder, name, seed = base / split / cls, pattern.format(number), seed + 1
                save(folder / "images" / name, gray(seed))
                save(folder / "lung masks" / name, box_mask(*QUEX_LUNG_BOX))
                infection = box_mask(*QUEX_INFECTION_BOX) if cls == "COVID-19" else np.zeros(SHAPE, np.uint8)
                save(folder / "infection masks" / name, infection)
    if "lung" in parts:
        base = root / "Lung Segmentation Data"
        for number, split in enumerate(("Train", "Val", "Test"), start=1):
            for cls, pattern in classes.items():
                shared = split == "Train" and cls == "COVID-19"  # the one image in both parts
                folder, name, seed = (
                    base / split / cls,
                    pattern.format(1 if shared else 10 + number),
                    seed + 1,
                )
                save(folder / "images" / name, gray(seed))
                save(folder / "lung masks" / name, box_mask(*QUEX_LUNG_BOX))
    return root


# ---------------------------------------------------------------------------------------- cohen


COHEN_HEADER = (
    "patientid,offset,sex,age,finding,RT_PCR_positive,survival,view,modality,date,location,folder,"
    "filename,doi,url,license,clinical_notes,other_notes,\n"
)
COHEN_LUNG_BOX = (slice(3, 16), slice(2, 20))


def make_cohen(root: Path, *, unknown_finding: bool = False) -> Path:
    """covid-chestxray-dataset with 10 metadata rows:

    kept (5): 1 ``Pneumonia/Viral/COVID-19`` PA (v7labs mask, .jpg, severity + Brixia), 1 again (AP Supine,
    lungVAE mask), 2 ``COVID-19, ARDS`` AP semi erect, 3 ``Pneumonia/Bacterial/Streptococcus`` AP,
    4 ``No Finding`` PA; excluded (5): lateral, CT, missing file, blank view, ``todo`` (label mapped to None).
    With ``unknown_finding`` an 11th, PA row has finding ``Sarcoidosis``.
    """
    rows = [
        ("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "covid-a.jpg"),
        ("1", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", "covid-b.png"),
        ("1", "Pneumonia/Viral/COVID-19", "L", "X-ray", "covid-lateral.png"),
        ("2", "COVID-19, ARDS", "AP semi erect", "X-ray", "flat.png"),
        ("2", "Pneumonia/Viral/COVID-19", "Axial", "CT", "ct-slice.png"),
        ("3", "Pneumonia/Bacterial/Streptococcus", "AP", "X-ray", "strep.png"),
        ("4", "No Finding", "PA", "X-ray", "normal.png"),
        ("5", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "never-downloaded.png"),
        ("6", "Pneumonia/Viral/COVID-19", "", "X-ray", "no-view.png"),
        ("7", "todo", "PA", "X-ray", "todo.png"),
    ]
    if unknown_finding:
        rows.append(("8", "Sarcoidosis", "PA", "X-ray", "sarcoid.png"))
    lines = [COHEN_HEADER]
    for seed, (patient, finding, view, modality, filename) in enumerate(rows):
        note = '"multi-line, quoted\nclinical note"' if seed == 0 else ""
        lines.append(
            f'{patient},0,M,50,"{finding}",Y,,{view},{modality},2020,,images,{filename},,,,{note},,\n'
        )
        if filename != "never-downloaded.png":
            save(root / "images" / filename, gray(seed))
    (root / "metadata.csv").write_text("".join(lines))
    annotations = root / "annotations"
    save(annotations / "v7labs-lung-masks" / "covid-a.jpg", box_mask(*COHEN_LUNG_BOX), quality=90)
    save(annotations / "lungVAE-masks" / "covid-b_mask.png", box_mask(*COHEN_LUNG_BOX))
    (annotations / "covid-severity-scores.csv").write_text(
        "## COVID-19 Pneumonia Severity Scores (Mean of 3 expert raters)\n"
        "## License: CC BY-SA\n"
        "filename,geographic_mean,opacity_mean\n"
        "covid-a.jpg,6.0,4.0\n"
        "strep.png,0.3,0.3\n"
    )
    (root / "brixia.csv").write_text(
        "Filename,S-A,S-B,S-C,S-D,S-E,S-F,S-Global,J-A,J-B,J-C,J-D,J-E,J-F,J-Global\n"
        "covid-a.jpg,1,2,3,0,1,2,9,1,2,2,0,1,1,7\n"
    )
    return root


# ------------------------------------------------------------------------- montgomery, shenzhen


LEFT_BOX, RIGHT_BOX = (slice(3, 17), slice(14, 22)), (slice(3, 17), slice(2, 10))


def make_montgomery(root: Path) -> Path:
    """Montgomery: MCUCXR_0001_0 and MCUCXR_0002_1 with both masks, MCUCXR_0003_1 with the left mask only.

    Expected: 3 records (normal 1, tuberculosis 2); union mask = ``LEFT_BOX`` | ``RIGHT_BOX`` for the first two.
    """
    for seed, name in enumerate(("MCUCXR_0001_0.png", "MCUCXR_0002_1.png", "MCUCXR_0003_1.png")):
        save(root / "CXR_png" / name, gray(seed))
        save(root / "ManualMask" / "leftMask" / name, box_mask(*LEFT_BOX))
        if seed < 2:
            save(root / "ManualMask" / "rightMask" / name, box_mask(*RIGHT_BOX))
    return root


def make_shenzhen(root: Path) -> Path:
    """Shenzhen: CHNCXR_0001_0 and CHNCXR_0002_1 with masks (``LEFT_BOX``), CHNCXR_0003_1 without.

    Expected: 3 records (normal 1, tuberculosis 2), 1 without a lung mask.
    """
    for seed, stem in enumerate(("CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0003_1")):
        save(root / "CXR_png" / f"{stem}.png", gray(seed))
        if seed < 2:
            save(root / "mask" / f"{stem}_mask.png", box_mask(*LEFT_BOX))
    return root


# --------------------------------------------------------------------------------------- folder


def make_folder_tree(root: Path, *, splits: bool = True) -> Path:
    """Deep-COVID style tree: ``[train|test]/{covid,non}/`` with 3 + 3 train and 1 + 2 test images (one in a
    nested sub-folder), plus one stray image outside the class folders.

    Expected: 9 records (covid19 4, non_covid 5), 1 excluded.
    """
    counts = {("train", "covid"): 3, ("train", "non"): 3, ("test", "covid"): 1, ("test", "non"): 2}
    seed = 0
    for (split, cls), count in counts.items():
        base = root / split if splits else root
        for i in range(count):
            seed += 1
            sub = "nested" if i == 2 else ""
            save(base / cls / sub / f"{split}_{cls}_{i}.jpg", gray(seed))
    save((root / "train" if splits else root) / "stray.png", gray(99))
    return root


MANIFEST_INFECTION_BOX = (slice(5, 9), slice(5, 15))


def make_manifest(root: Path) -> Path:
    """CSV manifest with 5 rows: relative and absolute paths, two lung-mask files for one image, an infection
    mask, a ``brixia`` column, an extra ``site`` column, an unlabelled row, and one row naming a missing image.

    Expected: 4 records with ``on_missing="exclude"``; 1 excluded (row 6).
    """
    images = root / "imgs"
    for i in range(4):
        save(images / f"x{i}.png", gray(i))
    save(root / "masks" / "x0_left.png", box_mask(*LEFT_BOX))
    save(root / "masks" / "x0_right.png", box_mask(*RIGHT_BOX))
    save(root / "masks" / "x0_inf.png", box_mask(*MANIFEST_INFECTION_BOX))
    absolute = (images / "x3.png").absolute()
    (root / "manifest.csv").write_text(
        "path,label,patient_id,split,lung_mask,infection_mask,brixia,site\n"
        "imgs/x0.png,covid,P1,train,masks/x0_left.png;masks/x0_right.png,masks/x0_inf.png,7.5,A\n"
        "imgs/x1.png,normal,P1,train,,,,A\n"
        "imgs/x2.png,,P2,Validation,,,,B\n"
        f"{absolute},normal,,test,,,3,B\n"
        "imgs/missing.png,normal,P4,test,,,,C\n"
    )
    return root
