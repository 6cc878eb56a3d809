"""Stored pixel values -> [0, 1] display values: the modality LUT, then the VOI (window or LUT),
then MONOCHROME1 inversion, with pydicom's own functions. A malformed or empty LUT falls back to
the next rule (rescale or identity; window or min-max), recorded in `notes` for the manifest's
`lut_fallback` column. Used by `medvit.dicom.normalize.preprocess`, the one preprocessing path.
"""
from __future__ import annotations

import warnings

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

MAX_TABLE = 1 << 20  # largest stored-value span turned into a lookup table


def to_unit(raw: np.ndarray, ds: Dataset, mono1: bool, crop: tuple[int, int, int, int] | None = None,
            notes: list[str] | None = None) -> tuple[np.ndarray, str]:
    """Stored values -> modality LUT -> VOI -> [0, 1] float32 (-> inverted if MONOCHROME1).
    The value range comes from the whole of `raw`; only `crop` (y0, x0, y1, x1) is returned.
    LUT fallbacks taken are appended to `notes` (see `modality_values`, `voi_values`).

    pydicom's apply_modality_lut / apply_voi / apply_windowing do the work, applied once to
    every distinct stored value (a lookup table) instead of to every pixel: same numbers,
    a fraction of the time on a 4096 px image (tests compare it with pydicom's direct call)."""
    region = raw if crop is None else raw[crop[0]:crop[2], crop[1]:crop[3]]
    lo, hi = int(raw.min()), int(raw.max())
    if raw.dtype.kind in "iu" and hi - lo < MAX_TABLE:
        values = np.arange(lo, hi + 1, dtype=np.int64).astype(raw.dtype)
        table, vmin, vmax, voi = voi_values(values, ds, notes)
        if raw.dtype.kind == "u":
            index = region - raw.dtype.type(lo)  # stays unsigned: lo is the minimum
        else:
            index = region.astype(np.int32) - lo
        out = _rescale(table, vmin, vmax)[index]
    else:
        out, vmin, vmax, voi = voi_values(region, ds, notes)
        out = _rescale(out, vmin, vmax)
    return (1.0 - out if mono1 else out), voi


def detection_view(raw: np.ndarray, ds: Dataset, mono1: bool, notes: list[str] | None = None) -> np.ndarray:
    """Modality values scaled min-max to [0, 1], tissue bright, for finding the breast. The VOI
    window is made for reading tissue: it clips fatty tissue to the same black as air, so the
    breast outline is found before it, where air and skin are far apart."""
    values = np.asarray(modality_values(raw, ds, notes), dtype=np.float32)
    unit = _rescale(values, float(values.min()), float(values.max()))
    return 1.0 - unit if mono1 else unit


def _lut_item_ok(seq) -> bool:
    """The first item of a (Modality or VOI) LUT Sequence has a 3-value descriptor and data."""
    if not seq:
        return False
    item = seq[0]
    desc = item.get("LUTDescriptor")
    data = item.get("LUTData")
    try:
        return desc is not None and len(desc) == 3 and data is not None and len(data) > 0
    except TypeError:  # a single value where three are due
        return False


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def modality_values(values: np.ndarray, ds: Dataset, notes: list[str] | None = None) -> np.ndarray:
    """pydicom's modality LUT. A Modality LUT Sequence that is empty or malformed (an item
    without LUTDescriptor, as in pylibjpeg-data's JPEGLosslessP14SV1_1s_1f_u_16_16.dcm, on
    which pydicom raises) falls back to the next rule, Rescale Slope/Intercept, else identity;
    the fallback taken is appended to `notes` ("modality_lut:rescale" / "modality_lut:identity")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "ModalityLUTSequence" not in ds:
            return apply_modality_lut(values, ds)
        if _lut_item_ok(ds.ModalityLUTSequence):
            try:
                return apply_modality_lut(values, ds)
            except Exception:  # noqa: BLE001 - any pydicom failure on a bad LUT: next rule
                pass
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    try:
        slope, intercept = float(1 if slope is None else slope), float(0 if intercept is None else intercept)
    except (TypeError, ValueError):
        slope = intercept = None
    if slope is None or ("RescaleSlope" not in ds and "RescaleIntercept" not in ds):
        _note(notes, "modality_lut:identity")
        return values
    _note(notes, "modality_lut:rescale")
    return values * slope + intercept if (slope, intercept) != (1.0, 0.0) else values


def voi_values(values: np.ndarray, ds: Dataset, notes: list[str] | None = None
               ) -> tuple[np.ndarray, float, float, str]:
    """pydicom modality LUT + VOI (first window / first LUT when several) applied to
    `values`, plus the nominal output range (vmin, vmax) and the VOI kind used. A VOI LUT
    Sequence that is empty or malformed falls back to the next rule (the window, else the data
    range), noted in `notes` as "voi_lut:<the kind used>"."""
    modality = modality_values(values, ds, notes)
    ds = _without_bad_modality_lut(ds)  # pydicom's VOI functions read the modality LUT's descriptor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on float input to a VOI LUT
        bad_lut = "VOILUTSequence" in ds and not _has_voi_lut(ds)
        if _has_voi_lut(ds):
            try:
                out = apply_voi(modality, ds)
                lut = _lut_range(ds)
                return out, lut[0], lut[1], "lut_sequence"
            except Exception:  # noqa: BLE001 - a LUT pydicom cannot apply: next rule
                bad_lut = True
        out, vmin, vmax, kind = _window_or_range(modality, ds)
        if bad_lut:
            _note(notes, f"voi_lut:{kind}")
        return out, vmin, vmax, kind


def _without_bad_modality_lut(ds: Dataset) -> Dataset:
    """`ds`, or a shallow copy without its Modality LUT Sequence when that is malformed."""
    if "ModalityLUTSequence" not in ds or _lut_item_ok(ds.ModalityLUTSequence):
        return ds
    copy = Dataset()
    for elem in ds:
        if elem.keyword != "ModalityLUTSequence":
            copy.add(elem)
    return copy


def _window_or_range(modality: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float, str]:
    """The first VOI window, else the data range (minmax)."""
    kind = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            out = apply_windowing(modality, ds)
            with np.errstate(over="ignore"):  # SIGMOID at the probes
                ends = apply_windowing(np.array([-1e30, 1e30]), ds)
            return out, float(ends[0]), float(ends[1]), kind.lower()
        except (ValueError, TypeError, IndexError, AttributeError):
            pass  # width < 1, unknown function, missing BitsStored: fall back to the data range
    modality = np.asarray(modality, dtype=np.float64)
    return modality, float(modality.min()), float(modality.max()), "minmax"


def _has_voi_lut(ds: Dataset) -> bool:
    return _lut_item_ok(ds.get("VOILUTSequence"))


def _lut_range(ds: Dataset) -> tuple[float, float]:
    """Range of the first VOI LUT's entries (LUTs often use far less than their nominal
    bit depth, so the nominal 2**bits - 1 would leave the image dark)."""
    first, entries = int(ds.VOILUTSequence[0].LUTDescriptor[1]), int(
        ds.VOILUTSequence[0].LUTDescriptor[0] or 65536)
    lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds)
    return float(lut.min()), float(lut.max())


def _rescale(arr: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    if vmax <= vmin:
        return np.zeros(arr.shape, np.float32)
    out = (np.asarray(arr, np.float64) - vmin) / (vmax - vmin)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
