"""Synthetic mammograms in the RSNA Screening Mammography layout, made in code.

`write_dataset(out, patients=20)` writes `out/train_images/<patient_id>/<image_id>.dcm`,
`out/train.csv` (RSNA's columns), `out/lesion_masks/<image_id>.png` and `out/lesions.csv`.
The files look like RSNA's: J2K lossless / JPEG lossless SV1 / explicit little endian, 12/14/16
bits stored, MONOCHROME1 and MONOCHROME2, single or multiple VOI windows (LINEAR or SIGMOID), a
burned-in laterality marker, and fake PHI that carries `PHI_MARKER` so a scan of any output can
grep for it. Headers come in three styles (STYLES, by patient): "full" (Digital Mammography SOP
class, Modality MG, every tag, fake PHI), "id_is_name" (the same with PatientID = PatientName) and
"rsna", exactly the shape of RSNA's own files (`rsna_file`): file meta SOP class Digital X-Ray
For Presentation, JPEG 2000 lossless or JPEG Lossless SV1, ImplementationVersionName 'PYDICOM
2.3.0', and a dataset holding RSNA_KEYWORDS and nothing else (no SOPClassUID, Modality,
ViewPosition, BodyPartExamined or PatientName).

Everything is seeded: the same seed gives the same CSV and the same pixel data whatever the
number of workers (each image draws from its own `SeedSequence((seed, 1, patient, view))`).

The drawing lives in `medvit.dicom.phantom`, the encoding in `medvit.dicom.write`; this module
holds the machines, the plan and the files, and re-exports the drawing's public names.
"""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, generate_uid

from medvit.dicom.phantom import KINDS, Lesion, SynthImage, make_image, synthesize  # noqa: F401 (re-exported)
from medvit.dicom.write import SYNTAXES, write_dicom  # noqa: F401 (re-exported)
from medvit.errors import ConfigError, suggest
from medvit.io import atomic_path, write_png
from medvit.workers import usable_cores

if TYPE_CHECKING:
    import pandas as pd

PHI_MARKER = "MEDVITPHI"
# Every identifying DICOM keyword synth fills with fake values (dates cannot carry the marker).
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientBirthDate", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "OperatorsName", "ImageComments", "StudyDate",
)
CSV_COLUMNS: tuple[str, ...] = (
    "site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy",
    "invasive", "BIRADS", "implant", "density", "machine_id", "difficult_negative_case",
)
LESION_COLUMNS: tuple[str, ...] = (
    "image_id", "patient_id", "laterality", "view", "kind", "center_row", "center_col", "radius_px",
)
MAMMO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
RSNA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation (file meta only)
RSNA_IMPLEMENTATION = ("1.2.826.0.1.3680043.8.498.1", "PYDICOM 2.3.0")  # class UID, version name
# Every keyword of a real RSNA file's dataset, in no other: VOILUTFunction only on some (SIGMOID).
RSNA_KEYWORDS: tuple[str, ...] = (
    "SOPInstanceUID", "ContentDate", "ContentTime", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
    "InstanceNumber", "ImageLaterality", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelPaddingValue",
    "PixelIntensityRelationship", "PixelIntensityRelationshipSign", "WindowCenter", "WindowWidth",
    "RescaleIntercept", "RescaleSlope", "RescaleType", "VOILUTFunction", "PartialView", "LossyImageCompression",
    "PixelData",
)
SIZES = ("small", "full")
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
# Header style by patient (index % 4), as real files come: "full" (every tag above), "id_is_name"
# (PatientID = PatientName, as de-identification tools often leave it) and "rsna" (RSNA's own
# files, `rsna_file`). An "rsna" patient's files are JPEG 2000 / JPEG Lossless SV1, as RSNA's are.
STYLES = ("full", "id_is_name", "rsna", "full")
COMPRESSED = (str(JPEG2000Lossless), str(JPEGLosslessSV1))  # the syntaxes RSNA's files come in
# DICOM PatientOrientation (column direction, row direction) with the chest wall on the left
# for L and on the right for R, as in RSNA.
ORIENTATION = {("L", "CC"): ["A", "R"], ("L", "MLO"): ["A", "F"],
               ("R", "CC"): ["P", "L"], ("R", "MLO"): ["P", "F"]}


@dataclass(frozen=True)
class Machine:
    """One acquisition device: how its files are encoded and how big its images are."""

    machine_id: int
    site_id: int
    syntax: str
    bits_stored: int
    photometric: str
    voi_function: str
    n_windows: int
    rescale: bool  # writes RescaleSlope/Intercept (identity, as MG "for presentation" devices do)
    full_shape: tuple[int, int]  # rows, cols
    small_shape: tuple[int, int]
    spacing_mm: float  # at full size
    manufacturer: str
    model: str
    stored_range: tuple[float, float]  # fraction of the bit range the detector output spans
    weight: float  # share of patients


MACHINES: tuple[Machine, ...] = (
    Machine(49, 1, str(JPEG2000Lossless), 12, "MONOCHROME2", "LINEAR", 1, True, (4096, 3328), (1024, 832),
            0.07, "HOLOGIC, Inc.", "Selenia Dimensions", (0.0, 1.0), 0.30),
    Machine(48, 1, str(JPEG2000Lossless), 12, "MONOCHROME1", "SIGMOID", 3, False, (2294, 1914), (1024, 854),
            0.1, "GE MEDICAL SYSTEMS", "Senographe Essential", (0.02, 0.98), 0.15),
    Machine(29, 2, str(JPEGLosslessSV1), 16, "MONOCHROME1", "LINEAR", 2, True, (5355, 4915), (1024, 940),
            0.05, "FUJIFILM Corporation", "AMULET Innovality", (0.05, 0.62), 0.15),
    Machine(93, 2, str(JPEGLosslessSV1), 14, "MONOCHROME2", "LINEAR", 1, False, (3328, 2560), (1024, 800),
            0.07, "SIEMENS", "Mammomat Inspiration", (0.01, 0.75), 0.15),
    Machine(21, 1, str(ExplicitVRLittleEndian), 14, "MONOCHROME2", "SIGMOID", 2, False, (3328, 2560),
            (896, 688), 0.085, "Planmed", "Planmed Clarity 2D", (0.03, 0.9), 0.10),
    Machine(170, 2, str(ExplicitVRLittleEndian), 16, "MONOCHROME1", "LINEAR", 3, True, (4096, 3328),
            (896, 736), 0.07, "IMS s.r.l.", "Giotto Class", (0.0, 0.7), 0.15),
)


def machine_shape(machine: Machine, size: str) -> tuple[int, int]:
    """(rows, cols) of this machine's images at `size` ("small" or "full")."""
    if size not in SIZES:
        raise ConfigError(f"synth size {size!r} is unknown; {suggest(size, SIZES)}")
    return machine.full_shape if size == "full" else machine.small_shape


# ---------------------------------------------------------------------------------------------
# The stored pixels and the DICOM file


def to_stored(image: np.ndarray, machine: Machine) -> np.ndarray:
    """Map [0, 1] attenuation to the machine's stored uint16 values; MONOCHROME1 stores them
    inverted (tissue low, air high)."""
    top = 2**machine.bits_stored - 1
    lo, hi = machine.stored_range[0] * top, machine.stored_range[1] * top
    values = image if machine.photometric == "MONOCHROME2" else 1.0 - image
    return np.rint(lo + values * (hi - lo)).astype(np.uint16)


def voi_windows(stored: np.ndarray, breast: np.ndarray, n_windows: int) -> tuple[list[int], list[int]]:
    """Window centres and widths spanning the breast tissue's stored values (the first is the
    default; further ones are a harder and a softer window, as vendors ship them)."""
    vals = stored[::4, ::4][breast[::4, ::4]]
    lo, hi = np.percentile(vals, [1, 99]) if vals.size else (0, stored.max())
    # 30% headroom: dense tissue stays graded instead of clipping to white (a lesion still may)
    center, width = (lo + hi) / 2, max(1.3 * (hi - lo), 2.0)
    factors = (1.0, 0.75, 1.35)[:n_windows]
    return [int(round(center))] * n_windows, [int(round(width * f)) for f in factors]


def _uid(seed: int, *parts: Any) -> str:
    return str(generate_uid(entropy_srcs=["medvit-synth", str(seed), *map(str, parts)]))


def build_dataset(stored: np.ndarray, machine: Machine, info: dict[str, Any]) -> Dataset:
    """Every tag of one synthetic MG file except the pixel data. `info` holds the row's ids,
    laterality, view, UIDs, fake PHI, windows and pixel spacing."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MAMMO_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = info["sop_uid"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = MAMMO_SOP_CLASS
    ds.SOPInstanceUID = info["sop_uid"]
    ds.StudyDate = info["study_date"]
    ds.StudyTime = "101500"
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = machine.manufacturer
    ds.ManufacturerModelName = machine.model
    ds.InstitutionName = info["institution"]
    ds.InstitutionAddress = info["address"]
    ds.ReferringPhysicianName = info["referrer"]
    ds.OperatorsName = info["operator"]
    ds.PatientName = info["patient_name"]
    ds.PatientID = str(info["patient_id"])
    ds.PatientBirthDate = info["birth_date"]
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.ViewPosition = info["view"]
    ds.StudyInstanceUID = info["study_uid"]
    ds.SeriesInstanceUID = info["series_uid"]
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesNumber = 1 + VIEWS.index((info["laterality"], info["view"]))
    ds.InstanceNumber = 1
    ds.PatientOrientation = ORIENTATION[(info["laterality"], info["view"])]
    ds.Laterality = info["laterality"]
    ds.ImageLaterality = info["laterality"]
    ds.ImageComments = info["comments"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = machine.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = ds.ImagerPixelSpacing = [info["spacing"], info["spacing"]]
    ds.BitsAllocated = 16
    ds.BitsStored = machine.bits_stored
    ds.HighBit = machine.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "YES"  # the laterality/view label
    centers, widths = info["windows"]
    ds.WindowCenter = centers[0] if len(centers) == 1 else centers
    ds.WindowWidth = widths[0] if len(widths) == 1 else widths
    ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER", "SOFTER"][: len(centers)]
    ds.VOILUTFunction = machine.voi_function
    if machine.rescale:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.LossyImageCompression = "00"
    style = info.get("style", "full")
    if style == "id_is_name":
        ds.PatientID = info["patient_name"]
    return ds  # "rsna" files are rebuilt after encoding (`rsna_file`): GDCM's encoder needs these tags


# ---------------------------------------------------------------------------------------------
# The data set


FIRST_NAMES = ("Anna", "Maria", "Grace", "Helen", "Ruth", "Joan", "Carol", "Linda", "Irene", "Nadia")
LAST_NAMES = ("Smith", "Garcia", "Novak", "Okafor", "Tanaka", "Muller", "Rossi", "Larsen", "Kaur", "Dubois")


def _choose_machines(rng: np.random.Generator, n: int, pool: Sequence[Machine]) -> list[Machine]:
    """Machines per patient, weighted; with n >= 3 every syntax and both photometric
    interpretations in `pool` appear at least once (one machine per patient, as in RSNA)."""
    weights = np.array([m.weight for m in pool])
    picks = [pool[i] for i in rng.choice(len(pool), size=n, p=weights / weights.sum())]
    need: list[Machine] = []
    for syntax in dict.fromkeys(m.syntax for m in pool):
        options = [m for m in pool if m.syntax == syntax]
        need.append(options[rng.integers(len(options))])
    for photometric in dict.fromkeys(m.photometric for m in pool):
        if all(m.photometric != photometric for m in need):
            options = [i for i, m in enumerate(need)
                       if any(o.syntax == m.syntax and o.photometric == photometric for o in pool)]
            if options:  # swap to the same syntax's machine with the missing photometric
                i = options[rng.integers(len(options))]
                need[i] = next(o for o in pool if o.syntax == need[i].syntax and o.photometric == photometric)
            else:
                need.append(next(o for o in pool if o.photometric == photometric))
    if n >= 3 and n >= len(need):
        slots = rng.choice(n, size=len(need), replace=False)
        # uncompressed machines go to patients whose files are not "rsna" style (those are compressed)
        slots = sorted(slots, key=lambda slot: STYLES[slot % len(STYLES)] == "rsna")
        for slot, machine in zip(slots, sorted(need, key=lambda m: m.syntax in COMPRESSED)):
            picks[slot] = machine
    return picks


def _style_and_syntax(p: int, machine: Machine, allowed: Sequence[str]) -> tuple[str, str]:
    """Header style of patient `p` and the transfer syntax of its files: the machine's, except
    that an "rsna" patient on an uncompressed machine gets a compressed syntax RSNA uses (the
    first allowed), or the "full" style when no compressed syntax is allowed."""
    style = STYLES[p % len(STYLES)]
    if style != "rsna" or machine.syntax in COMPRESSED:
        return style, machine.syntax
    compressed = [s for s in COMPRESSED if s in allowed]
    return ("rsna", compressed[0]) if compressed else ("full", machine.syntax)


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        for v in rng.integers(low, high, size=n - len(out)).tolist():
            if v not in seen:
                seen.add(v)
                out.append(v)
    return out


def _fake_date(rng: np.random.Generator, start: dt.date, days: int) -> dt.date:
    return start + dt.timedelta(days=int(rng.integers(days)))


def plan_dataset(patients: int, seed: int, cancer_rate: float, size: str,
                 syntaxes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per image: the train.csv row plus what the worker needs to draw and write it."""
    pool = list(MACHINES) if syntaxes is None else [m for m in MACHINES if m.syntax in set(syntaxes)]
    if not pool:
        raise ConfigError(f"synth: no machine writes the syntaxes {list(syntaxes or [])}; "
                          f"choose from {', '.join(SYNTAXES)}")
    rng = np.random.default_rng(np.random.SeedSequence((seed, 0)))
    machines = _choose_machines(rng, patients, pool)
    positive = rng.random(patients) < cancer_rate
    if cancer_rate > 0 and patients >= 2 and not positive.any():
        positive[rng.integers(patients)] = True
    patient_ids = sorted(_unique_ints(rng, patients, 10000, 10000 + max(55535, 4 * patients)))
    image_ids = _unique_ints(rng, 4 * patients, 100_000, 2**31 - 1)
    rows: list[dict[str, Any]] = []
    for p, (pid, machine) in enumerate(zip(patient_ids, machines)):
        style, syntax = _style_and_syntax(p, machine, syntaxes or SYNTAXES)
        shape = machine_shape(machine, size)
        spacing = round(machine.spacing_mm * machine.full_shape[0] / shape[0], 4)
        study = _fake_date(rng, dt.date(2015, 1, 1), 5 * 365)
        birth = _fake_date(rng, study - dt.timedelta(days=round(85 * 365.25)), round(45 * 365.25))
        age = float((study - birth).days // 365.25)
        density = str(rng.choice(list("ABCD"), p=[0.1, 0.45, 0.38, 0.07]))
        sick = str(rng.choice(["L", "R"])) if positive[p] else None
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        # Every word of these values is a name, a date or carries the marker, so a PHI scan
        # that looks for the words finds no generic ones ("Road", "note") in honest outputs.
        phi = {
            "patient_name": f"{PHI_MARKER}{last}^{first}",
            "birth_date": birth.strftime("%Y%m%d"), "study_date": study.strftime("%Y%m%d"),
            "institution": f"{PHI_MARKER}-{last}-Clinic",
            "address": f"{int(rng.integers(1, 400))} {PHI_MARKER}-Street, {PHI_MARKER}-Town",
            "referrer": f"{PHI_MARKER}Doctor^{rng.choice(FIRST_NAMES)}",
            "operator": f"{PHI_MARKER}Tech^{rng.choice(FIRST_NAMES)}",
            "comments": f"{PHI_MARKER}-note: {first} {last}, {birth.isoformat()}, {PHI_MARKER}-Clinic",
        }
        breasts = {}
        for side in ("L", "R"):
            cancer = side == sick
            biopsy = cancer or bool(rng.random() < 0.03)
            birads = (0 if cancer else int(rng.choice([0, 1, 2], p=[0.1, 0.7, 0.2]))) if machine.site_id == 1 else None
            breasts[side] = {
                "cancer": int(cancer), "biopsy": int(biopsy),
                "invasive": int(cancer and rng.random() < 0.7), "BIRADS": birads,
                "difficult_negative_case": bool(biopsy and not cancer),
                "kind": str(rng.choice(KINDS, p=[0.6, 0.15, 0.25])) if cancer else None,
                "radius_frac": float(rng.uniform(0.03, 0.06)),
            }
        study_uid = _uid(seed, "study", pid)
        for k, (side, view) in enumerate(VIEWS):
            image_id = image_ids[4 * p + k]
            b = breasts[side]
            rows.append({
                "site_id": machine.site_id, "patient_id": pid, "image_id": image_id,
                "laterality": side, "view": view, "age": age, "cancer": b["cancer"],
                "biopsy": b["biopsy"], "invasive": b["invasive"], "BIRADS": b["BIRADS"], "implant": 0,
                "density": density if machine.site_id == 1 else None, "machine_id": machine.machine_id,
                "difficult_negative_case": b["difficult_negative_case"],
                # not in train.csv:
                "_seed": (seed, 1, p, k), "_machine": machine, "_shape": shape, "_density": density,
                "_kind": b["kind"], "_radius_frac": b["radius_frac"], "_spacing": spacing,
                "_study_uid": study_uid, "_series_uid": _uid(seed, "series", pid, side, view),
                "_sop_uid": _uid(seed, "sop", image_id), "_style": style, "_syntax": syntax,
                **{f"_{k2}": v for k2, v in phi.items()},
            })
    return rows


def _init_worker() -> None:
    cv2.setNumThreads(1)


def render(row: dict[str, Any]) -> tuple[np.ndarray, SynthImage]:
    """The stored uint16 pixels (and the drawing) of one planned image; same row, same pixels."""
    rng = np.random.default_rng(np.random.SeedSequence(row["_seed"]))
    rows, cols = row["_shape"]
    synth = synthesize(rng, rows, cols, row["laterality"], row["view"], lesion_kind=row["_kind"],
                       radius_frac=row["_radius_frac"], density=row["_density"])
    return to_stored(synth.image, row["_machine"]), synth


def make_file(row: dict[str, Any], out: str) -> dict[str, Any] | None:
    """Draw, encode and write one image (and its lesion mask). Returns its lesions.csv row."""
    machine: Machine = row["_machine"]
    stored, synth = render(row)
    info = {key[1:]: value for key, value in row.items() if key.startswith("_")}
    info.update(patient_id=row["patient_id"], laterality=row["laterality"], view=row["view"],
                windows=voi_windows(stored, synth.breast, machine.n_windows))
    folder = Path(out) / "train_images" / str(row["patient_id"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{row['image_id']}.dcm"
    write_dicom(path, build_dataset(stored, machine, info), stored, info["syntax"])
    if info["style"] == "rsna":
        rsna_file(path, machine, info)
    if synth.lesion is None:
        return None
    masks = Path(out) / "lesion_masks"
    masks.mkdir(parents=True, exist_ok=True)
    write_png(masks / f"{row['image_id']}.png", synth.mask)
    les = synth.lesion
    return {"image_id": row["image_id"], "patient_id": row["patient_id"], "laterality": row["laterality"],
            "view": row["view"], "kind": les.kind, "center_row": les.center_row,
            "center_col": les.center_col, "radius_px": les.radius_px}


def rsna_file(path: Path, machine: Machine, info: dict[str, Any]) -> None:
    """Rewrite a written file (its encoded pixel data untouched) in exactly the shape of RSNA's
    own files: file meta SOP class DX For Presentation, written by 'PYDICOM 2.3.0', and a
    dataset of RSNA_KEYWORDS only (VOILUTFunction only where SIGMOID), atomically."""
    import pydicom

    src = pydicom.dcmread(path)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RSNA_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = info["sop_uid"]
    ds.file_meta.TransferSyntaxUID = src.file_meta.TransferSyntaxUID
    ds.file_meta.ImplementationClassUID, ds.file_meta.ImplementationVersionName = RSNA_IMPLEMENTATION
    ds.SOPInstanceUID = info["sop_uid"]
    ds.ContentDate, ds.ContentTime = info["study_date"], "101500.000000"
    ds.PatientID = str(info["patient_id"])  # = the folder name
    ds.StudyInstanceUID, ds.SeriesInstanceUID = info["study_uid"], info["series_uid"]
    ds.InstanceNumber = 1
    ds.ImageLaterality = info["laterality"]
    for keyword in ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation", "WindowCenter", "WindowWidth"):
        ds.add(src[keyword])
    top = 2**machine.bits_stored - 1
    ds.PixelPaddingValue = top if machine.photometric == "MONOCHROME1" else 0  # air, as the detector pads
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    if machine.voi_function == "SIGMOID":
        ds.VOILUTFunction = "SIGMOID"
    ds.PartialView, ds.LossyImageCompression = "NO", "00"
    ds.add(src["PixelData"])
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _make_file_star(args: tuple[dict[str, Any], str]) -> dict[str, Any] | None:
    return make_file(*args)


def _write_csv(frame: "pd.DataFrame", path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_dataset(out: str | Path, patients: int = 20, seed: int = 0, cancer_rate: float = 0.25,
                  size: str = "small", workers: int | None = None,
                  syntaxes: Sequence[str] | None = None) -> "pd.DataFrame":
    """Write a synthetic RSNA-layout data set to `out`; returns the train.csv frame."""
    import multiprocessing as mp

    import pandas as pd

    if patients < 1:
        raise ConfigError(f"synth: --patients must be at least 1, got {patients}")
    if seed < 0:
        raise ConfigError(f"synth: --seed must be 0 or more, got {seed}")
    if not 0.0 <= cancer_rate <= 1.0:
        raise ConfigError(f"synth: --cancer-rate must be within 0..1, got {cancer_rate}")
    if size not in SIZES:
        raise ConfigError(f"synth: size {size!r} is unknown; {suggest(size, SIZES)}")
    if syntaxes is not None:
        syntaxes = [str(s) for s in syntaxes]
        for s in syntaxes:
            if s not in SYNTAXES:
                raise ConfigError(f"synth: transfer syntax {s!r} is not one synth writes; {suggest(s, SYNTAXES)}")
        if not syntaxes:
            raise ConfigError("synth: syntaxes is empty; leave it out for all, or name some of "
                              + ", ".join(SYNTAXES))
    out = Path(out)
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    plan = plan_dataset(patients, seed, cancer_rate, size, syntaxes)
    workers = max(1, min(workers or usable_cores(), len(plan)))
    jobs = [(row, str(out)) for row in plan]
    if workers == 1:
        lesions = [_make_file_star(job) for job in jobs]
    else:
        # forkserver: workers do not inherit a parent's threads (torch, tqdm) the way fork would.
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init_worker) as pool:
            lesions = list(pool.map(_make_file_star, jobs, chunksize=2))
    frame = pd.DataFrame([{c: row[c] for c in CSV_COLUMNS} for row in plan], columns=list(CSV_COLUMNS))
    frame["BIRADS"] = frame["BIRADS"].astype("Int64")
    frame["age"] = frame["age"].astype(float)
    _write_csv(frame, out / "train.csv")
    lesion_frame = pd.DataFrame([r for r in lesions if r is not None], columns=list(LESION_COLUMNS))
    _write_csv(lesion_frame, out / "lesions.csv")
    return frame
