"""What runs in ingest's worker processes: one file through `preprocess` into its `.npy`, and
the pools that run many (serial, or a bounded process pool that survives a worker's death).

A worker writes the `.npy` itself and hands back only a small journal record (see
`medvit.manifest`), never the image: the parent process stays light.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from medvit.canvas import parse_size
from medvit.errors import DicomError, MedvitError, shorten
from medvit.io import save_npy
from medvit.manifest import INFO_COLUMNS

_INFO_KEYS = set(INFO_COLUMNS) | {"patient_id", "laterality", "laterality_source", "view"}
_TASK_KEYS = ("path", "image_id", "source_size", "source_mtime_ns", "settings", "canvas", "ids",
              "any_modality")  # echoed in records


def _exit_with(parent: int) -> None:
    """Leave when `parent` is gone: after a kill -9 of ingest, its workers (children of the
    forkserver, so no PDEATHSIG) would otherwise wait on their queue for ever."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # exists, owned by someone else: not our parent any more
            os._exit(1)


def _init_worker(parent: int | None = None) -> None:
    """One thread per worker process: the parallelism is across processes. With `parent` (the
    ingest process's pid) a daemon thread ends this worker once that process has died."""
    if parent is not None and os.name == "posix":  # os.kill(pid, 0) probes only on POSIX
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2

    cv2.setNumThreads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # optional: only caps BLAS/OpenMP pools already loaded
        pass


def _default_preprocess(path: str, size: tuple[int, int], *, any_modality: bool = False) -> Any:
    from medvit.dicom.normalize import preprocess

    return preprocess(path, size=size, any_modality=any_modality)


def process_one(task: dict, preprocess: Callable | None = None) -> dict:
    """Preprocess one file, write its .npy, return its journal record. Never raises on bad input.

    `task`: path (relative), abs, cache (relative to DIR), cache_abs, image_id, size (the canvas
    (H, W)), canvas ("HxW"), source_size, source_mtime_ns, settings, any_modality, ids (the patient-ID mode;
    the parent pseudonymises the record's patient_id before it is journaled). Unexpected exceptions become reason
    `internal` (type name only: exception messages can quote header values).
    """
    import numpy as np

    from medvit.dicom.read import quiet_pydicom

    fn = preprocess or _default_preprocess
    try:
        with quiet_pydicom():
            out = fn(task["abs"], task["size"], any_modality=bool(task.get("any_modality")))
        image = out.image
        if image.shape != tuple(parse_size(task["size"])) or image.dtype != np.uint16:
            raise ValueError("preprocess returned a wrong shape or dtype")
        save_npy(Path(task["cache_abs"]), image)
    except DicomError as err:
        return failed_record(task, err.reason, shorten(err.detail, 160), err.info)
    except Exception as err:  # a bug or a decoder failure must not stop the batch
        return failed_record(task, "internal", type(err).__name__)
    info = {k: v for k, v in (out.info or {}).items() if k in _INFO_KEYS}
    record = {k: task.get(k) for k in _TASK_KEYS}
    record.update(status="ok", reason="", error="", cache=task["cache"], info=_jsonable(info))
    return record


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


def failed_record(task: dict, reason: str, detail: str = "", info: dict | None = None) -> dict:
    record = {k: task.get(k) for k in _TASK_KEYS}
    error = f"{reason}: {detail}" if detail else reason
    info = {k: v for k, v in (info or {}).items() if k in _INFO_KEYS}
    record.update(status="error", reason=reason, error=error, cache="", info=_jsonable(info))
    return record


def run_serial(tasks: list[dict], on_done: Callable[[dict], None], preprocess: Callable | None) -> None:
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


def run_pool(tasks: list[dict], workers: int, on_done: Callable[[dict], None],
              preprocess: Callable | None) -> None:
    """Bounded in-flight pool. If a worker dies (a decoder segfault), the pool is rebuilt and the
    files that were in flight are retried one at a time; the one that kills a worker alone gets an
    error row `worker_crash`. concurrent.futures offers no per-task crash attribution, hence this."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from medvit.workers import worker_context

    pending, retry = deque(tasks), deque()
    limit = workers * 4
    ctx = worker_context(["medvit.ingest_workers", "medvit.dicom.normalize"])
    finished = crashed = 0
    while pending or retry:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(os.getpid(),)) as pool:
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
                        on_done(failed_record(task, "internal", type(exc).__name__))
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
                    on_done(failed_record(broken[0], "worker_crash", "the worker process died on this file"))
                else:
                    retry.extend(sorted(broken, key=lambda t: t["path"]))
