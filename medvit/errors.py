"""Errors that name the file (or key) and say what to do."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Iterable


class MedvitError(Exception):
    """Base class for every error medvit raises on bad input."""


class ConfigError(MedvitError):
    """A config key or value is wrong."""


_QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")
_UID = re.compile(r"b?['\"]\d+(\.\d+)+['\"]")


def scrub_quoted(text: str) -> str:
    """Replace quoted values in a library's message with '…', keeping UIDs (digits and dots):
    decoder and pydicom errors quote header values, which may be a name or a birth date."""
    return _QUOTED.sub(lambda m: m.group(0) if _UID.fullmatch(m.group(0)) else "'…'", text)


class DicomError(MedvitError):
    """A DICOM file cannot be turned into an image. `reason` is a short, stable label; quoted
    values in `detail` are scrubbed (`scrub_quoted`), as the detail reaches manifests and CSVs."""

    def __init__(self, path: str | Path, reason: str, detail: str = "", info: dict | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.info = dict(info or {})  # whitelisted header facts still worth recording (e.g. modality)
        self.detail = detail = scrub_quoted(detail)
        msg = f"{self.path}: {reason}" + (f" ({detail})" if detail else "")
        super().__init__(msg)


def shorten(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters (for CSV cells and summaries)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def suggest(name: str, valid: Iterable[str]) -> str:
    """'did you mean ...' text listing the closest valid names, or all of them."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}?"
    return f"valid: {', '.join(valid)}"
