"""Walk a folder of DICOMs into `DIR/images/<image_id>.npy` + `DIR/manifest.csv`.

Every regular file under SRC (except hidden files, the labels CSV and the output folder) is an
input; each becomes exactly one manifest row, `ok` or `error` with a stable reason. In the RSNA
layout (SRC/train.csv + SRC/train_images/) only train_images/ is walked, so test.csv, lesion
masks and the like are not error rows. Images go through the one preprocessing function,
`medvit.dicom.normalize.preprocess`, in worker processes (`medvit.ingest_workers`) that write
the `.npy` themselves and hand back only a small info dict.

Resume and atomicity:
- each finished file is appended (one self-contained JSON line, flushed) to
  `DIR/.ingest-journal.jsonl`; a torn or unreadable line is ignored.
- a rerun skips a file whose journal record has the same relative path, size, mtime_ns, image_id
  and settings key (`size=512x256;v=5`: the canvas H x W and `medvit.dicom.normalize.VERSION`;
  an old key `size=512` reads as 512x512) and, when ok, whose `.npy` still exists. Unchanged
  error rows are skipped too (decoding the same bytes fails the same way) except reasons
  `internal` and `worker_crash`, which may be transient and are retried.
- `.npy` files and every output file are written through `medvit.io.atomic_path` (a temp name
  in the same folder, then renamed); leftover temp files from a killed run are removed at the
  next start. So after a kill -9 and a rerun, cache and manifest are byte-identical to an
  uninterrupted run.
- labels, patient ids and folds are recomputed from the labels CSV on every run (cheap).

image_id is the file name without a DICOM suffix (.dcm/.dicom/.dic); when two files share it,
each of them gets `<stem>-<first 8 hex of sha1(relative path)>`, deterministic for a given tree.

No PHI: only whitelisted, non-identifying fields of the preprocessing info are kept; error rows
carry the reason label, a short detail and for unexpected exceptions only the exception type.

Rooms: this module is the run (discovery, plan, progress, summary); `medvit.manifest` holds the
journal, labels, rows, folds and CSV writing; `medvit.ingest_workers` the per-file work and pools.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

from medvit.canvas import Size, parse_size, size_text
from medvit.dicom import DEFAULT_SIZE  # `medvit ingest --size`
from medvit.errors import ConfigError, MedvitError
from medvit.ingest_workers import run_pool, run_serial
from medvit.io import write_text
from medvit.manifest import (  # noqa: F401 (re-exported: medvit.ingest.* is the public face)
    DICOM_SUFFIXES, INFO_COLUMNS, JOURNAL_NAME, MANIFEST_COLUMNS, RETRIED_REASONS, Journal,
    assign_folds, assign_image_ids, assign_test_split, build_rows, image_stem, labels_without_file, load_labels,
    read_journal, read_manifest, reusable, settings_canvas, write_csv,
)
from medvit.privacy import PatientIds, patient_ids
from medvit.workers import usable_cores

DEFAULT_DATA_DIR = "medvit-data"




INGEST_JSON = "ingest.json"


def settings_key(size: int | str | Size) -> str:
    """What a cached .npy depends on besides the source file: the canvas ("size=512x256") and
    the preprocessing version (`medvit.dicom.normalize.VERSION`, imported here to keep
    `import medvit.ingest` light). `--any-modality` is not part of it: toggling it redoes only
    the files it decides (`medvit.manifest.reusable`), not every mammogram."""
    from medvit.dicom.normalize import VERSION

    return f"size={size_text(size)};v={VERSION}"


def ingest_size(data_dir: str | Path | None) -> Size:
    """The canvas (H, W) `ingest` used for DATA_DIR (the manifest's `settings` column,
    `settings_key`'s "size=512x256;v=5"; an old "size=512" is (512, 512)), so new DICOMs are
    preprocessed as the training images were; (DEFAULT_SIZE, DEFAULT_SIZE) when unknown. The
    manifest is read by the one reader, `read_manifest`."""
    default = (DEFAULT_SIZE, DEFAULT_SIZE)
    if not data_dir or not (Path(data_dir) / "manifest.csv").is_file():
        return default
    try:
        settings = read_manifest(data_dir, columns=["settings"])["settings"]
    except MedvitError:
        return default
    for key in settings.dropna().astype(str).head(1):  # every row carries the same key
        return settings_canvas(key) or default
    return default


def ingest_settings(data_dir: str | Path | None) -> dict:
    """The settings `medvit ingest` recorded in DATA_DIR/ingest.json (src, labels, label_column,
    folds, seed, test_share, settings_key, canvas, ...): the one reader of that file. `canvas`
    is always "HxW" text (files from before it have `size`: 512 -> "512x512"). {} when DATA_DIR
    has no ingest.json; MedvitError naming the file when it cannot be read."""
    if not data_dir:
        return {}
    path = Path(data_dir) / INGEST_JSON
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings") or {}
        if not isinstance(settings, dict):
            raise ValueError("'settings' is not a mapping")
        if not settings.get("canvas") and settings.get("size") is not None:
            settings["canvas"] = size_text(settings["size"])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise MedvitError(f"{path}: cannot read the ingest settings ({type(err).__name__}: {err}); "
                          "re-run `medvit ingest`") from None
    return settings


# ----------------------------------------------------------------------------- discovery

def _rsna_images_folder(src: Path, labels_path: Path | None) -> str | None:
    """RSNA layout (SRC/train.csv is the labels CSV and SRC/train_images/ exists): only
    train_images/ holds inputs, so test.csv, lesion masks and the like are not error rows."""
    if (labels_path is not None and labels_path.resolve() == (src / "train.csv").resolve()
            and (src / "train_images").is_dir()):
        return "train_images"
    return None


def find_inputs(src: Path, skip: Iterable[Path] = (), only: str | None = None) -> list[str]:
    """Relative POSIX paths of every regular, non-hidden file under `src`, sorted.

    `skip` holds files or folders (e.g. the labels CSV, the output folder) left out; `only`, a
    subfolder of `src` to walk instead of all of it (paths stay relative to `src`). Folder
    symlinks are not followed (no loops); file symlinks are.
    """
    skip_real = {os.path.realpath(p) for p in skip}
    found: list[str] = []
    stack = [(str(src / only), f"{only}/")] if only else [(str(src), "")]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError as err:  # one unreadable subfolder must not stop the run: say so, go on
            if not rel:
                raise MedvitError(f"{folder}: cannot read the folder ({type(err).__name__})") from None
            print(f"medvit: skipping {folder}: cannot read it ({type(err).__name__})", file=sys.stderr)
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if os.path.realpath(entry.path) not in skip_real:
                        stack.append((entry.path, f"{rel}{entry.name}/"))
                elif entry.is_file() and os.path.realpath(entry.path) not in skip_real:
                    found.append(f"{rel}{entry.name}")
    return sorted(found)


def remove_temp_files(*folders: Path) -> int:
    """Delete temp files left by a killed run (`medvit.io.atomic_path` names them '.NAME.XXXX.tmp')."""
    removed = 0
    for folder in folders:
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    removed += 1
    return removed


# ----------------------------------------------------------------------------- the run

def ingest(
    src: str | Path,
    out: str | Path = DEFAULT_DATA_DIR,
    labels: str | Path | None = None,
    label_column: str = "cancer",
    size: int | str | Size = DEFAULT_SIZE,
    workers: int | None = None,
    folds: int = 4,
    seed: int = 0,
    test_share: float = 0.0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    preprocess: Callable | None = None,
    any_modality: bool = False,
    id_key: str | None = None,
    raw_patient_ids: bool = False,
) -> dict:
    """Ingest every file under `src` into `out`; return the summary (also saved in ingest.json).

    labels: a CSV with image_id + `label_column` (default `src/train.csv` when present).
    size: the canvas, 512 (a square), "512x256" or (512, 256): every image is H x W.
    test_share: share of the labelled patients held out as the test split (0: none); folds are
        drawn over the rest. Patient-grouped, stratified by patient label, seeded by `seed`.
    workers: processes (default: the usable cores); 1 runs in this process.
    progress: tqdm bar on a terminal, plain lines otherwise (`medvit.progress`); False: neither.
    preprocess: replaces medvit.dicom.normalize.preprocess (tests); it must be a module-level
        function `(path, size, *, any_modality) -> Preprocessed` (size: the (H, W) tuple) so
        worker processes can import it.
    any_modality: accept files whose Modality is not MG (else error rows `not_mammogram`).
    id_key / raw_patient_ids: patient IDs not from the labels CSV leave as keyed pseudonyms
        (`medvit.privacy`), raw only with raw_patient_ids.
    """
    from medvit.dicom.normalize import VERSION

    started = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise MedvitError(f"{src}: not a folder; pass the folder holding the DICOM files")
    try:
        canvas = parse_size(size, "--size")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if (workers is not None and workers < 1) or folds < 1:
        raise ConfigError(f"--workers {workers} / --folds {folds}: both must be at least 1")
    if not 0.0 <= test_share < 1.0:
        raise ConfigError(f"--test-share {test_share}: a share of the patients in [0, 1), e.g. 0.2")
    workers = workers or usable_cores()
    labels_path = Path(labels) if labels else (src / "train.csv" if (src / "train.csv").is_file() else None)
    if labels_path is not None and not labels_path.is_file():
        raise ConfigError(f"{labels_path}: labels CSV not found")
    label_table = load_labels(labels_path, label_column) if labels_path else None
    ids_policy = patient_ids(id_key, raw_patient_ids)

    skip = [out] + ([labels_path] if labels_path else [])
    rels = find_inputs(src, skip, only=_rsna_images_folder(src, labels_path))
    if not rels:
        raise MedvitError(f"{src}: no input files found (hidden files and the labels CSV are skipped)")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out, images)
    ids = assign_image_ids(rels)

    journal_path = out / JOURNAL_NAME
    todo, done = _plan(src, out, rels, ids, canvas, read_journal(journal_path), any_modality, ids_policy.mode)
    _process_all(todo, workers, done, journal_path, progress, preprocess, ids_policy)

    rows = build_rows(rels, done, src, label_table, ids_policy)
    test_info = assign_test_split(rows, test_share, seed, log)
    fold_info = assign_folds(rows, folds, seed, log)
    missing = labels_without_file(label_table, rows, rels) if label_table is not None else None
    summary = _summary(rows, todo, missing, fold_info, images, started)
    summary.update(test_info)
    write_csv(out / "manifest.csv", MANIFEST_COLUMNS, rows)
    if missing is not None:
        write_csv(out / "missing_files.csv", ["image_id", "patient_id"], missing)
    # Compact the journal to one line per current file, in path order.
    write_text(journal_path, "".join(json.dumps(done[r], sort_keys=True) + "\n" for r in rels))
    settings = {"src": str(src), "out": str(out), "labels": str(labels_path) if labels_path else None,
                "label_column": label_column, "canvas": size_text(canvas), "workers": workers, "folds": folds,
                "seed": seed, "test_share": test_share, "settings_key": settings_key(canvas),
                "preprocess_version": VERSION, "any_modality": any_modality,
                "patient_ids": "raw" if raw_patient_ids else "hmac"}
    record = {"canvas": size_text(canvas), "settings": settings, "summary": summary}
    write_text(out / INGEST_JSON, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return summary


def _plan(src: Path, out: Path, rels: list[str], ids: dict[str, str], size: Size, journal: dict[str, dict],
          any_modality: bool = False, id_mode: str = "raw") -> tuple[list[dict], dict[str, dict]]:
    """Split the files into tasks to run and journal records still valid (resume)."""
    key = settings_key(size)
    todo: list[dict] = []
    done: dict[str, dict] = {}
    for rel in rels:
        st = os.stat(src / rel)
        cache = f"images/{ids[rel]}.npy"
        task = {"path": rel, "abs": str(src / rel), "image_id": ids[rel], "size": size, "canvas": size_text(size),
                "cache": cache, "cache_abs": str(out / cache),
                "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns, "settings": key,
                "any_modality": any_modality, "ids": id_mode}
        if reusable(journal.get(rel), task, out):
            done[rel] = journal[rel]
        else:
            todo.append(task)
    return todo, done


def _process_all(todo: list[dict], workers: int, done: dict, journal_path: Path,
                 progress: bool | None, preprocess: Callable | None, ids_policy: PatientIds) -> None:
    from medvit.progress import progress_bar

    bar = progress_bar(total=len(todo), desc="ingest", unit="img", enabled=progress)
    journal = Journal(journal_path)

    def on_done(record: dict) -> None:
        info = record.get("info") or {}
        if "patient_id" in info:  # the header's PatientID never reaches the journal raw (opt-in aside)
            info["patient_id"], info["patient_id_source"] = ids_policy.pseudonym(info["patient_id"])
        journal.append(record)
        done[record["path"]] = record
        bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            run_serial(todo, on_done, preprocess)
        else:
            run_pool(todo, min(workers, len(todo)), on_done, preprocess)
    finally:
        journal.close()
        bar.close()


def _summary(rows: list[dict], todo: list[dict], missing: list[dict] | None,
             fold_info: dict, images: Path, started: float) -> dict:
    ok = sum(r["status"] == "ok" for r in rows)
    reasons = Counter(r["reason"] for r in rows if r["status"] == "error")
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "files": len(rows), "ok": ok, "error": len(rows) - ok,
        "errors_by_reason": dict(sorted(reasons.items())),
        "processed": len(todo), "skipped": len(rows) - len(todo),
        "seconds": round(seconds, 3),
        "processed_per_s": round(len(todo) / seconds, 2) if seconds > 0 else None,
        "folds": fold_info["folds"], "fold_method": fold_info["method"],
    }
    if missing is not None:
        unlabelled = [r["image_id"] for r in rows if r["label"] == ""]
        summary.update(labelled=len(rows) - len(unlabelled),
                       files_without_label=len(unlabelled), files_without_label_examples=unlabelled[:5],
                       labels_without_file=len(missing),
                       labels_without_file_examples=[m["image_id"] for m in missing[:5]])
    cached = {r["cache"].rsplit("/", 1)[-1] for r in rows if r["status"] == "ok"}
    summary["stale_cache_files"] = sum(1 for p in images.glob("*.npy") if p.name not in cached)
    return summary


def format_summary(summary: dict) -> str:
    """A few human lines (IDs and counts only)."""
    lines = [
        f"files {summary['files']}: ok {summary['ok']}, error {summary['error']} "
        f"(processed {summary['processed']}, skipped {summary['skipped']}, "
        f"{summary['seconds']:.1f} s, {summary['processed_per_s'] or 0:.1f} img/s)",
    ]
    if summary["errors_by_reason"]:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors_by_reason"].items()))
    if "labelled" in summary:
        lines.append(f"labelled {summary['labelled']}; folds {summary['folds']} ({summary['fold_method']})")
        if summary.get("test_patients"):
            lines.append(f"test split: {summary['test_patients']} patients, {summary['test_images']} images "
                         f"(share {summary['test_share']:g}, {summary['test_method']}; never trained or selected on)")
        if summary["files_without_label"]:
            lines.append(f"files without a label row: {summary['files_without_label']} "
                         f"(e.g. {', '.join(summary['files_without_label_examples'])})")
        if summary["labels_without_file"]:
            lines.append(f"label rows without a file: {summary['labels_without_file']} "
                         f"(e.g. {', '.join(summary['labels_without_file_examples'])}; "
                         "see missing_files.csv)")
    else:
        lines.append("no labels CSV: label empty, fold -1 (inference manifest)")
    if summary["stale_cache_files"]:
        lines.append(f"cache files not in this manifest (left in place): {summary['stale_cache_files']}")
    return "\n".join(lines)
