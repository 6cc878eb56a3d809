"""Worker processes for DataLoaders: forkserver, not fork.

Forking a process whose OpenCV / OpenMP thread pools are already running can deadlock the child
(seen here: predict with 2 workers hung after the parent had decoded images). forkserver starts
workers from a clean server process; preloading the heavy modules there keeps start-up cheap.
"""
from __future__ import annotations

import multiprocessing
import os

PRELOAD = ["numpy", "cv2", "torch", "medvit.dicom.normalize", "medvit.data.datasets"]


def worker_context(preload: list[str] | None = None):
    """forkserver where the platform has it (preloading `preload`, default PRELOAD, once in the
    server), else spawn. Used by DataLoaders (train, predict) and ingest's process pool."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD if preload is None else preload)
    return ctx


def usable_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the host's): the
    one count behind every default worker / thread number."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
