"""The one preprocessing function: DICOM file -> (H, W) uint16 canvas, tissue bright,
chest wall on the left. `medvit ingest` and `medvit predict` both call `preprocess`.

decode -> modality LUT -> VOI -> MONOCHROME1 invert -> breast crop -> background to 0 -> orient
-> resize + pad. The canvas is H x W (`medvit.canvas`: a tuple in code, "512x256" in files; one
number is a square). `apply_geometry` repeats the crop, orientation and resize on any
full-resolution array (e.g. a lesion mask) with the crop box and flip recorded in the info dict,
through the same code.

Background: after the VOI window (SIGMOID, MONOCHROME1) the air around the breast is often grey,
not black, so the crop's edge against the zero padding would be a vertical line whose position
(the crop's width) the model could learn. Every pixel outside the breast (the mask the crop box
is found from) is set to the padding value 0; the level it had is `info["background_level"]`.

Speed: JPEG 2000 files are decoded twice at low resolution instead of once at full size: a
preview level (long side >= PREVIEW_SIDE) to find the breast, then the coarsest level whose
crop still covers the canvas (often the same level). The modality LUT and VOI are
elementwise, so applying them to a lower resolution level is valid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset

from medvit.canvas import Size, parse_size, size_text
from medvit.dicom import DEFAULT_SIZE
from medvit.dicom.lut import detection_view, to_unit  # noqa: F401 (to_unit: part of this module's face)
from medvit.dicom.header import PHOTOMETRICS, VIEWS, check_modality, defined_term, modality_of
from medvit.dicom.read import Pixels, read_dataset
from medvit.errors import ConfigError, DicomError

# Bump when preprocessing output changes: ingest's cache key carries it, so caches get rebuilt.
# 2: the breast is found before the VOI window. 3: markers inside the crop box are zeroed.
# 4: a malformed modality/VOI LUT falls back to the next rule; non-mammograms are refused.
# 5: H x W canvases; pixels outside the breast are set to 0 (no edge where the crop meets the padding).
VERSION = 5
PREVIEW_SIDE = 256   # long side of the image the crop box is found on
CROP_KEYS = ("crop_y0", "crop_x0", "crop_y1", "crop_x1")  # the crop box in Preprocessed.info


@dataclass
class Preprocessed:
    image: np.ndarray  # (H, W) uint16, tissue bright, chest wall left, 0 = padding/air
    info: dict = field(default_factory=dict)  # header facts + what was done; JSON-able, no PHI


MIN_CANVAS = 8


def canvas_of(size: int | str | Size) -> Size:
    """(H, W) of a canvas given as 512, "512x256" or (512, 256); ConfigError when unusable
    (a side under MIN_CANVAS: no mammogram survives a few pixels)."""
    try:
        h, w = parse_size(size, "image size")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if min(h, w) < MIN_CANVAS:
        raise ConfigError(f"image size {h}x{w}: each side of an ingest canvas must be at least {MIN_CANVAS} px")
    return h, w


def preprocess(path: str | Path, size: int | str | Size = DEFAULT_SIZE, *,
               any_modality: bool = False) -> Preprocessed:
    """Read one DICOM and return the model-ready (H, W) image (`size`: 512, "512x256" or
    (512, 256)). Raises DicomError.

    Layout of the output: the breast crop is scaled (aspect kept) to fit the H x W canvas, placed
    flush left (chest wall against the left edge) and centred vertically (a crop that fills the
    height, the usual case, sits at the top); the rest is 0, and so is every pixel outside the
    breast. Values: VOI output mapped to 0..65535. A file that is not a mammogram is refused
    (`not_mammogram`, see `check_modality`) unless `any_modality`."""
    canvas = canvas_of(size)
    ds = read_dataset(path)
    check_modality(ds, path, any_modality)
    pixels = Pixels(ds, path)
    try:
        return _preprocess(ds, pixels, canvas)
    except DicomError:
        raise
    except MemoryError:
        raise DicomError(path, "bad_dimensions", "out of memory decoding the image") from None
    except Exception as exc:  # a decoder or LUT failure we did not foresee: name the file
        raise DicomError(path, "decode_failed", f"{type(exc).__name__}: {exc}"[:300]) from None


def _preprocess(ds: Dataset, pixels: Pixels, canvas: Size) -> Preprocessed:
    mono1 = str(ds.PhotometricInterpretation).upper() == "MONOCHROME1"
    # 1. preview: find the breast and its side
    preview_level = _coarsest_level(max(pixels.rows, pixels.cols), PREVIEW_SIDE)
    raw, level, _ = pixels.get(preview_level)
    step = 2 ** (preview_level - level)  # non-J2K (or failed level): subsample the decode
    notes: list[str] = []  # LUT fallbacks taken (a malformed LUT falls back to the next rule)
    small = detection_view(raw[::step, ::step], ds, mono1, notes)
    scale = 2**level * step
    small_box, breast = find_breast(small)
    box = scale_box(small_box, scale, pixels.rows, pixels.cols)
    laterality = laterality_of(ds)
    flip = laterality == "R" if laterality else tissue_on_right(
        small[box[0] // scale: -(-box[2] // scale), box[1] // scale: -(-box[3] // scale)])
    # 2. the level to resample from: the coarsest whose crop still covers the canvas
    raw, level, decoder = pixels.get(min(_resample_level(box, canvas), preview_level))
    y0, x0, y1, x1 = scale_box(box, 1 / 2**level, *raw.shape)
    extended = (y0, x0, min(y1 + 1, raw.shape[0]), min(x1 + 1, raw.shape[1]))
    unit, voi = to_unit(raw, ds, mono1, crop=extended if level else (y0, x0, y1, x1), notes=notes)
    unit = align_level(unit, level)[: y1 - y0, : x1 - x0]
    unit, background = fill_background(unit, breast, box, scale)
    image = _place(unit, box, flip, canvas)
    info = header_info(ds) | {
        "laterality": laterality or ("R" if flip else "L"),  # R images have the chest wall on the right
        "laterality_source": "header" if laterality else "content",
        "voi": voi, **dict(zip(CROP_KEYS, box)), "flipped": bool(flip), "reduce": level,
        "decoder": decoder, "lut_fallback": ";".join(dict.fromkeys(notes)),
        "background_level": background, "canvas": size_text(canvas)}
    return Preprocessed(to_uint16(image), info)


def _resample_level(box: tuple[int, int, int, int], canvas: Size) -> int:
    """The coarsest level at which the crop's binding side (the one that fills the canvas)
    still has at least the canvas's pixels on that side."""
    h, w = box[2] - box[0], box[3] - box[1]
    height, width = canvas
    return _coarsest_level(h, height) if h * width >= w * height else _coarsest_level(w, width)


def _coarsest_level(long_side: int, target: int) -> int:
    """Largest r with ceil(long_side / 2**r) >= target (0 when already smaller)."""
    r = 0
    while -(-long_side // 2 ** (r + 1)) >= target:
        r += 1
    return r


# --------------------------------------------------------------------------- geometry

def _components(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Connected bright regions of a small tissue-bright [0, 1] image: (labels, stats, index
    of the largest, None when there is none)."""
    img8 = cv2.GaussianBlur((unit * 255).astype(np.uint8), (3, 3), 0)
    otsu, _ = cv2.threshold(img8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # half the Otsu level: keeps faint fatty tissue when dense tissue and air are the modes
    mask = (img8 > otsu / 2).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if count >= 2 else None
    return labels, stats, best


def _margin(shape: tuple[int, ...]) -> int:
    return max(2, round(0.01 * max(shape)))


def find_breast(unit: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """On a small tissue-bright [0, 1] image: the bounding box (y0, x0, y1, x1) of the largest
    bright connected region, with a small margin (the whole image when empty or flat), and the
    bool mask of the breast: that region, the regions near it (within the margin: they may be
    tissue) and the holes inside them. Everything else is background, set to 0 by
    `fill_background`: air, and burned-in markers and labels (bright regions apart from the
    breast; one can lie inside the box, beside the narrow top of an MLO view)."""
    h, w = unit.shape
    labels, stats, best = _components(unit)
    if best is None:
        return (0, 0, h, w), np.ones(unit.shape, bool)
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    m = _margin(unit.shape)
    box = max(0, y - m), max(0, x - m), min(h, y + bh + m), min(w, x + bw + m)
    main = (labels == best).astype(np.uint8)
    near = cv2.dilate(main, np.ones((2 * m + 1, 2 * m + 1), np.uint8)) > 0
    keep = np.isin(labels, np.unique(labels[near & (labels > 0)])).astype(np.uint8)
    contours, _ = cv2.findContours(keep, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(keep, contours, -1, 1, thickness=cv2.FILLED)  # fill holes (dark fat)
    return box, keep > 0


def fill_background(unit: np.ndarray, breast: np.ndarray, box: tuple[int, int, int, int],
                    scale: int) -> tuple[np.ndarray, float | None]:
    """Set `unit` (the crop `box` of the windowed image, any resolution) to 0 outside the breast
    (`breast`: a mask at 1/`scale` of full resolution, grown by one of its pixels so the skin
    line is kept, resized bilinearly so the edge is a soft ramp). Returns the filled crop and
    the background level it had (median of the pixels set to 0, in [0, 1] of the windowed
    image; None when the breast fills the box)."""
    y0, x0, y1, x1 = box
    part = breast[y0 // scale: -(-y1 // scale), x0 // scale: -(-x1 // scale)]
    if part.all():
        return unit, None
    grown = cv2.dilate(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    soft = cv2.resize(grown, (unit.shape[1], unit.shape[0]), interpolation=cv2.INTER_LINEAR)
    outside = soft <= 0.0
    level = round(float(np.median(unit[outside])), 4) if outside.any() else None
    return unit * soft, level


def scale_box(box: tuple[int, int, int, int], factor: float, rows: int, cols: int
              ) -> tuple[int, int, int, int]:
    """Box scaled by `factor`, rounded outward, clipped to rows x cols."""
    y0, x0, y1, x1 = box
    return (int(np.floor(y0 * factor)), int(np.floor(x0 * factor)),
            min(rows, int(np.ceil(y1 * factor))), min(cols, int(np.ceil(x1 * factor))))


def align_level(unit: np.ndarray, level: int) -> np.ndarray:
    """Move a J2K reduced-level image onto the grid of a box average of the full image.
    A level-r sample i is a low-pass value centred on full-res pixel k*i (k = 2**r); a box
    of k pixels is centred on k*i + (k-1)/2. Resampling at i + (k-1)/(2k) (bilinear)
    cut the mean difference to full decode + INTER_AREA about 3x on a 4096 px image."""
    if level == 0:
        return unit
    shift = (2**level - 1) / 2 ** (level + 1)
    matrix = np.float32([[1, 0, shift], [0, 1, shift]])
    return cv2.warpAffine(unit, matrix, (unit.shape[1], unit.shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def laterality_of(ds: Dataset) -> str:
    """'L', 'R' or '' from ImageLaterality, else Laterality."""
    for key in ("ImageLaterality", "Laterality"):
        value = str(ds.get(key, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return ""


def tissue_on_right(unit: np.ndarray) -> bool:
    """True when the right half holds more tissue: the chest wall is on the right."""
    half = unit.shape[1] // 2
    return float(unit[:, unit.shape[1] - half:].sum()) > float(unit[:, :half].sum())


def out_shape(box: tuple[int, int, int, int], size: int | str | Size) -> tuple[int, int]:
    """(rows, cols) of the crop scaled (aspect kept) to fit the canvas `size`, from the full-res box."""
    height, width = canvas_of(size)
    h, w = box[2] - box[0], box[3] - box[1]
    scale = min(height / h, width / w)
    return max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))


def fit_and_pad(unit: np.ndarray, size: int | str | Size, shape: tuple[int, int],
                interpolation: int | None = None) -> np.ndarray:
    """Resize to `shape` (`interpolation`, a cv2 flag; default INTER_AREA down, INTER_LINEAR
    up) and pad with 0 to the H x W canvas `size`: flush left, centred vertically."""
    height, width = canvas_of(size)
    oh, ow = shape
    if interpolation is None:
        shrinking = oh <= unit.shape[0] and ow <= unit.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(unit, np.float32), (ow, oh), interpolation=interpolation)
    out = np.zeros((height, width), np.float32)
    top = (height - oh) // 2
    out[top:top + oh, :ow] = resized
    return out


def _place(crop: np.ndarray, box: tuple[int, int, int, int], flipped: bool, size: int | str | Size,
           interpolation: int | None = None) -> np.ndarray:
    """The layout after the crop, shared by `preprocess` and `apply_geometry`: flip, then
    resize (aspect kept, to fit the canvas, from the full-res `box`) and pad."""
    if flipped:
        crop = crop[:, ::-1]
    return fit_and_pad(crop, size, out_shape(box, size), interpolation)


def apply_geometry(array: np.ndarray, info: dict, size: int | str | Size, *,
                   interpolation: int | None = None) -> np.ndarray:
    """Place a full-resolution array in stored geometry (a lesion mask, a full decode) exactly
    where `preprocess(path, size)` placed the image: crop to info's crop box, flip when
    info["flipped"], resize with the aspect kept and pad flush left, centred vertically.
    (The background fill is not repeated: a lesion mask lies inside the breast.)

    `info` is `Preprocessed.info` or a manifest row (numbers and flags may be text); `size` the
    canvas (512, "512x256", (512, 256); the manifest's `canvas` column is such text).
    `interpolation` is a cv2 flag; None resizes as preprocess does. Returns (H, W) float32.
    Raises ValueError when info has no usable crop box or the box lies outside `array`."""
    try:
        box = tuple(int(float(info[k])) for k in CROP_KEYS)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"the preprocessing info lacks a usable crop box ({', '.join(CROP_KEYS)}): "
                         f"{err}") from err
    array = np.asarray(array)
    if box[2] > array.shape[0] or box[3] > array.shape[1] or min(box) < 0:
        raise ValueError(f"crop box {box} lies outside the {array.shape[0]}x{array.shape[1]} array")
    flipped = info.get("flipped", False)
    if isinstance(flipped, str):  # manifest text: "1"/"0" (or "True"/"False")
        flipped = flipped.strip().lower() in ("1", "true", "yes")
    return _place(array[box[0]:box[2], box[1]:box[3]], box, bool(flipped), canvas_of(size), interpolation)


def to_uint16(unit: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(unit, 0.0, 1.0) * 65535.0).astype(np.uint16)


# ------------------------------------------------------------------------------- info

def header_info(ds: Dataset) -> dict:
    """Plain, PHI-free header facts for the manifest."""
    return {
        "patient_id": str(ds.get("PatientID", "") or ""),  # raw: pseudonymised by medvit.privacy before any output
        "modality": modality_of(ds),
        "view": defined_term(ds.get("ViewPosition", ""), VIEWS),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "bits_stored": int(ds.get("BitsStored", ds.get("BitsAllocated", 0)) or 0),
        "photometric": defined_term(ds.PhotometricInterpretation, PHOTOMETRICS),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
    }
