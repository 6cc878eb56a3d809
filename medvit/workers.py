"""Worker processes for DataLoaders: forkserver, not fork.

Forking a process whose OpenCV / OpenMP thread pools are already running can deadlock the child
(seen here: predict with 2 workers hung after the parent had decoded images). forkserver starts
workers from a clean server process; preloading the heavy modules there keeps start-up cheap.
"""
from __future__ import annotations

import multiprocessing

PRELOAD = ["numpy", "cv2", "torch", "medvit.dicom.normalize", "medvit.data.datasets"]


def worker_context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx
