"""Write a DICOM data set with its pixels in one of the transfer syntaxes RSNA's mammograms come
in: JPEG 2000 lossless (pydicom + pylibjpeg-openjpeg), JPEG Lossless SV1 (GDCM: pydicom has no
encoder for it) or explicit VR little endian. Written to a temp name, then renamed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1

from medvit.errors import ConfigError, suggest
from medvit.io import atomic_path

SYNTAXES: tuple[str, ...] = (str(JPEG2000Lossless), str(JPEGLosslessSV1), str(ExplicitVRLittleEndian))


def gdcm_jpeg_lossless(src: str, dst: str) -> None:
    """Re-encode an uncompressed file as JPEG Lossless SV1 (process 14, first-order prediction).
    pydicom has no encoder for this syntax, so GDCM does it, file to file (`dst` may be `src`)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(src)
    if not reader.Read():
        raise OSError(f"{src}: GDCM could not read the uncompressed file")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise OSError(f"{src}: GDCM could not encode JPEG Lossless SV1")
    writer = gdcm.ImageWriter()
    writer.SetFileName(dst)
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise OSError(f"{dst}: GDCM could not write the file")


def write_dicom(path: str | Path, ds: Dataset, stored: np.ndarray, syntax: str) -> None:
    """Encode `stored` into `ds` with transfer syntax `syntax` and write it atomically to `path`."""
    if syntax not in SYNTAXES:
        raise ConfigError(f"{path}: transfer syntax {syntax!r} is not one medvit writes; "
                          f"{suggest(syntax, SYNTAXES)}")
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    with atomic_path(path) as tmp:
        if syntax == str(JPEG2000Lossless):
            # OpenJPEG's default is 5 decomposition levels (6 resolutions): readers can decode
            # at 1/2 .. 1/32 size.
            ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False)
            ds.save_as(tmp, enforce_file_format=True)
        elif syntax == str(JPEGLosslessSV1):
            raw = tmp.with_name(tmp.name + ".raw")  # the uncompressed file GDCM reads
            try:
                ds.save_as(raw, enforce_file_format=True)
                gdcm_jpeg_lossless(str(raw), str(tmp))
            finally:
                raw.unlink(missing_ok=True)
        else:
            ds.save_as(tmp, enforce_file_format=True)
