"""Decoders and validation: every failure kind gives DicomError with its stable reason and
the path; Pillow's JPEG 2000 levels and dicomsdl agree with pydicom."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medvit.dicom.read as read
import medvit.dicom.header as header
from medvit.dicom.normalize import preprocess
from medvit.dicom.read import Pixels, decode_j2k_pillow, j2k_info, read_dataset, read_header
from medvit.errors import DicomError

from dicom_factory import breast_image, edited_copy, truncated_copy, write_dicom


def bundled(name: str) -> str:
    path = get_testdata_file(name, download=False)  # never reach the network
    assert path is not None, name
    return path


def assert_reason(path, reason: str, fn=preprocess) -> DicomError:
    with pytest.raises(DicomError) as caught:
        fn(path)
    err = caught.value
    assert err.reason == reason, str(err)
    assert str(path) in str(err)
    assert "Test^Patient" not in str(err) and "Test" not in err.detail
    return err


@pytest.mark.parametrize("name, reason", [
    ("SC_rgb_rle.dcm", "color"),
    ("examples_jpeg2k.dcm", "color"),            # YBR_RCT JPEG 2000
    ("rtdose.dcm", "multi_frame"),
    ("rtplan.dcm", "no_pixel_data"),
    ("test-SR.dcm", "no_pixel_data"),
    ("dicomdirtests/DICOMDIR", "no_pixel_data"),
    ("MR_truncated.dcm", "truncated"),
])
def test_bundled_bad_files(name, reason):
    path = bundled(Path(name).name)
    assert_reason(path, reason)
    if reason in ("color", "multi_frame", "no_pixel_data"):  # visible in the header alone
        assert_reason(path, reason, fn=read_header)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("small")
    img = breast_image(256, 200, seed=1)
    return {s: write_dicom(d / f"{s}.dcm", img, syntax=s, window=(2048, 4096))
            for s in ("explicit", "j2k", "sv1", "rle")}


@pytest.mark.parametrize("syntax", ["explicit", "j2k", "sv1", "rle"])
def test_truncated_files(small, tmp_path, syntax):
    assert_reason(truncated_copy(small[syntax], tmp_path / "cut.dcm", 0.6), "truncated")


def test_header_problems(small, tmp_path):
    mr = bundled("MR_small.dcm")
    assert_reason(edited_copy(mr, tmp_path / "huge.dcm", Rows=60000), "bad_dimensions")
    assert_reason(edited_copy(mr, tmp_path / "huge.dcm", Rows=60000), "bad_dimensions",
                  fn=read_header)
    # consistent-looking header, but the pixel data is half of what it declares
    assert_reason(edited_copy(mr, tmp_path / "rows.dcm", Rows=128), "bad_dimensions")
    assert_reason(edited_copy(mr, tmp_path / "bits.dcm", BitsStored=20), "bad_dimensions")
    assert_reason(edited_copy(mr, tmp_path / "two.dcm", NumberOfFrames=2), "multi_frame")
    assert_reason(edited_copy(mr, tmp_path / "rgb.dcm", PhotometricInterpretation="RGB"),
                  "color")


def test_not_dicom_and_unreadable(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("this is not a DICOM file\n" * 20)
    assert_reason(text, "not_dicom")
    assert_reason(text, "not_dicom", fn=read_header)
    png = tmp_path / "x.dcm"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert_reason(png, "not_dicom")
    assert_reason(tmp_path / "missing.dcm", "unreadable")
    junk = tmp_path / "junk.dcm"  # the preamble and magic, then random bytes
    junk.write_bytes(bytes(128) + b"DICM" + np.random.default_rng(0).bytes(4000))
    assert "SOP class" in assert_reason(junk, "not_dicom").detail
    zeros = tmp_path / "zeros.dcm"  # no preamble, no tag: refused without a forced parse
    zeros.write_bytes(bytes(1 << 20))
    assert "no DICOM tag" in assert_reason(zeros, "not_dicom").detail


def test_unsupported_syntax_and_decode_failure(small, tmp_path):
    ds = pydicom.dcmread(small["j2k"])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.save_as(tmp_path / "mpeg.dcm")
    err = assert_reason(tmp_path / "mpeg.dcm", "unsupported_syntax")
    assert "1.2.840.10008.1.2.4.100" in err.detail

    data = bytearray(small["j2k"].read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")
    data[start + 2: start + 40] = b"\x13" * 38  # wreck the SIZ marker
    (tmp_path / "bad.dcm").write_bytes(bytes(data))
    err = assert_reason(tmp_path / "bad.dcm", "decode_failed")
    assert err.detail  # the library's message is kept


def test_read_header_is_header_only(small):
    ds = read_header(small["j2k"])
    assert "PixelData" not in ds and ds.Rows == 256
    assert "PixelData" in read_dataset(small["j2k"])


# ------------------------------------------------------------------- JPEG 2000 levels

@pytest.mark.parametrize("bits", [12, 14, 16])
def test_pillow_j2k_equals_pydicom(tmp_path, bits):
    img = breast_image(203, 157, bits=bits, seed=bits)  # odd sizes: ceil at each level
    img[0, 0], img[1, 1] = 0, 2**bits - 1                # full stored range
    path = write_dicom(tmp_path / "j.dcm", img, syntax="j2k", bits_stored=bits)
    ds = pydicom.dcmread(path)
    codestream = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    info = j2k_info(codestream)
    assert (info.rows, info.cols, info.precision, info.signed) == (203, 157, bits, False)
    assert info.levels >= 2
    np.testing.assert_array_equal(decode_j2k_pillow(codestream, 0, info), ds.pixel_array)
    half = decode_j2k_pillow(codestream, 1, info)
    assert half.shape == (102, 79) and half.max() < 2**bits
    # a low-pass of the same image: close to a 2x2 average
    box = img[:202, :156].reshape(101, 2, 78, 2).mean(axis=(1, 3))
    assert np.abs(half[:101, :78] - box).mean() < 0.02 * 2**bits
    with pytest.raises(Exception):
        decode_j2k_pillow(codestream, info.levels + 1, info)


@pytest.mark.parametrize("rows, cols", [(1913, 2294), (1021, 1025), (600, 1914)])
def test_pillow_j2k_every_level_at_sizes_pillow_rounds_down(tmp_path, rows, cols):
    """Pillow rounds a level's size, OpenJPEG takes the ceiling: e.g. 1914 px at level 3 is
    239.25 -> 239 for Pillow, 240 for OpenJPEG. Every level must still decode, near a box mean."""
    img = breast_image(rows, cols, bits=12, seed=rows)
    path = write_dicom(tmp_path / "odd.dcm", img, syntax="j2k", bits_stored=12)
    ds = pydicom.dcmread(path)
    codestream = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    info = j2k_info(codestream)
    for level in range(1, min(info.levels, 5) + 1):
        arr = decode_j2k_pillow(codestream, level, info)
        f = 2**level
        assert arr.shape == (-(-rows // f), -(-cols // f)), level
        h, w = rows // f, cols // f
        box = img[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3))
        if level <= 3:  # the 5/3 wavelet's low band, not a box mean: close at the levels that resample
            assert np.abs(arr[:h, :w] - box).mean() < 0.02 * 2**12, level


def test_pixels_step_back_one_level_then_pydicom(small, monkeypatch):
    ds = read_dataset(small["j2k"])
    real, tried = read.decode_j2k_pillow, []

    def flaky(codestream, reduce, info):
        tried.append(reduce)
        if reduce >= 2:
            raise OSError("simulated")
        return real(codestream, reduce, info)

    monkeypatch.setattr(read, "decode_j2k_pillow", flaky)
    arr, level, name = Pixels(ds, small["j2k"]).get(3)
    assert (level, name, tried) == (1, "pillow-j2k", [3, 2, 1]) and arr.shape == (128, 100)

    monkeypatch.setattr(read, "decode_j2k_pillow", lambda *a: (_ for _ in ()).throw(OSError()))
    arr, level, name = Pixels(ds, small["j2k"]).get(3)
    assert (level, name) == (0, "pydicom")
    np.testing.assert_array_equal(arr, pydicom.dcmread(small["j2k"]).pixel_array)


def test_signed_j2k_goes_through_pydicom():
    path = bundled("MR_small_jp2klossless.dcm")  # PixelRepresentation 1
    pixels = Pixels(read_dataset(path), path)
    assert pixels.max_reduce == 0 and pixels.get(0)[2] == "pydicom"


def test_dicomsdl_sv1_equals_pydicom(small):
    ds = read_dataset(small["sv1"])
    assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.70"
    arr, name = read.decode_full(ds, small["sv1"])
    assert name == "dicomsdl" and arr.dtype.kind in "iu"
    np.testing.assert_array_equal(arr, pydicom.dcmread(small["sv1"]).pixel_array)


def test_sv1_falls_back_to_pydicom(small, monkeypatch):
    monkeypatch.setattr(read, "_decode_dicomsdl", lambda path, ds: None)
    arr, name = read.decode_full(read_dataset(small["sv1"]), small["sv1"])
    assert name == "pydicom" and arr.shape == (256, 200)


# ------------------------------------------------------------------ the modality rule (issue 14)

def _header(modality: str | None = None, sop: str | None = None, meta_sop: str | None = None) -> pydicom.Dataset:
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    if meta_sop:
        ds.file_meta.MediaStorageSOPClassUID = meta_sop
    if sop:
        ds.SOPClassUID = sop
    if modality is not None:
        ds.Modality = modality
    return ds


SOP = "1.2.840.10008.5.1.4.1.1."


@pytest.mark.parametrize("modality, sop, meta_sop, label, passes", [
    (None, None, SOP + "1.1", "(none; DX SOP class)", True),          # RSNA's files
    (None, None, SOP + "1.1.1", "(none; DX SOP class)", True),        # DX for processing
    (None, None, SOP + "1", "(none; CR SOP class)", True),
    (None, None, SOP + "7", "(none; SC SOP class)", True),
    (None, SOP + "1.2", SOP + "2", "(none; MG SOP class)", True),     # the dataset's class wins
    (None, SOP + "13.1.4", None, "(none; MG SOP class)", True),       # breast projection
    (None, SOP + "1.2.1", None, "(none; MG SOP class)", True),
    (None, None, None, "(none; no SOP class)", True),
    ("MG", SOP + "2", None, "MG", True),                              # the Modality decides
    ("DX", SOP + "1.1", None, "DX", False),                           # an explicit non-MG Modality
    ("CT", None, None, "CT", False),
    ("PATIENT SMITH", None, None, "other", False),                    # free text: never echoed
    (None, None, SOP + "2", "(none; CT SOP class)", False),
    (None, None, SOP + "2.1", "(none; CT SOP class)", False),
    (None, SOP + "4", None, "(none; MR SOP class)", False),
    (None, SOP + "6.1", None, "(none; US SOP class)", False),
    (None, SOP + "20", None, "(none; NM SOP class)", False),
    (None, SOP + "128", None, "(none; PT SOP class)", False),
    (None, SOP + "481.1", None, "(none; RT SOP class)", False),
    (None, SOP + "88.11", None, "(none; SR SOP class)", False),
    (None, SOP + "104.1", None, "(none; DOC SOP class)", False),      # encapsulated PDF
    (None, SOP + "11.1", None, "(none; PR SOP class)", False),        # presentation state
    (None, SOP + "1.3", None, "(none; IO SOP class)", False),         # dental intra-oral
    (None, SOP + "66", None, "(none; other SOP class)", False),       # raw data: registered, not an image
    (None, "1.2.840.113619.4.2", None, "(none; unknown SOP class)", False),  # a vendor's private class
])
def test_modality_decision(modality, sop, meta_sop, label, passes):
    decision = header.modality_decision(_header(modality, sop, meta_sop))
    assert (decision.label, decision.mammogram) == (label, passes)
    assert header.modality_of(_header(modality, sop, meta_sop)) == label
    assert "SMITH" not in decision.why and "113619" not in decision.why
    if passes:
        header.check_modality(_header(modality, sop, meta_sop), "f.dcm")
        assert not header.accepted_only_with_any_modality(label)
    else:
        with pytest.raises(DicomError) as err:
            header.check_modality(_header(modality, sop, meta_sop), "f.dcm")
        assert err.value.reason == "not_mammogram" and err.value.info == {"modality": label}
        assert "--any-modality" in str(err.value) and "f.dcm" in str(err.value)
        header.check_modality(_header(modality, sop, meta_sop), "f.dcm", any_modality=True)
        assert header.accepted_only_with_any_modality(label)
