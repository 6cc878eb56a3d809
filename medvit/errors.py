"""Errors that name the file (or key) and say what to do."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable


class MedvitError(Exception):
    """Base class for every error medvit raises on bad input."""


class ConfigError(MedvitError):
    """A config key or value is wrong."""


class DicomError(MedvitError):
    """A DICOM file cannot be turned into an image. `reason` is a short, stable label."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason}" + (f" ({detail})" if detail else "")
        super().__init__(msg)


def suggest(name: str, valid: Iterable[str]) -> str:
    """'did you mean ...' text listing the closest valid names, or all of them."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}?"
    return f"valid: {', '.join(valid)}"
