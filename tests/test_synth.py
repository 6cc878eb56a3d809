"""medvit.dicom.synth and `medvit synth`: RSNA-like synthetic mammograms read back with pydicom."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1

from medvit.cli import main
from medvit.dicom import synth
from medvit.errors import ConfigError

PATIENTS, SEED, RATE = 4, 3, 0.5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.write_dataset(out, patients=PATIENTS, seed=SEED, cancer_rate=RATE, workers=1)
    return out


@pytest.fixture(scope="module")
def table(data) -> pd.DataFrame:
    return pd.read_csv(data / "train.csv")


@pytest.fixture(scope="module")
def files(data, table) -> dict[int, pydicom.Dataset]:
    return {int(r.image_id): pydicom.dcmread(data / "train_images" / str(r.patient_id) / f"{r.image_id}.dcm")
            for r in table.itertuples()}


def display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels as float with tissue bright, whatever the photometric interpretation."""
    arr = ds.pixel_array.astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = (2**ds.BitsStored - 1) - arr
    return arr


def breast_mask(img: np.ndarray) -> np.ndarray:
    """Tissue vs air by Otsu on the display image (the marker is a few pixels, ignored)."""
    u8 = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    _, m = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m)
    return labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])


def test_csv_columns_and_rows(data, table):
    assert list(table.columns) == list(synth.CSV_COLUMNS)
    assert table["patient_id"].dtype.kind == "i" and table["image_id"].dtype.kind == "i"
    assert table["image_id"].is_unique
    assert table["patient_id"].nunique() == PATIENTS
    for _, group in table.groupby("patient_id"):
        assert sorted(zip(group.laterality, group.view)) == sorted(synth.VIEWS)
        assert group["machine_id"].nunique() == 1 and group["age"].nunique() == 1
    assert set(table["site_id"]) <= {1, 2}
    assert set(table["density"].dropna()) <= set("ABCD")
    assert set(table["BIRADS"].dropna()) <= {0, 1, 2}
    assert table.loc[table.site_id == 2, ["density", "BIRADS"]].isna().all().all()
    assert set(table["difficult_negative_case"]) <= {True, False}
    # cancer is per breast: both views of a breast agree
    per_breast = table.groupby(["patient_id", "laterality"])["cancer"].nunique()
    assert (per_breast == 1).all()
    assert table["cancer"].sum() >= 2  # at least one positive breast
    assert (table.loc[table.cancer == 1, "biopsy"] == 1).all()


def test_files_match_rows_one_to_one(data, table):
    on_disk = {(int(p.parent.name), int(p.stem)) for p in (data / "train_images").glob("*/*")}
    assert on_disk == set(zip(table.patient_id, table.image_id))
    leftovers = [p for p in data.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []


PLAN = {row["image_id"]: row for row in synth.plan_dataset(PATIENTS, SEED, RATE, "small")}


def style(table, r) -> str:
    """The header style of a row's patient (synth.STYLES by the patient's index)."""
    order = sorted(table["patient_id"].unique())
    assert PLAN[r.image_id]["_style"] == synth.STYLES[order.index(r.patient_id) % len(synth.STYLES)]
    return PLAN[r.image_id]["_style"]


def test_required_tags(table, files):
    uids = set()
    for r in table.itertuples():
        ds = files[r.image_id]
        assert ds.ImageLaterality == r.laterality
        if style(table, r) == "rsna":  # like RSNA's own files (test_rsna_style_is_exactly_rsnas_shape)
            assert ds.file_meta.MediaStorageSOPClassUID == synth.RSNA_SOP_CLASS
        else:
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == synth.MAMMO_SOP_CLASS
            assert ds.Modality == "MG" and ds.ViewPosition == r.view and ds.Laterality == r.laterality
        if style(table, r) == "id_is_name":
            assert ds.PatientID == str(ds.PatientName) and synth.PHI_MARKER in ds.PatientID
        else:
            assert ds.PatientID == str(r.patient_id)
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14, 16) and ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        machine = next(m for m in synth.MACHINES if m.machine_id == r.machine_id)
        assert ds.file_meta.TransferSyntaxUID == PLAN[r.image_id]["_syntax"]
        assert PLAN[r.image_id]["_syntax"] in (machine.syntax, *synth.COMPRESSED)
        assert ds.PhotometricInterpretation == machine.photometric and ds.BitsStored == machine.bits_stored
        assert ds.get("VOILUTFunction", "LINEAR") == machine.voi_function
        centers = np.atleast_1d(np.asarray(ds.WindowCenter, float))
        widths = np.atleast_1d(np.asarray(ds.WindowWidth, float))
        assert len(centers) == len(widths) == machine.n_windows
        arr = ds.pixel_array
        assert (widths > 0).all() and (widths <= 2**ds.BitsStored).all()
        assert ((centers > arr.min()) & (centers < arr.max())).all()
        if machine.rescale:
            assert ds.RescaleSlope == 1 and ds.RescaleIntercept == 0
        assert (arr.shape == (ds.Rows, ds.Columns) == machine.small_shape)
        uids.update([ds.SOPInstanceUID, ds.SeriesInstanceUID])
    assert len(uids) == 2 * len(table)  # every SOP and series UID unique
    studies = {files[i].StudyInstanceUID for i in table.image_id}
    assert len(studies) == PATIENTS
    assert {ds.PhotometricInterpretation for ds in files.values()} == {"MONOCHROME1", "MONOCHROME2"}
    assert {ds.file_meta.TransferSyntaxUID for ds in files.values()} == set(synth.SYNTAXES)
    assert any(len(np.atleast_1d(ds.WindowCenter)) > 1 for ds in files.values())


def test_rsna_style_is_exactly_rsnas_shape(table, files):
    """Issue 14: real RSNA files have no Modality and no SOPClassUID in the dataset, the DX For
    Presentation class in the file meta, JPEG 2000 lossless or JPEG Lossless SV1, and exactly
    these keywords; synth's "rsna" files must be that shape, so the tests see what users feed."""
    expected = {
        "SOPInstanceUID", "ContentDate", "ContentTime", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
        "InstanceNumber", "ImageLaterality", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelPaddingValue",
        "PixelIntensityRelationship", "PixelIntensityRelationshipSign", "WindowCenter", "WindowWidth",
        "RescaleIntercept", "RescaleSlope", "RescaleType", "PartialView", "LossyImageCompression", "PixelData"}
    rsna = [r for r in table.itertuples() if style(table, r) == "rsna"]
    assert len(rsna) == 4
    for r in rsna:
        ds = files[r.image_id]
        sigmoid = next(m for m in synth.MACHINES if m.machine_id == r.machine_id).voi_function == "SIGMOID"
        assert {e.keyword for e in ds} == expected | ({"VOILUTFunction"} if sigmoid else set())
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70")
        assert ds.file_meta.ImplementationVersionName == "PYDICOM 2.3.0"
        assert ds.PatientID == str(r.patient_id) == files[r.image_id].filename.split("/")[-2]  # the folder
        assert (ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign, ds.RescaleType) == ("LOG", 1, "US")
        assert ds.get("VOILUTFunction", "") == ("SIGMOID" if sigmoid else "")
        assert (ds.PartialView, ds.LossyImageCompression) == ("NO", "00")
        assert np.array_equal(ds.pixel_array, synth.render(PLAN[r.image_id])[0])  # pixels untouched


def test_rsna_style_keeps_to_the_syntaxes_asked_for(tmp_path):
    """An "rsna" patient on an uncompressed machine is written in a compressed syntax RSNA uses;
    when only uncompressed files are asked for, that patient's files are "full" style."""
    plan = synth.plan_dataset(4, 0, 0.25, "small", syntaxes=[str(ExplicitVRLittleEndian)])
    assert {r["_syntax"] for r in plan} == {str(ExplicitVRLittleEndian)} and "rsna" not in {r["_style"] for r in plan}
    for seed in range(6):
        for row in synth.plan_dataset(8, seed, 0.25, "small"):
            if row["_style"] == "rsna":
                assert row["_syntax"] in synth.COMPRESSED


def test_every_syntax_decodes_losslessly(table, files):
    plan = synth.plan_dataset(PATIENTS, SEED, RATE, "small")
    assert [row["image_id"] for row in plan] == list(table.image_id)
    for row in plan:
        expected, _ = synth.render(row)
        got = files[row["image_id"]].pixel_array
        assert got.dtype == np.uint16 and np.array_equal(got, expected), row["_machine"].syntax


def test_j2k_has_resolution_levels_for_reduced_decoding(files):
    ds = next(d for d in files.values() if d.file_meta.TransferSyntaxUID == JPEG2000Lossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    cod = frame.find(b"\xff\x52")  # COD marker; byte 9 after it is the number of decomposition levels
    assert cod > 0 and frame[cod + 9] >= 5
    im = Image.open(io.BytesIO(frame))
    im.reduce = 3  # decode at 1/8 size
    im.load()
    assert im.size == (-(-ds.Columns // 8), -(-ds.Rows // 8))


def test_chest_wall_on_the_side_of_the_laterality(files):
    for ds in files.values():
        img = display(ds)
        half = img.shape[1] // 2
        left, right = img[:, :half].mean(), img[:, half:].mean()
        assert (left > right) if ds.ImageLaterality == "L" else (right > left)


def test_marker_and_pectoral_muscle(table, files):
    for r in table.itertuples():
        ds = files[r.image_id]
        machine = next(m for m in synth.MACHINES if m.machine_id == r.machine_id)
        top = 2**ds.BitsStored - 1
        lo, hi = machine.stored_range[0] * top, machine.stored_range[1] * top
        img = (display(ds) - (lo if ds.PhotometricInterpretation == "MONOCHROME2" else top - hi)) / (hi - lo)
        rows, cols = img.shape
        far_top = img[: rows // 8, cols * 2 // 3:] if r.laterality == "L" else img[: rows // 8, : cols // 3]
        assert far_top.max() > 0.9, "no bright burned-in marker in the top corner away from the chest wall"
        assert np.median(far_top) < 0.1  # ... which is otherwise air
        if r.view == "MLO":  # a bright pectoral muscle in the upper chest-wall corner
            patch = img[: rows // 20, : cols // 20] if r.laterality == "L" else img[: rows // 20, -cols // 20:]
            assert patch.mean() > np.median(img[breast_mask(img)])


def test_lesion_masks_only_for_positives_and_visible(data, table, files):
    lesions = pd.read_csv(data / "lesions.csv")
    assert list(lesions.columns) == list(synth.LESION_COLUMNS)
    positives = set(table.loc[table.cancer == 1, "image_id"])
    assert set(lesions.image_id) == positives
    assert {int(p.stem) for p in (data / "lesion_masks").glob("*.png")} == positives
    assert set(lesions.kind) <= set(synth.KINDS)
    for les in lesions.itertuples():
        ds = files[les.image_id]
        mask = cv2.imread(str(data / "lesion_masks" / f"{les.image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == ds.pixel_array.shape
        assert set(np.unique(mask)) == {0, 255}
        assert mask[les.center_row, les.center_col] == 255
        img = display(ds)
        inner = cv2.erode(breast_mask(img).astype(np.uint8), np.ones((15, 15), np.uint8))
        lesion = mask > 0
        assert inner[lesion].all(), "lesion touches the skin or the background"
        ring = cv2.dilate(mask, np.ones((les.radius_px, les.radius_px), np.uint8)) > 0
        ring &= ~lesion & (inner > 0)
        assert img[lesion].mean() > img[ring].mean()
        # still visible when the whole image is shrunk to 128x128
        small = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask, (128, 128), interpolation=cv2.INTER_AREA) > 127
        small_ring = cv2.resize(ring.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST) > 0
        if small_mask.any() and les.kind != "calcification":
            assert small[small_mask].mean() > small[small_ring & ~small_mask].mean()
        diameter = 2 * les.radius_px / breast_mask(img).any(axis=1).sum()
        assert 0.05 <= diameter <= 0.14


def test_phi_fields_carry_the_marker(data, table, files):
    people = ("PatientName", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
              "OperatorsName", "ImageComments")
    assert set(people) < set(synth.PHI_KEYWORDS)
    assert {style(table, r) for r in table.itertuples()} == set(synth.STYLES)
    for r in table.itertuples():
        ds = files[r.image_id]
        if style(table, r) == "rsna":  # RSNA's files carry none of them
            assert not any(keyword in ds for keyword in synth.PHI_KEYWORDS)
            continue
        for keyword in synth.PHI_KEYWORDS:
            assert str(ds.get(keyword, "") or ""), keyword
        for keyword in people:
            assert synth.PHI_MARKER in str(ds.get(keyword)), keyword
        birth = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d")
        study = dt.datetime.strptime(ds.StudyDate, "%Y%m%d")
        assert abs((study - birth).days / 365.25 - r.age) <= 1
    for name in ("train.csv", "lesions.csv"):
        text = (data / name).read_text()
        assert synth.PHI_MARKER not in text
        assert all(ds.PatientBirthDate not in text for ds in files.values() if "PatientBirthDate" in ds)


def test_same_seed_same_bytes_whatever_the_workers(data, tmp_path):
    synth.write_dataset(tmp_path, patients=PATIENTS, seed=SEED, cancer_rate=RATE, workers=2)
    for name in ("train.csv", "lesions.csv"):
        assert (tmp_path / name).read_bytes() == (data / name).read_bytes()
    for path in (data / "train_images").glob("*/*.dcm"):
        again = tmp_path / path.relative_to(data)
        assert pydicom.dcmread(again).PixelData == pydicom.dcmread(path).PixelData
    for path in (data / "lesion_masks").glob("*.png"):
        assert (tmp_path / path.relative_to(data)).read_bytes() == path.read_bytes()


def test_different_seed_differs():
    a, b = synth.plan_dataset(3, 1, 0.5, "small"), synth.plan_dataset(3, 2, 0.5, "small")
    assert [r["image_id"] for r in a] != [r["image_id"] for r in b]
    img_a = synth.make_image(np.random.default_rng(1), 256, 208, "L", "CC", lesion=False)[0]
    img_b = synth.make_image(np.random.default_rng(2), 256, 208, "L", "CC", lesion=False)[0]
    img_a2 = synth.make_image(np.random.default_rng(1), 256, 208, "L", "CC", lesion=False)[0]
    assert np.array_equal(img_a, img_a2) and not np.array_equal(img_a, img_b)
    assert img_a.dtype == np.float32 and 0 <= img_a.min() and img_a.max() <= 1


def test_make_image_mask_and_orientation():
    img, mask = synth.make_image(np.random.default_rng(0), 512, 416, "R", "MLO", lesion=True)
    assert img.shape == mask.shape == (512, 416) and mask.dtype == np.uint8
    assert mask.any() and img[:, 208:].mean() > img[:, :208].mean()
    _, none = synth.make_image(np.random.default_rng(0), 512, 416, "L", "CC", lesion=False)
    assert not none.any()


@pytest.mark.parametrize("seed", range(8))
def test_small_sets_cover_labels_syntaxes_and_photometrics(seed):
    two = synth.plan_dataset(2, seed, 0.05, "small")
    assert any(r["cancer"] for r in two)
    three = synth.plan_dataset(3, seed, 0.25, "small")
    assert {r["_machine"].syntax for r in three} == set(synth.SYNTAXES)
    assert {r["_machine"].photometric for r in three} == {"MONOCHROME1", "MONOCHROME2"}
    only = synth.plan_dataset(5, seed, 0.25, "small", syntaxes=[str(JPEGLosslessSV1)])
    assert {r["_machine"].syntax for r in only} == {str(JPEGLosslessSV1)}
    assert not any(r["cancer"] for r in synth.plan_dataset(4, seed, 0.0, "small"))


def test_sizes():
    full = {m.full_shape for m in synth.MACHINES}
    assert {(4096, 3328), (2294, 1914), (5355, 4915), (3328, 2560)} <= full
    for row in synth.plan_dataset(6, 0, 0.25, "full"):
        assert row["_shape"] == row["_machine"].full_shape
    small = {synth.machine_shape(m, "small") for m in synth.MACHINES}
    assert len(small) >= 3 and all(850 <= r <= 1100 and c < r for r, c in small)
    with pytest.raises(ConfigError, match="small"):
        synth.machine_shape(synth.MACHINES[0], "huge")


def test_one_full_size_j2k_image(tmp_path):
    """The smallest full-size machine: realistic shape, lossless, 5 decomposition levels."""
    row = next(r for r in synth.plan_dataset(8, 0, 0.25, "full") if r["_machine"].machine_id == 48)
    synth.make_file(row, str(tmp_path))
    ds = pydicom.dcmread(tmp_path / "train_images" / str(row["patient_id"]) / f"{row['image_id']}.dcm")
    assert (ds.Rows, ds.Columns) == (2294, 1914) and ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(ds.pixel_array, synth.render(row)[0])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    cod = frame.find(b"\xff\x52")
    assert frame[cod + 9] >= 5
    # 1/32 here: Pillow 13 rounds the reduced size where OpenJPEG takes the ceiling, so for
    # 1914 columns reduce=3 or 4 fails in Pillow ("broken data stream"); readers must cope.
    im = Image.open(io.BytesIO(frame))
    im.reduce = 5
    im.load()
    assert im.size == (-(-1914 // 32), -(-2294 // 32))


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        synth.write_dataset(tmp_path, size="smal")
    with pytest.raises(ConfigError, match="transfer syntax"):
        synth.write_dataset(tmp_path, syntaxes=["1.2.840.10008.1.2.5"])
    with pytest.raises(ConfigError, match="cancer-rate"):
        synth.write_dataset(tmp_path, cancer_rate=1.5)
    with pytest.raises(ConfigError, match="seed"):
        synth.write_dataset(tmp_path, seed=-1)
    assert not (tmp_path / "train.csv").exists()


def test_restricted_syntax_writes_only_that(tmp_path):
    frame = synth.write_dataset(tmp_path, patients=1, seed=9, workers=1, syntaxes=[ExplicitVRLittleEndian])
    assert len(frame) == 4
    for path in (tmp_path / "train_images").glob("*/*.dcm"):
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_cli(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--patients", "1", "--seed", "5", "--workers", "1",
                 "--cancer-rate", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "1 patients, 4 images, 2 positive images" in line and line.endswith(" s")
    frame = pd.read_csv(tmp_path / "d" / "train.csv")
    assert len(frame) == 4 and frame["cancer"].sum() == 2
    assert len(list((tmp_path / "d" / "train_images").glob("*/*.dcm"))) == 4
    assert main(["synth", str(tmp_path / "e"), "--patients", "0"]) == 2
    assert "--patients" in capsys.readouterr().err
