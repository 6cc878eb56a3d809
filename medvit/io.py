"""Atomic file writes: nothing half-written ever carries a final name."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on failure remove it.

    The temp name starts with '.' and ends with '.tmp' (same folder, so the rename is atomic),
    which lets a resumed job recognise and delete leftovers of a killed one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def printable(text: str) -> str:
    """`text` with a file name's undecodable bytes (Python holds them as surrogates) spelled
    as escapes (`\\xff`), so it can be written as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8, via `printable`: a file name that is not valid UTF-8 does not fail the write."""
    with atomic_path(path) as tmp:
        tmp.write_text(printable(text), encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_npy(path: str | Path, array: Any) -> Path:
    """np.save (no pickles) to a temp name beside `path`, then rename."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return Path(path)


def write_png(path: str | Path, array: Any) -> Path:
    """A uint8/uint16 grey or BGR array as PNG (OpenCV), written atomically."""
    import cv2

    ok, png = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())
    return Path(path)
