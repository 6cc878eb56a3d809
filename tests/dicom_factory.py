"""Write small (or full-size) mammogram-like DICOMs for tests.

Syntaxes: "explicit" / "implicit" (uncompressed), "rle" (pydicom's own encoder),
"j2k" (JPEG 2000 lossless via pydicom 3 + pylibjpeg-openjpeg) and "sv1" (JPEG Lossless
SV1 via python-gdcm: pydicom cannot encode it). Every image is made in code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from medvit.dicom.write import gdcm_jpeg_lossless

SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k": JPEG2000Lossless,
    "sv1": JPEGLosslessSV1,
}
DIGITAL_MG = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage


def breast_image(rows: int, cols: int, bits: int = 12, *, right: bool = False,
                 marker: bool = True, seed: int = 0) -> np.ndarray:
    """Tissue-bright uint16 image: a textured half-ellipse on the chest-wall side, dark air
    elsewhere, and (optionally) a bright burned-in label in the opposite top corner.
    `right=True` mirrors it (RSNA R images have the chest wall on the right)."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    # breast: ellipse centred on the left edge, slightly below the middle
    ry, rx = 0.42 * rows, 0.68 * cols
    r = np.sqrt(((y - 0.52 * rows) / ry) ** 2 + (x / rx) ** 2)
    inside = np.clip((1.0 - r) / 0.04, 0.0, 1.0)            # soft skin edge
    # smooth structured texture: low-res noise blown up with bicubic interpolation
    coarse = rng.random((max(rows // 64, 4), max(cols // 64, 4))).astype(np.float32)
    texture = cv2.resize(coarse, (cols, rows), interpolation=cv2.INTER_CUBIC)
    fine = rng.random((max(rows // 8, 4), max(cols // 8, 4))).astype(np.float32)
    texture += 0.3 * cv2.resize(fine, (cols, rows), interpolation=cv2.INTER_CUBIC)
    tissue = 0.35 + 0.45 * np.clip(texture / 1.3, 0, 1) + 0.1 * (1 - x / cols)
    img = 0.03 + inside * (tissue - 0.03)
    img += 0.004 * rng.standard_normal(img.shape, dtype=np.float32)
    if marker:  # burned-in label, well away from the breast
        h, w = max(rows // 20, 2), max(cols // 8, 2)
        y0, x0 = rows // 30, cols - cols // 30 - w
        img[y0:y0 + h, x0:x0 + w] = 0.98
    out = np.clip(np.rint(img * top), 0, top).astype(np.uint16)
    return out[:, ::-1].copy() if right else out


def write_dicom(path: str | Path, pixels: np.ndarray, *, syntax: str = "explicit",
                bits_stored: int = 12, photometric: str = "MONOCHROME2",
                window: tuple[float | Sequence[float], float | Sequence[float]] | None = None,
                voi_function: str | None = None,
                voi_lut: tuple[np.ndarray, int, int] | None = None,
                laterality: str | None = "L", laterality_tag: str = "ImageLaterality",
                view: str = "CC", patient_id: str = "10006",
                rescale: tuple[float, float] | None = None) -> Path:
    """Write `pixels` (stored values, uint16) as a single-frame MG DICOM and return the path.
    voi_lut = (lut values, first mapped value, bits per entry)."""
    path = Path(path)
    ds = _dataset(pixels, bits_stored, photometric, patient_id, view)
    if laterality is not None:
        setattr(ds, laterality_tag, laterality)
    if window is not None:
        c, w = window
        ds.WindowCenter = list(c) if isinstance(c, (list, tuple)) else c
        ds.WindowWidth = list(w) if isinstance(w, (list, tuple)) else w
    if voi_function:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        lut, first, nbits = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(lut) % 65536, first, nbits]
        item["LUTDescriptor"].VR = "US"
        item.LUTData = [int(v) for v in lut]
        item["LUTData"].VR = "US"
        ds.VOILUTSequence = [item]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    return _save(ds, path, syntax)


def _dataset(pixels: np.ndarray, bits_stored: int, photometric: str, patient_id: str,
             view: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DIGITAL_MG
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DIGITAL_MG
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"  # PHI stand-in: must never reach medvit's output
    ds.PatientBirthDate = "19500101"
    ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _save(ds: Dataset, path: Path, syntax: str) -> Path:
    uid = SYNTAXES[syntax]
    if syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = uid
    elif syntax in ("rle", "j2k"):
        ds.compress(uid)
    ds.save_as(path, enforce_file_format=True)
    if syntax == "sv1":
        gdcm_jpeg_lossless(str(path), str(path))  # medvit's own SV1 encoder, in place
    return path


def truncated_copy(src: str | Path, dst: str | Path, keep: float = 0.6) -> Path:
    """Copy `src` keeping only the first `keep` fraction of its bytes."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def edited_copy(src: str | Path, dst: str | Path, **fields) -> Path:
    """Copy `src` with some header fields overwritten (e.g. Rows=60000)."""
    ds = pydicom.dcmread(src)
    for key, value in fields.items():
        setattr(ds, key, value)
    ds.save_as(dst)
    return Path(dst)


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def edit_dicom(src: str | Path, dst: str | Path, **tags) -> Path:
    """Copy `src` to `dst` with tags set (`Modality="CT"`) or removed (`Modality=None`); SOPClassUID
    also sets the file meta's MediaStorageSOPClassUID. Pixel data untouched."""
    ds = pydicom.dcmread(src)
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        if keyword == "SOPClassUID" and value is not None:
            ds.file_meta.MediaStorageSOPClassUID = value
    ds.save_as(dst, enforce_file_format=True)
    return Path(dst)


def lut_item(data: Sequence[int] | None, descriptor: Sequence[int] | None) -> Dataset:
    """A (Modality or VOI) LUT Sequence item; None leaves the element out (a malformed item)."""
    item = Dataset()
    if descriptor is not None:
        item.LUTDescriptor = list(descriptor)
        item["LUTDescriptor"].VR = "US"
    if data is not None:
        item.LUTData = [int(v) for v in data]
        item["LUTData"].VR = "US"
    return item
