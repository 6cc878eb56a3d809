"""Read and validate DICOM files; decode stored pixel values with the fastest right decoder.

- JPEG 2000 (.90/.91): Pillow + OpenJPEG straight from the codestream, at a chosen
  resolution level (`reduce`), so a 512 px target never pays for a 4096 px decode. A level
  that fails steps back one level at a time, then to a full decode by pydicom.
- JPEG Lossless (.57/.70): dicomsdl (measured ~2.5x faster than pydicom's plugins),
  falling back to pydicom (pylibjpeg-libjpeg / gdcm).
- Anything else (uncompressed, JPEG-LS, RLE, deflate, ...): pydicom `pixel_array`.

Every failure is a `DicomError(path, reason, detail)` with one of the stable reasons:
unreadable, not_dicom, no_pixel_data, color, multi_frame, bad_dimensions, truncated,
unsupported_syntax, decode_failed; not_mammogram comes from the modality rule beside it
(`medvit.dicom.header.check_modality`, called by preprocess).
Messages never carry header text (no PHI); `quiet_pydicom` keeps pydicom's own warnings, which
can quote header values, out of the logs.
"""
from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    UID,
)

from medvit.dicom.header import PHOTOMETRICS, defined_term
from medvit.errors import DicomError

MIN_SIDE, MAX_SIDE = 16, 20000
J2K_SYNTAXES = {JPEG2000Lossless, JPEG2000}
DICOMSDL_SYNTAXES = {JPEGLosslessSV1, JPEGLossless}
PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as it appears in a little-endian file


# ----------------------------------------------------------------------------- headers

@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log records can quote header values (PHI): keep them out of the
    logs while reading. The error row's reason says what went wrong."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _starts_like_dicom(path: str | Path) -> bool:
    """A file without the preamble is a bare dataset: it opens with a group 0002 or 0008 tag
    (little or big endian)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def read_header(path: str | Path) -> Dataset:
    """Header only (stop_before_pixels), validated: raises DicomError on a file that cannot
    give a single-frame monochrome image. Cannot see the pixel data itself, so a missing
    pixel element is only caught here when the image attributes are missing too."""
    ds = _dcmread(path, stop_before_pixels=True)
    check_header(ds, path)
    return ds


def read_dataset(path: str | Path) -> Dataset:
    """Whole file (pixel data still encoded), validated like `read_header` plus the pixel
    data element itself (present, long enough)."""
    ds = _dcmread(path, stop_before_pixels=False)
    check_header(ds, path)
    _check_pixel_element(ds, path)
    return ds


def _dcmread(path: str | Path, stop_before_pixels: bool) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass  # no 'DICM' preamble: may still be a headerless DICOM, try once more
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise DicomError(path, "unreadable", type(exc).__name__) from None
    except EOFError as exc:
        raise DicomError(path, "truncated", f"file ends inside the header: {exc}") from None
    except Exception as exc:  # pydicom raises many kinds on garbage
        raise DicomError(path, "not_dicom", f"{type(exc).__name__}: {exc}") from None
    if not _starts_like_dicom(path):  # a forced parse of 60 MB of zeros takes half a minute
        raise DicomError(path, "not_dicom", "no DICM preamble and no DICOM tag at the start")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception as exc:
        raise DicomError(path, "not_dicom", f"{type(exc).__name__}") from None
    if not any(k in ds for k in ("SOPClassUID", "Rows", "PixelData", "Modality")):
        raise DicomError(path, "not_dicom", "no DICM preamble and no DICOM image attributes")
    if "TransferSyntaxUID" not in ds.file_meta:  # headerless file: pydicom guessed it
        ds.file_meta.TransferSyntaxUID = UID(
            "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1")
    return ds


def check_header(ds: Dataset, path: str | Path) -> None:
    """Refuse, before any pixel is allocated, what medvit cannot turn into one image."""
    if "Rows" not in ds or "Columns" not in ds:
        # pydicom returns an empty dataset when the file ends inside encapsulated pixel data
        if len(ds) == 0 and PIXEL_TAG in Path(path).read_bytes():  # error path only
            raise DicomError(path, "truncated", "file ends inside the pixel data")
        if "MediaStorageSOPClassUID" not in ds.file_meta and not any(
                k in ds for k in ("SOPClassUID", "Modality", "StudyInstanceUID")):
            raise DicomError(path, "not_dicom", "a DICM preamble, but no SOP class, modality or study UID")
        raise DicomError(path, "no_pixel_data", f"SOP class {ds.get('SOPClassUID', '?')}")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        shown = defined_term(photometric, PHOTOMETRICS) or (
            "an unknown photometric" if photometric else "no photometric")
        raise DicomError(path, "color", f"SamplesPerPixel={spp}, {shown}")
    frames = _int(ds.get("NumberOfFrames", 1), 1)
    if frames > 1:
        raise DicomError(path, "multi_frame", f"{frames} frames")
    rows, cols = _int(ds.Rows, 0), _int(ds.Columns, 0)
    allocated = _int(ds.get("BitsAllocated", 0), 0)
    stored = _int(ds.get("BitsStored", allocated), allocated)
    if not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= cols <= MAX_SIDE):
        raise DicomError(path, "bad_dimensions", f"{rows}x{cols} outside {MIN_SIDE}..{MAX_SIDE}")
    if allocated not in (1, 8, 16, 32) or not 1 <= stored <= allocated:
        raise DicomError(path, "bad_dimensions", f"BitsAllocated={allocated} BitsStored={stored}")


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _check_pixel_element(ds: Dataset, path: str | Path) -> None:
    if "PixelData" not in ds:
        # pydicom drops an encapsulated pixel element cut short by the end of the file
        if PIXEL_TAG in Path(path).read_bytes():  # error path only
            raise DicomError(path, "truncated", "file ends inside the pixel data")
        raise DicomError(path, "no_pixel_data", "no (7FE0,0010) Pixel Data element")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    raw = ds.get_item("PixelData")
    have = len(raw.value or b"")
    declared = getattr(raw, "length", have)
    need = expected_bytes(ds)
    if declared not in (0xFFFFFFFF, have) and have < declared:
        raise DicomError(path, "truncated", f"pixel data has {have} of {declared} bytes")
    if have < need:
        raise DicomError(path, "bad_dimensions",
                         f"pixel data has {have} bytes, {ds.Rows}x{ds.Columns}x"
                         f"{ds.BitsAllocated} bits needs {need}")


def expected_bytes(ds: Dataset) -> int:
    """Bytes one uncompressed frame needs."""
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated)
    return (bits + 7) // 8


# ----------------------------------------------------------------------- JPEG 2000 header

@dataclass(frozen=True)
class J2KInfo:
    rows: int
    cols: int
    levels: int      # wavelet decomposition levels: the largest usable `reduce`
    precision: int   # bits per sample in the codestream
    signed: bool
    components: int


def j2k_info(codestream: bytes) -> J2KInfo | None:
    """Parse SIZ and COD/COC of the main header (ISO 15444-1 A.5.1, A.6.1). Written by hand
    because neither Pillow nor pydicom exposes the decomposition level count. None if the
    bytes are not a codestream medvit understands."""
    start = codestream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (also inside a JP2 box)
    if start < 0:
        return None
    pos, siz, levels = start + 2, None, []
    try:
        while pos + 4 <= len(codestream):
            marker, length = struct.unpack_from(">HH", codestream, pos)
            body = codestream[pos + 4: pos + 2 + length]
            if marker == 0xFF51:
                _, xs, ys, xo, yo = struct.unpack_from(">HIIII", body, 0)
                comps = struct.unpack_from(">H", body, 34)[0]
                ssiz = body[36]
                siz = (ys - yo, xs - xo, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), comps)
            elif marker == 0xFF52:      # COD: Scod, prog, layers(2), mct, levels
                levels.append(body[5])
            elif marker == 0xFF53:      # COC: Ccoc (1 or 2 bytes), Scoc, levels
                levels.append(body[(2 if siz and siz[4] >= 257 else 1) + 1])
            elif marker in (0xFF90, 0xFF93):  # first tile part: main header is over
                break
            pos += 2 + length
    except (struct.error, IndexError):
        return None
    if siz is None or not levels:
        return None
    return J2KInfo(siz[0], siz[1], min(levels), siz[2], siz[3], siz[4])


def decode_j2k_pillow(codestream: bytes, reduce: int, info: J2KInfo) -> np.ndarray:
    """Stored values at resolution level `reduce` (each side divided by 2**reduce, rounded
    up). Pillow scales samples of precision p < 16 up to 16 bits (p > 8): undone here."""
    from PIL import Image

    want = (-(-info.rows // 2**reduce), -(-info.cols // 2**reduce))
    with Image.open(io.BytesIO(codestream)) as im:
        if reduce:
            # Pillow sizes a level as round(side / 2**r); OpenJPEG decodes ceil(side / 2**r).
            # Where they differ (1914 px at r=3) the decode fails as "broken data stream", so
            # give Pillow the size whose rounding is OpenJPEG's ceil (Pillow sets `_size` itself).
            power = 2**reduce
            im._size = (want[1] * power - power // 2, want[0] * power - power // 2)
        im.reduce = reduce
        im.load()
        arr = np.asarray(im)
    if arr.shape != want:
        raise OSError(f"Pillow returned {arr.shape} at reduce={reduce}, expected {want}")
    if arr.dtype == np.uint16 and info.precision < 16:
        arr = arr >> (16 - info.precision)
    return arr


# ------------------------------------------------------------------------------ pixels

class Pixels:
    """Stored values of one image, decoded on demand at a J2K resolution level.

    `max_reduce` is the coarsest level a decode may ask for (0 unless JPEG 2000 through
    Pillow). `get(r)` returns (array, level actually used, decoder name); a failing level
    steps back one at a time, then to pydicom's full decode."""

    def __init__(self, ds: Dataset, path: str | Path) -> None:
        self.ds, self.path = ds, str(path)
        self.rows, self.cols = int(ds.Rows), int(ds.Columns)
        self.syntax = UID(ds.file_meta.TransferSyntaxUID)
        self._cache: dict[int, tuple[np.ndarray, int, str]] = {}
        self._codestream, self._j2k = self._j2k_source()
        self.max_reduce = self._j2k.levels if self._j2k else 0

    def _j2k_source(self) -> tuple[bytes | None, J2KInfo | None]:
        if self.syntax not in J2K_SYNTAXES or int(self.ds.get("PixelRepresentation", 0)):
            return None, None
        try:
            codestream = pydicom.encaps.get_frame(self.ds.PixelData, 0, number_of_frames=1)
        except Exception:
            return None, None  # let pydicom's full decode report what is wrong
        info = j2k_info(codestream)
        ok = (info is not None and info.components == 1 and not info.signed
              and info.precision <= 16 and (info.rows, info.cols) == (self.rows, self.cols))
        return (codestream, info) if ok else (None, None)

    def get(self, reduce: int = 0) -> tuple[np.ndarray, int, str]:
        reduce = max(0, min(reduce, self.max_reduce))
        for level in range(reduce, -1, -1):
            if level in self._cache:
                return self._cache[level]
            if self._j2k is None:
                break
            try:
                arr = decode_j2k_pillow(self._codestream, level, self._j2k)
            except Exception:
                continue  # a damaged or unusual codestream: try the next finer level
            self._cache[level] = (arr, level, "pillow-j2k")
            return self._cache[level]
        arr, name = decode_full(self.ds, self.path)
        self._cache[0] = (arr, 0, name)
        return self._cache[0]


def decode_full(ds: Dataset, path: str | Path) -> tuple[np.ndarray, str]:
    """Full-resolution stored values and the decoder's short name."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax in DICOMSDL_SYNTAXES:
        arr = _decode_dicomsdl(path, ds)
        if arr is not None:
            return arr, "dicomsdl"
    _check_decoder(syntax, path)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise _decode_error(path, exc) from None
    if arr.shape != (ds.Rows, ds.Columns):
        raise DicomError(path, "decode_failed", f"decoded shape {arr.shape}")
    return arr, "pydicom"


def _decode_dicomsdl(path: str | Path, ds: Dataset) -> np.ndarray | None:
    """dicomsdl's stored values, or None (then pydicom decides what went wrong)."""
    try:
        import dicomsdl

        arr = dicomsdl.open(str(path)).pixelData(storedvalue=True)
    except Exception:
        return None
    if arr is None or arr.shape != (ds.Rows, ds.Columns) or arr.dtype.kind not in "iu":
        return None
    return arr


def _check_decoder(syntax: UID, path: str | Path) -> None:
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DicomError(path, "unsupported_syntax", f"{syntax} ({syntax.name})")


def _decode_error(path: str | Path, exc: Exception) -> DicomError:
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if any(w in lowered for w in ("less than expected", "truncat", "too short", "end of",
                                  "premature", "insufficient")):
        return DicomError(path, "truncated", text[:300])
    return DicomError(path, "decode_failed", text[:300])
