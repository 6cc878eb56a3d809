"""The ingest manifest and its journal: image ids, labels, one row per input file, folds.

`DIR/manifest.csv` has one row per input file (MANIFEST_COLUMNS): ids, label, fold, status
(`ok` or `error` with a stable reason), the source path and cache file, and a whitelist of
preprocessing facts (INFO_COLUMNS; no PHI). `DIR/.ingest-journal.jsonl` holds one JSON record
per finished file, appended and flushed as files finish, so a killed run can resume.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from medvit.errors import ConfigError, MedvitError
from medvit.io import write_text
from medvit.privacy import folder_id

if TYPE_CHECKING:
    import pandas as pd

    from medvit.privacy import PatientIds

JOURNAL_NAME = ".ingest-journal.jsonl"
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
RETRIED_REASONS = {"internal", "worker_crash"}
# Fields of Preprocessed.info copied to the manifest (a whitelist: nothing else can leak).
INFO_COLUMNS = [
    "modality", "rows", "columns", "bits_stored", "photometric", "transfer_syntax", "voi", "lut_fallback",
    "crop_y0", "crop_x0", "crop_y1", "crop_x1", "flipped", "reduce", "decoder", "background_level",
]
MANIFEST_COLUMNS = [
    "image_id", "patient_id", "patient_id_source", "laterality", "laterality_source", "view", "label", "fold", "split",
    "status", "reason", "error", "path", "cache", "canvas", *INFO_COLUMNS, "source_size", "source_mtime_ns", "settings",
]
# Text columns read as str, so that an all-empty one is not a float column of NaN.
TEXT_COLUMNS = ("image_id", "patient_id", "patient_id_source", "laterality", "laterality_source", "view",
                "split", "status", "reason", "error", "path", "cache", "canvas", "modality", "photometric",
                "transfer_syntax", "voi", "lut_fallback", "decoder", "settings")


# ----------------------------------------------------------------------------- ids and labels

def image_stem(rel: str) -> str:
    """File name without a DICOM suffix; other suffixes (UID-like names '1.2.840.5') are kept."""
    name = rel.rsplit("/", 1)[-1]
    root, ext = os.path.splitext(name)
    return root if ext.lower() in DICOM_SUFFIXES else name


def _clean_stem(rel: str) -> str:
    """image_stem, or file-<sha1> when the name is not valid UTF-8 (it names the cache file and
    fills the CSVs, which must stay readable)."""
    stem = image_stem(rel)
    try:
        stem.encode("utf-8")
    except UnicodeEncodeError:
        return "file-" + hashlib.sha1(os.fsencode(rel)).hexdigest()[:12]
    return stem


def assign_image_ids(rels: list[str]) -> dict[str, str]:
    """rel path -> image_id: the stem, or stem-<sha1(rel)[:8]> for stems seen more than once."""
    stems = {rel: _clean_stem(rel) for rel in rels}
    counts = Counter(stems.values())
    return {
        rel: stem if counts[stem] == 1 else f"{stem}-{hashlib.sha1(os.fsencode(rel)).hexdigest()[:8]}"
        for rel, stem in stems.items()
    }


def load_labels(path: Path, label_column: str = "cancer") -> dict[str, dict[str, str]]:
    """image_id -> {patient_id, label, laterality, view} from an RSNA-style CSV (all strings)."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the labels CSV ({type(err).__name__}: {err})") from err
    from medvit.errors import suggest

    for column in ("image_id", label_column):
        if column not in table.columns:
            raise ConfigError(
                f"{path}: labels CSV has no column {column!r}; {suggest(column, table.columns)}"
            )
    labels: dict[str, dict[str, str]] = {}
    for row in table.to_dict("records"):
        image_id = row["image_id"].strip()
        if image_id and image_id not in labels:  # first row wins on duplicates
            labels[image_id] = {
                "patient_id": str(row.get("patient_id", "")).strip(),
                "label": str(row[label_column]).strip(),
                "laterality": str(row.get("laterality", "")).strip(),
                "view": str(row.get("view", "")).strip(),
            }
    return labels



# ----------------------------------------------------------------------------- journal

def read_journal(path: Path) -> dict[str, dict]:
    """rel path -> last record. Torn or unreadable lines (a kill mid-write) are ignored."""
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                records[record["path"]] = record
    return records


class Journal:
    """Append-only, one JSON line per finished file, flushed each time (survives kill -9)."""

    def __init__(self, path: Path) -> None:
        needs_newline = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        self.f = open(path, "a", encoding="utf-8")
        if needs_newline:  # a torn last line must not swallow the next record
            self.f.write("\n")

    def append(self, record: dict) -> None:
        self.f.write(json.dumps(record, sort_keys=True) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def settings_canvas(key: str) -> tuple[int, int] | None:
    """The canvas (H, W) in a settings key: "size=512x256;v=5" -> (512, 256); an old
    "size=512;v=4" -> (512, 512); None without a readable size."""
    from medvit.canvas import parse_size

    for part in str(key).split(";"):
        if part.startswith("size="):
            try:
                return parse_size(part[5:])
            except ValueError:
                return None
    return None


def _canonical_settings(key: str) -> list[str]:
    """A settings key's parts with the size as "HxW" (an old "size=512" is "size=512x512")."""
    canvas = settings_canvas(key)
    return [f"size={canvas[0]}x{canvas[1]}" if p.startswith("size=") and canvas else p for p in key.split(";")]


def _same_settings(old: str | None, new: str) -> bool:
    """Settings keys equal, reading an old "size=512" as "size=512x512"."""
    if old == new or not old:
        return old == new
    return _canonical_settings(str(old)) == _canonical_settings(new)


def reusable(record: dict | None, task: dict, out: Path) -> bool:
    """True when the journal record still holds for this task (resume skips the file)."""
    if not record:
        return False
    same = all(record.get(k) == task[k] for k in ("image_id", "source_size", "source_mtime_ns", "ids"))
    if (not same or not _same_settings(record.get("settings"), task["settings"])
            or _modality_decision_changed(record, task)):
        return False
    if record.get("status") == "ok":
        return (out / record.get("cache", "")).is_file()
    return record.get("reason") not in RETRIED_REASONS



def _modality_decision_changed(record: dict, task: dict) -> bool:
    """True when `--any-modality` changed since the record and decides this file: a refused
    non-mammogram now accepted, or a non-MG file accepted only under the flag now refused."""
    if bool(task.get("any_modality")) == bool(record.get("any_modality")):
        return False
    if record.get("reason") == "not_mammogram":
        return True
    from medvit.dicom.header import accepted_only_with_any_modality

    modality = (record.get("info") or {}).get("modality", "")
    return record.get("status") == "ok" and accepted_only_with_any_modality(str(modality or ""))


def _label_number(text: str) -> float:
    """A label cell as a number ("1" and "1.0" are one class; "10" > "9"); text labels sort after."""
    try:
        return float(text)
    except ValueError:
        return float("inf")


# ----------------------------------------------------------------------------- reading

MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("image_id", "patient_id", "label", "fold", "status", "cache")


def read_manifest(data_dir: str | Path, columns: list[str] | None = None) -> "pd.DataFrame":
    """The ingest manifest, ids kept as strings, label as float (NaN = unlabelled), fold as int.
    The one reader of manifest.csv; `columns` reads only those (e.g. `ingest_size`'s settings)."""
    import pandas as pd

    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise MedvitError(f"{path}: manifest not found; run `medvit ingest` to create DATA_DIR first")
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str),
                            usecols=(lambda c: c in columns) if columns else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise MedvitError(f"{path}: not a readable CSV ({e})") from e
    missing = [c for c in (columns or REQUIRED_COLUMNS) if c not in frame.columns]
    if missing:
        raise MedvitError(f"{path}: manifest lacks column(s) {', '.join(missing)}; re-run `medvit ingest`")
    if columns:
        return frame
    # `split` (ingest --test-share): train | test | "" ; manifests from before it have no test split
    frame["split"] = frame["split"].fillna("").astype(str) if "split" in frame.columns else ""
    try:
        frame["label"] = pd.to_numeric(frame["label"]).astype(float)
        frame["fold"] = pd.to_numeric(frame["fold"].fillna(-1)).astype(int)
    except (ValueError, TypeError) as e:
        raise MedvitError(f"{path}: label/fold columns must be numbers ({e})") from e
    return frame


# ----------------------------------------------------------------------------- rows

def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def build_rows(rels: list[str], records: dict[str, dict], src: Path,
               labels: dict[str, dict] | None, ids: "PatientIds | None" = None) -> list[dict]:
    """One manifest row per input file, in path order. patient_id: the labels CSV's, else the
    header's (already a pseudonym in the record), else the parent folder's name, pseudonymised
    by `ids` (`medvit.privacy.PatientIds`; None keeps it raw)."""
    stems = Counter(image_stem(r) for r in rels)
    rows = []
    for rel in rels:
        rec = records[rel]
        info = rec.get("info") or {}
        lab = _match_label(rel, stems, labels)
        if lab.get("patient_id"):
            patient, source = lab["patient_id"], "labels"
        elif info.get("patient_id"):
            patient, source = _fmt(info["patient_id"]), _fmt(info.get("patient_id_source"))
        else:
            parent = folder_id(rel, src)
            patient, source = ids.pseudonym(parent, "folder") if ids is not None else (parent, "folder")
        row = {
            "image_id": rec["image_id"],
            "patient_id": patient,
            "patient_id_source": source,
            "laterality": lab.get("laterality") or _fmt(info.get("laterality")),
            "laterality_source": "labels" if lab.get("laterality") else _fmt(info.get("laterality_source")),
            "view": lab.get("view") or _fmt(info.get("view")),
            "label": lab.get("label", ""),
            "fold": "-1",
            "split": "",
            "status": rec["status"],
            "reason": rec.get("reason", ""),
            "error": rec.get("error", ""),
            "path": rel,
            "cache": rec.get("cache", ""),
            "canvas": rec.get("canvas") or _canvas_text(rec.get("settings", "")),
            "source_size": rec["source_size"],
            "source_mtime_ns": rec["source_mtime_ns"],
            "settings": rec["settings"],
        }
        row.update({k: _fmt(info.get(k)) for k in INFO_COLUMNS})
        rows.append(row)
    return rows


def _canvas_text(key: str) -> str:
    canvas = settings_canvas(key)
    return f"{canvas[0]}x{canvas[1]}" if canvas else ""


def _match_label(rel: str, stems: Counter, labels: dict[str, dict] | None) -> dict:
    """By image stem; a stem shared by several files only matches in the folder named after
    the label row's patient_id (the RSNA layout)."""
    if not labels:
        return {}
    stem = image_stem(rel)
    lab = labels.get(stem)
    if lab is None:
        return {}
    if stems[stem] > 1:
        parent = rel.rsplit("/", 2)[-2] if "/" in rel else ""
        if not lab["patient_id"] or parent != lab["patient_id"]:
            return {}
    return lab


def labels_without_file(labels: dict[str, dict], rows: list[dict], rels: list[str]) -> list[dict]:
    """Label rows whose image_id matches no input file, sorted by image_id."""
    found = {r["image_id"] for r in rows} | {image_stem(r) for r in rels}
    return [{"image_id": i, "patient_id": lab["patient_id"]}
            for i, lab in sorted(labels.items()) if i not in found]


def assign_folds(rows: list[dict], folds: int, seed: int, log: Callable[[str], None]) -> dict:
    """Patient-grouped, label-stratified folds over labelled ok rows outside the test split (in place).

    Falls back to fewer folds (fewer patients than folds) or GroupKFold (one class), with a
    warning; never raises. Returns {"folds": k, "method": ...}.
    """
    import numpy as np
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    idx = [i for i, r in enumerate(rows)
           if r["status"] == "ok" and r["label"] != "" and r.get("split") != "test"]
    if not idx or folds < 2:
        for i in idx:
            rows[i]["fold"] = "0"
        return {"folds": 1 if idx else 0, "method": "none"}
    y = np.array([rows[i]["label"] for i in idx])
    groups = np.array([rows[i]["patient_id"] for i in idx])
    n_groups = len(set(groups))
    k = min(folds, n_groups)
    if k < folds:
        log(f"warning: {n_groups} labelled patients < {folds} folds; using {k} folds")
    if k < 2:
        for i in idx:
            rows[i]["fold"] = "0"
        return {"folds": 1, "method": "single"}
    if len(set(y)) < 2:
        log("warning: only one label class among ok rows; folds are patient-grouped, not stratified")
        splitter, method = GroupKFold(n_splits=k), "GroupKFold"
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        method = "StratifiedGroupKFold"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" is expected on tiny sets
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(idx)), y, groups)):
            for j in test:
                rows[idx[j]]["fold"] = str(fold)
    return {"folds": k, "method": method}


def assign_test_split(rows: list[dict], share: float, seed: int, log: Callable[[str], None]) -> dict:
    """Hold out a test set (in place): a seeded, patient-grouped share of the patients of the
    labelled ok rows, stratified by the patient's label (its highest), marked split=test; the
    other labelled ok rows split=train. Unlabelled and error rows keep split "". Call before
    `assign_folds`, which gives folds to split=train rows only (test rows keep fold -1, so no
    training, checkpoint choice or threshold can see them).
    Returns {"test_share": share, "test_patients": n, "test_images": n, "test_method": ...}."""
    from sklearn.model_selection import train_test_split

    idx = [i for i, r in enumerate(rows) if r["status"] == "ok" and r["label"] != ""]
    for i in idx:
        rows[i]["split"] = "train"
    info = {"test_share": share, "test_patients": 0, "test_images": 0, "test_method": "none"}
    if share > 0 and not idx:
        log("warning: --test-share given but no labelled, successfully ingested image: no test split")
    if share <= 0 or not idx:
        return info
    patient_label: dict[str, float] = {}  # a patient's label: the highest of its images' (as numbers)
    for i in idx:
        p, y = rows[i]["patient_id"], _label_number(rows[i]["label"])
        patient_label[p] = max(patient_label.get(p, y), y)
    patients = sorted(patient_label)
    n_test = round(share * len(patients))
    if n_test < 1 or n_test >= len(patients):
        raise ConfigError(f"--test-share {share}: {len(patients)} labelled patients give {n_test} test "
                          "patients; choose a share that leaves at least one patient on each side")
    strata = [patient_label[p] for p in patients]
    counts = Counter(strata)
    stratify, method = strata, "stratified by patient label"
    if min(counts.values()) < 2 or len(counts) < 2 or n_test < len(counts) or len(patients) - n_test < len(counts):
        log("warning: too few patients per class to stratify the test split; drawing it unstratified")
        stratify, method = None, "unstratified"
    _, test = train_test_split(patients, test_size=n_test, random_state=seed, shuffle=True, stratify=stratify)
    test = set(test)
    for i in idx:
        if rows[i]["patient_id"] in test:
            rows[i]["split"] = "test"
    info.update(test_patients=len(test), test_images=sum(rows[i]["split"] == "test" for i in idx),
                test_method=method)
    return info


def write_csv(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    """`columns` of `rows` (None -> empty), written to a temp name, then renamed."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    write_text(path, buf.getvalue())
