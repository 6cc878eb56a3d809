"""preprocess(): VOI equal to pydicom's, geometry (crop, orientation, padding), and the
reduced-resolution JPEG 2000 path against a full decode + INTER_AREA reference."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

import medvit.dicom.read as read
from medvit.dicom.normalize import apply_geometry, out_shape, preprocess, to_uint16, to_unit
from medvit.errors import DicomError

from dicom_factory import breast_image, write_dicom

SIZE = 128  # small target for the small factory images


def bundled(name: str) -> str:
    path = get_testdata_file(name, download=False)  # never reach the network
    assert path is not None, name
    return path


def reference(path, info: dict, size: int, top_value: float) -> np.ndarray:
    """Naive path: pydicom full decode -> pydicom LUTs -> same crop/flip -> INTER_AREA."""
    ds = pydicom.dcmread(path)
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) / top_value
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    box = (info["crop_y0"], info["crop_x0"], info["crop_y1"], info["crop_x1"])
    out = out[box[0]:box[2], box[1]:box[3]]
    if info["flipped"]:
        out = out[:, ::-1]
    oh, ow = out_shape(box, size)
    small = cv2.resize(np.ascontiguousarray(out, np.float32), (ow, oh),
                       interpolation=cv2.INTER_AREA)
    img = np.zeros((size, size), np.float32)
    top = (size - oh) // 2
    img[top:top + oh, :ow] = small
    return np.rint(np.clip(img, 0, 1) * 65535).astype(np.uint16)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean() / 65535)


def breast_core(image: np.ndarray) -> np.ndarray:
    """Pixels 2 px or more inside the non-zero part of a preprocessed image: the background
    fill's soft edge (a ramp of about one preview pixel) lies outside it."""
    return cv2.erode((image > 0).astype(np.uint8), np.ones((5, 5), np.uint8),
                     borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def filled_diff(image: np.ndarray, ref: np.ndarray) -> float:
    """mean_abs_diff against the reference with preprocess's background fill applied (0 where the
    image is 0), after checking that only dark background (air) was set to 0; the fill's soft
    edge is left out."""
    zero = image == 0
    assert 0.05 < zero.mean() < 0.95 and ref[zero].mean() < 0.06 * 65535
    judged = zero | breast_core(image)
    assert judged.mean() > 0.9
    return mean_abs_diff(image[judged], np.where(zero, 0, ref)[judged])


# ------------------------------------------------------------------- VOI == pydicom

def _ds(tmp_path, bits=12, **kw):
    img = breast_image(64, 48, bits=bits, seed=3)
    path = write_dicom(tmp_path / "v.dcm", img, bits_stored=bits, **kw)
    ds = pydicom.dcmread(path)
    return ds, ds.pixel_array


@pytest.mark.parametrize("kw, label, bounds", [
    ({"window": (1500, 2200)}, "linear", (0, 4095)),
    ({"window": (1500, 2200), "voi_function": "LINEAR_EXACT"}, "linear_exact", (0, 4095)),
    ({"window": (1800, 900), "voi_function": "SIGMOID"}, "sigmoid", (0, 4095)),
    ({"window": ([1200, 2500], [1000, 3000])}, "linear", (0, 4095)),  # first window wins
    ({"window": (300, 600), "rescale": (0.5, -100)}, "linear", (-100, 0.5 * 4095 - 100)),
    ({}, "minmax", None),
])
def test_voi_equals_pydicom_windowing(tmp_path, kw, label, bounds):
    ds, raw = _ds(tmp_path, **kw)
    mine, voi = to_unit(raw, ds, mono1=False)
    theirs = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float64)
    lo, hi = bounds if bounds else (theirs.min(), theirs.max())
    assert voi == label
    np.testing.assert_allclose(mine, np.clip((theirs - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_voi_lut_sequence_equals_pydicom(tmp_path):
    lut = (np.sqrt(np.arange(3000) / 2999) * 1000 + 20).astype(np.uint16)  # uses 20..1020
    ds, raw = _ds(tmp_path, voi_lut=(lut, 500, 16), window=(100, 50))  # LUT beats window
    mine, voi = to_unit(raw, ds, mono1=True)
    theirs = apply_voi_lut(raw, ds).astype(np.float64)
    assert voi == "lut_sequence"
    np.testing.assert_allclose(mine, 1 - (theirs - 20) / 1000, atol=1e-6)


def test_voi_crop_is_a_window_of_the_whole(tmp_path):
    ds, raw = _ds(tmp_path, window=(1500, 2200))
    whole, _ = to_unit(raw, ds, mono1=False)
    part, _ = to_unit(raw, ds, mono1=False, crop=(5, 7, 40, 30))
    np.testing.assert_array_equal(part, whole[5:40, 7:30])


# ------------------------------------------------------------------ geometry, kinds

def _side_means(image: np.ndarray) -> tuple[float, float]:
    cols = np.nonzero(image.max(axis=0))[0]
    width = cols.max() + 1
    return float(image[:, : width // 4].mean()), float(image[:, width - width // 4: width].mean())


@pytest.mark.parametrize("syntax", ["explicit", "j2k", "sv1", "rle", "implicit"])
@pytest.mark.parametrize("bits, photometric, laterality", [
    (12, "MONOCHROME2", "L"), (14, "MONOCHROME1", "R"), (16, "MONOCHROME2", None),
    (12, "MONOCHROME1", None),
])
def test_preprocess_kinds(tmp_path, syntax, bits, photometric, laterality):
    right = laterality == "R" or (laterality is None and bits == 16)
    img = breast_image(320, 256, bits=bits, right=right, seed=bits)
    stored = (2**bits - 1 - img) if photometric == "MONOCHROME1" else img
    path = write_dicom(tmp_path / "x.dcm", stored, syntax=syntax, bits_stored=bits,
                       photometric=photometric, laterality=laterality,
                       window=(2 ** (bits - 1), 2**bits))
    result = preprocess(path, size=SIZE)
    image, info = result.image, result.info
    assert image.shape == (SIZE, SIZE) and image.dtype == np.uint16
    chest, nipple_side = _side_means(image)
    assert chest > 2 * nipple_side  # tissue bright and chest wall on the left
    assert image[:, 0].max() > 30000  # flush left
    assert info["flipped"] == right
    assert info["laterality"] == ("R" if right else "L")  # from the image when the tag is missing
    assert info["laterality_source"] == ("header" if laterality else "content")
    assert info["photometric"] == photometric and info["bits_stored"] == bits
    assert info["transfer_syntax"] == str(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
    # crop box: the ellipse spans rows 0.10..0.94 and 68 % of the width; the label is out
    y0, x0, y1, x1 = (info[k] for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1"))
    assert y0 <= 0.11 * 320 and y1 >= 0.93 * 320 and y1 - y0 < 0.95 * 320
    label_x0 = 256 - 256 // 30 - 256 // 8
    if right:
        assert x1 == 256 and x0 >= 0.25 * 256 and x0 > 256 - label_x0
    else:
        assert x0 == 0 and x1 <= 0.75 * 256 and x1 < label_x0
    assert json.loads(json.dumps(info)) == info


def test_marker_excluded_and_no_phi(tmp_path):
    img = breast_image(300, 240, seed=5)
    path = write_dicom(tmp_path / "m.dcm", img, window=(2048, 4096), patient_id="P42")
    result = preprocess(path, size=SIZE)
    assert result.info["crop_x1"] < 240 - 240 // 30 - 240 // 8
    # the label (brightest thing in the file) must not survive into the output's right part
    oh, ow = out_shape((result.info["crop_y0"], 0, result.info["crop_y1"],
                        result.info["crop_x1"]), SIZE)
    assert result.image[:, ow:].max() == 0
    text = json.dumps(result.info)
    assert result.info["patient_id"] == "P42"
    assert "Test" not in text and "1950" not in text


@pytest.mark.parametrize("right, k, syntax", [(False, 1, "explicit"), (True, 1, "explicit"),
                                              (False, 4, "explicit"), (True, 4, "j2k")])
def test_marker_inside_the_crop_box_is_cleared(tmp_path, right, k, syntax):
    """A marker beside the narrow top of the breast lies inside its bounding box: it must be
    zeroed, and nothing else may change. k = 4: the breast is found on a subsampled preview
    (explicit) or a J2K resolution level, the image resampled from another level."""
    rows, cols = 400 * k, 320 * k
    clean = breast_image(rows, cols, marker=False, seed=8)
    marked = clean.copy()
    marked[60 * k:75 * k, 180 * k:200 * k] = 4000  # right of the ellipse's narrow top, inside its box
    if right:
        clean, marked = clean[:, ::-1].copy(), marked[:, ::-1].copy()
    lat = "R" if right else "L"
    a = preprocess(write_dicom(tmp_path / "a.dcm", clean, laterality=lat, syntax=syntax, window=(2048, 4096)), SIZE)
    b = preprocess(write_dicom(tmp_path / "b.dcm", marked, laterality=lat, syntax=syntax, window=(2048, 4096)), SIZE)
    assert (a.info["reduce"] > 0) == (syntax == "j2k")
    box = [a.info[k] for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1")]
    assert box == [b.info[k] for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1")]
    x_in_box = (cols - 190 * k) if right else 190 * k
    assert box[0] < 67 * k < box[2] and box[1] < x_in_box < box[3]  # the marker is inside the box
    marker = np.zeros(clean.shape, np.float32)
    marker[60 * k:75 * k, 180 * k:200 * k] = 1
    where = apply_geometry(marker[:, ::-1] if right else marker, b.info, SIZE) >= 0.5
    assert where.sum() > 4 and (b.image[where] == 0).all()  # the marker is background: 0
    # the marker moves the breast mask's threshold a little: at most a few skin-line pixels differ
    changed = a.image != b.image
    assert changed.sum() < 0.01 * SIZE * SIZE


def test_free_text_in_coded_fields_never_reaches_the_info(tmp_path):
    img = breast_image(200, 160, seed=3)
    path = write_dicom(tmp_path / "v.dcm", img, window=(2048, 4096))
    ds = pydicom.dcmread(path)
    ds.ViewPosition = "MEDVITPHI JONES"
    ds.save_as(path)
    assert preprocess(path, size=SIZE).info["view"] == ""
    ds.ViewPosition = "mlo "
    ds.save_as(path)
    assert preprocess(path, size=SIZE).info["view"] == "MLO"
    ds.PhotometricInterpretation = "MEDVITPHI"
    ds.save_as(path)
    with pytest.raises(DicomError) as err:
        preprocess(path, size=SIZE)
    assert err.value.reason == "color" and "MEDVITPHI" not in str(err.value)


def test_flat_and_black_images_keep_the_whole_frame(tmp_path):
    for value in (0, 1000):
        img = np.full((64, 48), value, np.uint16)
        path = write_dicom(tmp_path / f"f{value}.dcm", img, laterality=None)
        result = preprocess(path, size=SIZE)
        info = result.info
        assert (info["crop_y0"], info["crop_x0"], info["crop_y1"], info["crop_x1"]) == (0, 0, 64, 48)
        assert result.image.shape == (SIZE, SIZE)
        assert info["voi"] == "minmax"


def test_laterality_tag_variants(tmp_path):
    img = breast_image(200, 160, right=True, seed=2)
    path = write_dicom(tmp_path / "lat.dcm", img, laterality="R", laterality_tag="Laterality",
                       window=(2048, 4096))
    result = preprocess(path, size=SIZE)
    assert result.info["laterality"] == "R" and result.info["flipped"]


def test_bundled_syntaxes_agree():
    """The same MR image in six encodings gives the same output (decoding: any modality)."""
    base = preprocess(bundled("MR_small.dcm"), size=64, any_modality=True).image
    for name in ("MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        np.testing.assert_array_equal(preprocess(bundled(name), size=64, any_modality=True).image, base)
    for name in ("JPGExtended.dcm", "JPEG2000.dcm", "693_J2KI.dcm",
                 "J2K_pixelrep_mismatch.dcm", "CT_small.dcm"):
        result = preprocess(bundled(name), size=64, any_modality=True)
        assert result.image.shape == (64, 64) and result.image.max() > 0


# ------------------------------------------------------- apply_geometry == preprocess's layout

@pytest.mark.parametrize("photometric, laterality", [("MONOCHROME2", "L"), ("MONOCHROME1", "R")])
def test_apply_geometry_places_a_full_decode_as_preprocess_does(tmp_path, photometric, laterality):
    right, mono1 = laterality == "R", photometric == "MONOCHROME1"
    img = breast_image(320, 256, bits=12, right=right, seed=8)
    path = write_dicom(tmp_path / "g.dcm", 4095 - img if mono1 else img, photometric=photometric,
                       laterality=laterality, window=(2048, 4096))
    result = preprocess(path, size=SIZE)
    assert result.info["flipped"] == right and result.info["reduce"] == 0
    ds = pydicom.dcmread(path)
    unit, _ = to_unit(ds.pixel_array, ds, mono1=mono1)  # full decode, the same VOI
    placed = apply_geometry(unit, result.info, SIZE)
    # the same pixels inside the breast (the background fill is preprocess's alone)
    inside = breast_core(result.image)
    assert inside.mean() > 0.2
    np.testing.assert_allclose(to_uint16(placed)[inside], result.image[inside], atol=1)
    as_text = {k: str(int(v) if isinstance(v, bool) else v) for k, v in result.info.items()}  # a manifest row
    np.testing.assert_array_equal(apply_geometry(unit, as_text, SIZE), placed)


def test_apply_geometry_puts_a_square_on_the_bright_spot_of_a_reduced_decode(tmp_path):
    img = breast_image(640, 512, bits=12, right=True, seed=9)
    square = np.zeros(img.shape, bool)
    square[300:340, 380:420] = True  # inside the (right) breast
    img[square] = 4095
    path = write_dicom(tmp_path / "sq.dcm", img, syntax="j2k", laterality="R", window=(2048, 4096))
    result = preprocess(path, size=SIZE)
    assert result.info["reduce"] >= 1 and result.info["flipped"]  # decoded at 1/2 size or less
    mask = apply_geometry(square, result.info, SIZE) >= 0.5
    bright = result.image > 0.97 * 65535
    assert mask.sum() > 20 and bright[mask].mean() > 0.8
    ys, xs = np.nonzero(mask)
    by, bx = np.nonzero(bright)
    assert abs(ys.mean() - by.mean()) < 1 and abs(xs.mean() - bx.mean()) < 1
    nearest = apply_geometry(square, result.info, SIZE, interpolation=cv2.INTER_NEAREST)
    ny, nx = np.nonzero(nearest)
    assert set(np.unique(nearest)) == {0.0, 1.0}
    assert abs(ny.mean() - ys.mean()) < 1 and abs(nx.mean() - xs.mean()) < 1


def test_apply_geometry_errors():
    info = {"crop_y0": 0, "crop_x0": 0, "crop_y1": 50, "crop_x1": 40, "flipped": False}
    with pytest.raises(ValueError, match="crop box"):
        apply_geometry(np.zeros((50, 40)), {"flipped": True}, SIZE)
    with pytest.raises(ValueError, match="outside"):
        apply_geometry(np.zeros((40, 40)), info, SIZE)
    assert apply_geometry(np.ones((50, 40)), info, 10)[:, :8].all()  # 50x40 -> 10x8, flush left


# ------------------------------------------------------- reduced path vs full decode

@pytest.fixture(scope="session")
def big_j2k(tmp_path_factory):
    """4096 x 3328 12-bit JPEG 2000 lossless, R breast, MONOCHROME1 (a few seconds)."""
    img = breast_image(4096, 3328, bits=12, right=True, seed=11)
    path = tmp_path_factory.mktemp("big") / "big_j2k.dcm"
    return write_dicom(path, 4095 - img, syntax="j2k", photometric="MONOCHROME1",
                       laterality="R", window=(2048, 4096))


@pytest.fixture(scope="session")
def big_j2k_reference(big_j2k):
    result = preprocess(big_j2k, size=512)
    return result, reference(big_j2k, result.info, 512, 4095)


def test_j2k_reduced_matches_full_decode(big_j2k, big_j2k_reference):
    result, ref = big_j2k_reference
    info = result.info
    assert info["decoder"] == "pillow-j2k" and info["flipped"]
    long_side = max(info["crop_y1"] - info["crop_y0"], info["crop_x1"] - info["crop_x0"])
    assert info["reduce"] >= 2  # the speed point: never a full 4096 px decode
    assert long_side / 2 ** info["reduce"] >= 512 > long_side / 2 ** (info["reduce"] + 1)
    assert filled_diff(result.image, ref) <= 0.005


def test_j2k_level_fallback(big_j2k, big_j2k_reference, monkeypatch):
    real = read.decode_j2k_pillow
    tried = []

    def flaky(codestream, reduce, info):
        tried.append(reduce)
        if reduce >= 2:
            raise OSError("simulated: this level fails")
        return real(codestream, reduce, info)

    monkeypatch.setattr(read, "decode_j2k_pillow", flaky)
    result = preprocess(big_j2k, size=512)
    first, ref = big_j2k_reference
    assert result.info["reduce"] == 1 and 1 in tried and max(tried) >= 3
    crop = ("crop_y0", "crop_x0", "crop_y1", "crop_x1")
    assert [result.info[k] for k in crop] == [first.info[k] for k in crop]
    assert filled_diff(result.image, ref) <= 0.005

    monkeypatch.setattr(read, "decode_j2k_pillow", lambda *a: (_ for _ in ()).throw(OSError()))
    full = preprocess(big_j2k, size=512)  # every level fails: pydicom full decode
    assert full.info["decoder"] == "pydicom" and full.info["reduce"] == 0
    assert filled_diff(full.image, ref) <= 0.001


def test_sv1_matches_full_decode(tmp_path):
    img = breast_image(2294, 1914, bits=14, seed=4)
    path = write_dicom(tmp_path / "sv1.dcm", img, syntax="sv1", bits_stored=14,
                       window=([8000, 5000], [16000, 4000]), voi_function="SIGMOID")
    result = preprocess(path, size=256)
    assert result.info["voi"] == "sigmoid" and result.info["reduce"] == 0
    assert result.info["decoder"] in ("dicomsdl", "pydicom")
    assert filled_diff(result.image, reference(path, result.info, 256, 2**14 - 1)) <= 0.001


def test_crop_keeps_the_whole_synth_breast(tmp_path):
    """The breast is found before the VOI window (which clips fatty tissue to air-black): on
    realistic synthetic mammograms of every machine the crop box holds the whole breast, and the
    background fill (issue 14) zeroes none of it: the breast mask keeps fatty tissue and skin."""
    from medvit.dicom import synth

    rows = synth.plan_dataset(patients=6, seed=3, cancer_rate=0.5, size="small")
    for row in rows[::3]:
        synth.make_file(row, str(tmp_path / "out"))
        path = next((tmp_path / "out").rglob(f"{row['image_id']}.dcm"))
        _, drawing = synth.render(row)
        result = preprocess(path, (256, 128))
        info = result.info
        ys, xs = np.nonzero(drawing.breast)
        inside = ((ys >= info["crop_y0"]) & (ys < info["crop_y1"]) & (xs >= info["crop_x0"]) & (xs < info["crop_x1"]))
        assert inside.mean() > 0.99, (row["image_id"], row["view"], info)
        breast = apply_geometry(drawing.breast.astype(np.float32), info, (256, 128)) >= 0.99
        assert (result.image[breast] > 0).mean() > 0.999, (row["image_id"], row["view"], info)
        air = apply_geometry((~drawing.breast & ~drawing.marker).astype(np.float32), info, (256, 128)) >= 0.99
        assert (result.image[air] == 0).mean() > 0.9  # the background is 0 but for the soft edge


# ------------------------------------------------------------------ malformed LUTs (issue 11)

def test_malformed_modality_lut_falls_back_to_rescale_then_identity(tmp_path):
    """pylibjpeg-data's JPEGLosslessP14SV1_1s_1f_u_16_16.dcm has a Modality LUT Sequence item
    without LUTDescriptor: pydicom's apply_modality_lut raises and the image was lost
    (decode_failed). A malformed or empty LUT falls back to the next rule, recorded."""
    from dicom_factory import edit_dicom, lut_item

    plain = write_dicom(tmp_path / "plain.dcm", breast_image(96, 80), window=(2000.0, 3500.0))
    expected = preprocess(plain, 48)
    assert expected.info["lut_fallback"] == ""
    no_descriptor = edit_dicom(plain, tmp_path / "a.dcm", ModalityLUTSequence=[lut_item(range(4096), None)])
    empty = edit_dicom(plain, tmp_path / "b.dcm", ModalityLUTSequence=[])
    no_data = edit_dicom(plain, tmp_path / "c.dcm", ModalityLUTSequence=[lut_item(None, [4096, 0, 16])])
    for path in (no_descriptor, empty, no_data):
        out = preprocess(path, 48)
        assert out.info["lut_fallback"] == "modality_lut:identity", path.name
        np.testing.assert_array_equal(out.image, expected.image)  # identity: the same image
    rescaled = edit_dicom(no_descriptor, tmp_path / "d.dcm", RescaleSlope=1, RescaleIntercept=0)
    out = preprocess(rescaled, 48)
    assert out.info["lut_fallback"] == "modality_lut:rescale" and out.info["voi"] == "linear"
    np.testing.assert_array_equal(out.image, expected.image)


def test_malformed_voi_lut_falls_back_to_the_window(tmp_path):
    from dicom_factory import edit_dicom, lut_item

    plain = write_dicom(tmp_path / "plain.dcm", breast_image(96, 80), window=(2000.0, 3500.0))
    expected = preprocess(plain, 48)
    for i, item in enumerate([lut_item(None, [4096, 0, 12]), lut_item([1, 2], None)]):
        bad = edit_dicom(plain, tmp_path / f"v{i}.dcm", VOILUTSequence=[item])
        out = preprocess(bad, 48)
        assert (out.info["voi"], out.info["lut_fallback"]) == ("linear", "voi_lut:linear")
        np.testing.assert_array_equal(out.image, expected.image)
    no_window = edit_dicom(tmp_path / "v0.dcm", tmp_path / "nw.dcm", WindowCenter=None, WindowWidth=None)
    assert preprocess(no_window, 48).info["lut_fallback"] == "voi_lut:minmax"


def test_modality_check(tmp_path):
    """Issue 14: an explicit Modality other than MG, or a SOP class of another modality, is
    not_mammogram unless any_modality; MG/DX/CR/SC SOP classes without a Modality pass (RSNA's
    files: DX For Presentation in the file meta only). What decided is the info's `modality`."""
    from dicom_factory import CT_IMAGE, edit_dicom

    mg = write_dicom(tmp_path / "mg.dcm", breast_image(64, 48))
    ct = edit_dicom(mg, tmp_path / "ct.dcm", Modality="CT", SOPClassUID=CT_IMAGE)
    bare = edit_dicom(mg, tmp_path / "bare.dcm", Modality=None, SOPClassUID=None, ViewPosition=None)
    dx = edit_dicom(mg, tmp_path / "dx.dcm", Modality=None, SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1")
    mr_on_mg_class = edit_dicom(mg, tmp_path / "odd.dcm", Modality="MR")
    assert preprocess(mg, 32).info["modality"] == "MG"
    assert preprocess(bare, 32).info["modality"] == "(none; MG SOP class)"  # the file meta's class
    assert preprocess(dx, 32).info["modality"] == "(none; DX SOP class)"
    for path, label in ((ct, "CT"), (mr_on_mg_class, "MR")):
        with pytest.raises(DicomError) as err:
            preprocess(path, 32)
        assert err.value.reason == "not_mammogram" and "--any-modality" in str(err.value)
        assert err.value.info == {"modality": label}  # recorded on the error row
        assert preprocess(path, 32, any_modality=True).info["modality"] == label
    ct_class_only = edit_dicom(ct, tmp_path / "ct_class.dcm", Modality=None)  # no Modality, CT SOP class
    with pytest.raises(DicomError) as err:
        preprocess(ct_class_only, 32)
    assert err.value.reason == "not_mammogram" and err.value.info == {"modality": "(none; CT SOP class)"}
    assert "CT Image Storage" in str(err.value)
    free_text = edit_dicom(ct, tmp_path / "x.dcm", Modality="SMITH")  # not a defined term: never echoed
    assert preprocess(free_text, 32, any_modality=True).info["modality"] == "other"
    with pytest.raises(DicomError) as err:
        preprocess(free_text, 32)
    assert "SMITH" not in str(err.value)


# ------------------------------------------------------------------ H x W canvases (issue 14)

def test_rectangular_canvas_is_the_square_one_cut_at_its_width(tmp_path):
    """A crop that fills the height is resized the same way on 128x128 and 128x64: the narrow
    canvas is the square one's left part (flush left, top); the size may be given three ways."""
    from medvit.errors import ConfigError

    path = write_dicom(tmp_path / "narrow.dcm", breast_image(400, 160, seed=4), window=(2048, 4096))
    square = preprocess(path, 128)
    narrow = [preprocess(path, size) for size in ((128, 64), "128x64", [128, 64])]
    assert square.image.shape == (128, 128) and square.info["canvas"] == "128x128"
    for out in narrow:
        assert out.image.shape == (128, 64) and out.image.dtype == np.uint16 and out.info["canvas"] == "128x64"
        np.testing.assert_array_equal(out.image, narrow[0].image)
    np.testing.assert_array_equal(narrow[0].image, square.image[:, :64])
    assert square.image[:, 64:].max() == 0 and narrow[0].image[:, 0].max() > 30000
    with pytest.raises(ConfigError, match="image size"):
        preprocess(path, "128x4")


@pytest.mark.parametrize("size", [(64, 128), (128, 64), (96, 40)])
def test_apply_geometry_on_rectangular_canvases(tmp_path, size):
    img = breast_image(320, 256, bits=12, right=True, seed=8)
    path = write_dicom(tmp_path / "g.dcm", img, laterality="R", window=(2048, 4096))
    result = preprocess(path, size)
    assert result.image.shape == size and result.info["flipped"]
    box = tuple(result.info[k] for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1"))
    oh, ow = out_shape(box, size)
    assert (oh == size[0] or ow == size[1]) and oh <= size[0] and ow <= size[1]  # fits, touching one side
    assert abs(ow / oh - (box[3] - box[1]) / (box[2] - box[0])) < 0.05  # aspect kept
    ds = pydicom.dcmread(path)
    unit, _ = to_unit(ds.pixel_array, ds, mono1=False)
    placed = apply_geometry(unit, result.info, "x".join(map(str, size)))  # the manifest's text
    assert placed.shape == size and placed[:, ow:].max(initial=0) == 0
    inside = breast_core(result.image)
    assert inside.sum() > 100
    np.testing.assert_allclose(to_uint16(placed)[inside], result.image[inside], atol=1)


@pytest.mark.parametrize("rows, size", [(320, 128), (320, (128, 64)), (1280, 128), (2560, (512, 256))])
def test_no_step_where_the_crop_meets_the_padding(tmp_path, rows, size):
    """Issue 14: a SIGMOID window centred on the air of a MONOCHROME1 file makes the background
    mid-grey; the crop box then ended in a vertical grey-to-black line, its position a feature.
    Every pixel outside the breast is 0 now, so the columns right of the breast are 0 inside
    the crop box as outside it, and the manifest records the grey it had."""
    img = breast_image(rows, rows * 4 // 5, bits=12, marker=False, seed=8)
    air = int(np.median(img[:, -5:]))
    path = write_dicom(tmp_path / "grey.dcm", 4095 - img, photometric="MONOCHROME1",
                       window=(4095 - air, 1500), voi_function="SIGMOID")
    result = preprocess(path, size)
    assert result.info["voi"] == "sigmoid" and 0.45 < result.info["background_level"] < 0.55
    image = result.image.astype(np.int64)
    box = tuple(result.info[k] for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1"))
    oh, ow = out_shape(box, size)
    tissue_end = np.array([np.flatnonzero(r > 0.3 * 65535).max(initial=-1) for r in image])
    clear = (tissue_end < ow - 8) & (tissue_end >= 0)  # rows whose breast ends well inside the box
    assert clear.sum() > 0.3 * oh
    assert (image[clear, ow - 2:] == 0).all()  # the box's last columns, as the padding beyond: 0
    # no vertical line: only the widest rows' skin reaches the crop's last column (it was all grey)
    assert (image[:, ow - 1] > 0).sum() < 0.2 * oh
