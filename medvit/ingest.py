"""Walk a folder of DICOMs into `DIR/images/<image_id>.npy` + `DIR/manifest.csv`.

Every regular file under SRC (except hidden files, the labels CSV and the output folder) is an
input; each becomes exactly one manifest row, `ok` or `error` with a stable reason. In the RSNA
layout (SRC/train.csv + SRC/train_images/) only train_images/ is walked, so test.csv, lesion
masks and the like are not error rows. Images go
through the one preprocessing function, `medvit.dicom.normalize.preprocess`, in worker processes
that write the `.npy` themselves and hand back only a small info dict.

Resume and atomicity:
- each finished file is appended (one self-contained JSON line, flushed) to
  `DIR/.ingest-journal.jsonl`; a torn or unreadable line is ignored.
- a rerun skips a file whose journal record has the same relative path, size, mtime_ns, image_id
  and settings key (`size=512;v=1`) and, when ok, whose `.npy` still exists. Unchanged error rows
  are skipped too (decoding the same bytes fails the same way) except reasons `internal` and
  `worker_crash`, which may be transient and are retried.
- `.npy` files and every output file are written to a temp name in the same folder, then renamed
  (`os.replace`); leftover temp files from a killed run are removed at the next start. So after a
  kill -9 and a rerun, cache and manifest are byte-identical to an uninterrupted run.
- labels, patient ids and folds are recomputed from the labels CSV on every run (cheap).

image_id is the file name without a DICOM suffix (.dcm/.dicom/.dic); when two files share it,
each of them gets `<stem>-<first 8 hex of sha1(relative path)>`, deterministic for a given tree.

No PHI: only whitelisted, non-identifying fields of the preprocessing info are kept; error rows
carry the reason label, a short detail and for unexpected exceptions only the exception type.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Iterable

from medvit.errors import ConfigError, DicomError, MedvitError

DEFAULT_DATA_DIR = "medvit-data"
# Bump when the cache must be rebuilt (a change in preprocessing or in the .npy layout).
PREPROCESS_VERSION = 1
JOURNAL_NAME = ".ingest-journal.jsonl"
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
RETRIED_REASONS = {"internal", "worker_crash"}
# Fields of Preprocessed.info copied to the manifest (a whitelist: nothing else can leak).
INFO_COLUMNS = [
    "rows", "columns", "bits_stored", "photometric", "transfer_syntax", "voi",
    "crop_y0", "crop_x0", "crop_y1", "crop_x1", "flipped", "reduce", "decoder",
]
MANIFEST_COLUMNS = [
    "image_id", "patient_id", "laterality", "view", "label", "fold", "status", "reason", "error",
    "path", "cache", *INFO_COLUMNS, "source_size", "source_mtime_ns", "settings",
]
_INFO_KEYS = set(INFO_COLUMNS) | {"patient_id", "laterality", "view"}
_TMP_SUFFIX = ".tmp"
_TASK_KEYS = ("path", "image_id", "source_size", "source_mtime_ns", "settings")  # echoed in records


def settings_key(size: int) -> str:
    """What a cached .npy depends on besides the source file."""
    return f"size={size};v={PREPROCESS_VERSION}"


# ----------------------------------------------------------------------------- discovery

def _rsna_images_folder(src: Path, labels_path: Path | None) -> str | None:
    """RSNA layout (SRC/train.csv is the labels CSV and SRC/train_images/ exists): only
    train_images/ holds inputs, so test.csv, lesion masks and the like are not error rows."""
    if labels_path is not None and labels_path == src / "train.csv" and (src / "train_images").is_dir():
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
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if os.path.realpath(entry.path) not in skip_real:
                        stack.append((entry.path, f"{rel}{entry.name}/"))
                elif entry.is_file() and os.path.realpath(entry.path) not in skip_real:
                    found.append(f"{rel}{entry.name}")
    return sorted(found)


def image_stem(rel: str) -> str:
    """File name without a DICOM suffix; other suffixes (UID-like names '1.2.840.5') are kept."""
    name = rel.rsplit("/", 1)[-1]
    root, ext = os.path.splitext(name)
    return root if ext.lower() in DICOM_SUFFIXES else name


def assign_image_ids(rels: list[str]) -> dict[str, str]:
    """rel path -> image_id: the stem, or stem-<sha1(rel)[:8]> for stems seen more than once."""
    stems = {rel: image_stem(rel) for rel in rels}
    counts = Counter(stems.values())
    return {
        rel: stem if counts[stem] == 1 else f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
        for rel, stem in stems.items()
    }


# ----------------------------------------------------------------------------- labels

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


# ----------------------------------------------------------------------------- workers

def _init_worker() -> None:
    """One thread per worker process: the parallelism is across processes."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2

    cv2.setNumThreads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # optional: only caps BLAS/OpenMP pools already loaded
        pass


def _default_preprocess(path: str, size: int) -> Any:
    from medvit.dicom.normalize import preprocess

    return preprocess(path, size=size)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _save_npy(image: Any, final: Path) -> None:
    """Write to a temp name in the same folder, then rename: no half-written final file."""
    import numpy as np

    tmp = final.with_name(f".{final.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, image, allow_pickle=False)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def process_one(task: dict, preprocess: Callable | None = None) -> dict:
    """Preprocess one file, write its .npy, return its journal record. Never raises on bad input.

    `task`: path (relative), abs, cache (relative to DIR), cache_abs, image_id, size, source_size,
    source_mtime_ns, settings. Unexpected exceptions become reason `internal` (type name only:
    exception messages can quote header values).
    """
    import numpy as np

    fn = preprocess or _default_preprocess
    try:
        with _quiet_pydicom():
            out = fn(task["abs"], task["size"])
        image = out.image
        if image.shape != (task["size"], task["size"]) or image.dtype != np.uint16:
            raise ValueError("preprocess returned a wrong shape or dtype")
        _save_npy(image, Path(task["cache_abs"]))
    except DicomError as err:
        return _failed_record(task, err.reason, _short(err.detail))
    except Exception as err:  # a bug or a decoder failure must not stop the batch
        return _failed_record(task, "internal", type(err).__name__)
    info = {k: v for k, v in (out.info or {}).items() if k in _INFO_KEYS}
    record = {k: task[k] for k in _TASK_KEYS}
    record.update(status="ok", reason="", error="", cache=task["cache"], info=_jsonable(info))
    return record


@contextlib.contextmanager
def _quiet_pydicom():
    """pydicom's warnings and log records can quote header values (PHI): keep them out of the
    logs. The error row's reason says what went wrong."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _jsonable(info: dict) -> dict:
    """numpy scalars -> Python scalars, everything else non-basic -> str."""
    out = {}
    for key, value in info.items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if value is not None and not isinstance(value, (bool, int, float, str)):
            value = str(value)
        out[key] = value
    return out


def _failed_record(task: dict, reason: str, detail: str = "") -> dict:
    record = {k: task[k] for k in _TASK_KEYS}
    error = f"{reason}: {detail}" if detail else reason
    record.update(status="error", reason=reason, error=error, cache="", info={})
    return record


def _run_serial(tasks: list[dict], on_done: Callable[[dict], None], preprocess: Callable | None) -> None:
    """workers=1: in this process, single-threaded like a pool worker (threads restored after)."""
    import cv2

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional, as in _init_worker
        threadpool_limits = None
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
            for task in tasks:
                on_done(process_one(task, preprocess))
    finally:
        cv2.setNumThreads(threads)


def _mp_context():
    """forkserver on POSIX (safe next to threads in the parent, cheap per worker), else spawn."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Preloaded once in the server, so forked workers start with the decoders imported.
        ctx.set_forkserver_preload(["medvit.ingest", "medvit.dicom.normalize"])
        return ctx
    return mp.get_context("spawn")


def _run_pool(tasks: list[dict], workers: int, on_done: Callable[[dict], None],
              preprocess: Callable | None) -> None:
    """Bounded in-flight pool. If a worker dies (a decoder segfault), the pool is rebuilt and the
    files that were in flight are retried one at a time; the one that kills a worker alone gets an
    error row `worker_crash`. concurrent.futures offers no per-task crash attribution, hence this."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pending, retry = deque(tasks), deque()
    limit = workers * 4
    ctx = _mp_context()
    finished = crashed = 0
    while pending or retry:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            inflight: dict = {}
            isolating = None
            broken: list[dict] = []
            while (pending or retry or inflight) and not broken:
                while len(inflight) < limit and isolating is None:
                    if retry:
                        if inflight:
                            break
                        task = isolating = retry.popleft()
                    elif pending:
                        task = pending.popleft()
                    else:
                        break
                    inflight[pool.submit(process_one, task, preprocess)] = task
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    task = inflight.pop(future)
                    exc = future.exception()
                    if isinstance(exc, BrokenProcessPool):
                        broken.append(task)
                        continue
                    if exc is None:
                        on_done(future.result())
                    else:  # the task could not reach or leave the worker (pickling)
                        on_done(_failed_record(task, "internal", type(exc).__name__))
                    finished += 1
                    if task is isolating:
                        isolating = None
            if broken:
                broken += list(inflight.values())
                if isolating is not None and len(broken) == 1:
                    crashed += 1
                    if crashed >= 3 and not finished:
                        raise MedvitError("ingest: worker processes die before finishing any file; "
                                          "run with --workers 1 to see why")
                    on_done(_failed_record(broken[0], "worker_crash", "the worker process died on this file"))
                else:
                    retry.extend(sorted(broken, key=lambda t: t["path"]))


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


class _Journal:
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


def _reusable(record: dict | None, task: dict, out: Path) -> bool:
    if not record:
        return False
    same = all(record.get(k) == task[k] for k in
               ("image_id", "source_size", "source_mtime_ns", "settings"))
    if not same:
        return False
    if record.get("status") == "ok":
        return (out / record.get("cache", "")).is_file()
    return record.get("reason") not in RETRIED_REASONS


# ----------------------------------------------------------------------------- outputs

def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_csv_atomic(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    write_text_atomic(path, buf.getvalue())


def remove_temp_files(*folders: Path) -> int:
    """Delete temp files left by a killed run (ours start with '.' and end with '.tmp')."""
    removed = 0
    for folder in folders:
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX):
                    p.unlink(missing_ok=True)
                    removed += 1
    return removed


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def build_rows(rels: list[str], records: dict[str, dict], src: Path,
               labels: dict[str, dict] | None) -> list[dict]:
    """One manifest row per input file, in path order."""
    stems = Counter(image_stem(r) for r in rels)
    rows = []
    for rel in rels:
        rec = records[rel]
        info = rec.get("info") or {}
        lab = _match_label(rel, stems, labels)
        parent = rel.rsplit("/", 2)[-2] if "/" in rel else src.resolve().name
        row = {
            "image_id": rec["image_id"],
            "patient_id": lab.get("patient_id") or _fmt(info.get("patient_id")) or parent,
            "laterality": lab.get("laterality") or _fmt(info.get("laterality")),
            "view": lab.get("view") or _fmt(info.get("view")),
            "label": lab.get("label", ""),
            "fold": "-1",
            "status": rec["status"],
            "reason": rec.get("reason", ""),
            "error": rec.get("error", ""),
            "path": rel,
            "cache": rec.get("cache", ""),
            "source_size": rec["source_size"],
            "source_mtime_ns": rec["source_mtime_ns"],
            "settings": rec["settings"],
        }
        row.update({k: _fmt(info.get(k)) for k in INFO_COLUMNS})
        rows.append(row)
    return rows


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


def assign_folds(rows: list[dict], folds: int, seed: int, log: Callable[[str], None]) -> dict:
    """Patient-grouped, label-stratified folds over labelled ok rows (in place).

    Falls back to fewer folds (fewer patients than folds) or GroupKFold (one class), with a
    warning; never raises. Returns {"folds": k, "method": ...}.
    """
    import numpy as np
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    idx = [i for i, r in enumerate(rows) if r["status"] == "ok" and r["label"] != ""]
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


# ----------------------------------------------------------------------------- main entry

def ingest(
    src: str | Path,
    out: str | Path = DEFAULT_DATA_DIR,
    labels: str | Path | None = None,
    label_column: str = "cancer",
    size: int = 512,
    workers: int | None = None,
    folds: int = 4,
    seed: int = 0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    preprocess: Callable | None = None,
) -> dict:
    """Ingest every file under `src` into `out`; return the summary (also saved in ingest.json).

    labels: a CSV with image_id + `label_column` (default `src/train.csv` when present).
    workers: processes (default os.cpu_count()); 1 runs in this process.
    progress: tqdm bar on stderr (None: only when stderr is a TTY).
    preprocess: replaces medvit.dicom.normalize.preprocess (tests); it must be a module-level
        function `(path, size) -> Preprocessed` so worker processes can import it.
    """
    started = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise MedvitError(f"{src}: not a folder; pass the folder holding the DICOM files")
    if size < 8:
        raise ConfigError(f"--size {size}: must be at least 8")
    if (workers is not None and workers < 1) or folds < 1:
        raise ConfigError(f"--workers {workers} / --folds {folds}: both must be at least 1")
    workers = workers or os.cpu_count() or 1
    labels_path = Path(labels) if labels else (src / "train.csv" if (src / "train.csv").is_file() else None)
    if labels_path is not None and not labels_path.is_file():
        raise ConfigError(f"{labels_path}: labels CSV not found")
    label_table = load_labels(labels_path, label_column) if labels_path else None

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out, images)
    skip = [out] + ([labels_path] if labels_path else [])
    rels = find_inputs(src, skip, only=_rsna_images_folder(src, labels_path))
    if not rels:
        raise MedvitError(f"{src}: no input files found (hidden files and the labels CSV are skipped)")
    ids = assign_image_ids(rels)

    journal_path = out / JOURNAL_NAME
    todo, done = _plan(src, out, rels, ids, size, read_journal(journal_path))
    _process_all(todo, workers, done, journal_path, progress, preprocess)

    rows = build_rows(rels, done, src, label_table)
    fold_info = assign_folds(rows, folds, seed, log)
    missing = labels_without_file(label_table, rows, rels) if label_table is not None else None
    summary = _summary(rows, todo, missing, fold_info, images, started)
    write_csv_atomic(out / "manifest.csv", MANIFEST_COLUMNS, rows)
    if missing is not None:
        write_csv_atomic(out / "missing_files.csv", ["image_id", "patient_id"], missing)
    # Compact the journal to one line per current file, in path order.
    write_text_atomic(journal_path, "".join(json.dumps(done[r], sort_keys=True) + "\n" for r in rels))
    settings = {"src": str(src), "out": str(out), "labels": str(labels_path) if labels_path else None,
                "label_column": label_column, "size": size, "workers": workers, "folds": folds,
                "seed": seed, "settings_key": settings_key(size), "preprocess_version": PREPROCESS_VERSION}
    text = json.dumps({"settings": settings, "summary": summary}, indent=2, sort_keys=True)
    write_text_atomic(out / "ingest.json", text + "\n")
    return summary


def _plan(src: Path, out: Path, rels: list[str], ids: dict[str, str], size: int,
          journal: dict[str, dict]) -> tuple[list[dict], dict[str, dict]]:
    """Split the files into tasks to run and journal records still valid (resume)."""
    key = settings_key(size)
    todo: list[dict] = []
    done: dict[str, dict] = {}
    for rel in rels:
        st = os.stat(src / rel)
        cache = f"images/{ids[rel]}.npy"
        task = {"path": rel, "abs": str(src / rel), "image_id": ids[rel], "size": size,
                "cache": cache, "cache_abs": str(out / cache),
                "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns, "settings": key}
        if _reusable(journal.get(rel), task, out):
            done[rel] = journal[rel]
        else:
            todo.append(task)
    return todo, done


def labels_without_file(labels: dict[str, dict], rows: list[dict], rels: list[str]) -> list[dict]:
    """Label rows whose image_id matches no input file, sorted by image_id."""
    found = {r["image_id"] for r in rows} | {image_stem(r) for r in rels}
    return [{"image_id": i, "patient_id": lab["patient_id"]}
            for i, lab in sorted(labels.items()) if i not in found]


def _process_all(todo: list[dict], workers: int, done: dict, journal_path: Path,
                 progress: bool | None, preprocess: Callable | None) -> None:
    from tqdm import tqdm

    disable = None if progress is None else not progress
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=disable,
               desc="ingest", smoothing=0.05, dynamic_ncols=True)
    journal = _Journal(journal_path)

    def on_done(record: dict) -> None:
        journal.append(record)
        done[record["path"]] = record
        bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            _run_serial(todo, on_done, preprocess)
        else:
            _run_pool(todo, min(workers, len(todo)), on_done, preprocess)
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
