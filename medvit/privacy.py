"""Patient IDs that leave medvit: a header PatientID only as a keyed pseudonym.

A hospital's PatientID is a record number, and de-identification tools often copy the patient's
name into it. So an ID read from a DICOM header (or, failing that, from a folder name) reaches
manifests, journals, predictions and logs only as `HMAC-SHA256(key, id)` (the first 16 hex
digits, prefixed "p-"): stable, so the same patient maps to the same pseudonym in every ingest
and prediction made with the same key, and the key holder can re-link results to records by
hashing their own list of IDs. IDs from a labels CSV (RSNA's `patient_id`, already
de-identified) are kept as they are; raw header IDs only with an explicit opt-in (`--raw-patient-ids`).

The key, in order: `--id-key`, the environment variable MEDVIT_ID_KEY, else the file
`$XDG_CONFIG_HOME/medvit/id_key` (default `~/.config/medvit/id_key`), generated once (random,
mode 0600). Keep that file: another key gives other pseudonyms.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from medvit.errors import ConfigError

KEY_ENV = "MEDVIT_ID_KEY"
PREFIX = "p-"
DIGITS = 16  # 64 bits of the HMAC: collisions stay negligible for any realistic patient count


def key_file() -> Path:
    """Where the generated key lives: $XDG_CONFIG_HOME/medvit/id_key (~/.config by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medvit" / "id_key"


def load_key(key: str | None = None) -> bytes:
    """The pseudonym key: `key`, else $MEDVIT_ID_KEY, else the key file (created when missing)."""
    for value, where in ((key, "--id-key"), (os.environ.get(KEY_ENV), KEY_ENV)):
        if value is not None:
            if not value.strip():
                raise ConfigError(f"{where} is empty: give a secret (e.g. 64 hex digits), or leave it out "
                                  f"to use {key_file()}")
            return value.strip().encode("utf-8")
    path = key_file()
    if not path.is_file():
        _create_key(path)
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ConfigError(f"{path}: the patient-ID key file is empty; restore it from a backup, or delete it "
                          "to start a new key (pseudonyms then change)")
    return text.encode("utf-8")


def _create_key(path: Path) -> None:
    """Write a new random key to `path` unless another process got there first. The key is
    written to a temp file and hard-linked into place (atomic, and never replaces a key that
    exists: two first runs started together end with one key, not two)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".id_key.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return  # another process created it: use theirs
    finally:
        os.unlink(tmp)
    print(f"medvit: created the patient-ID key {path} (keep it: it maps pseudonyms back to patient IDs)",
          file=sys.stderr)


@dataclass(frozen=True)
class PatientIds:
    """How IDs that do not come from a labels CSV leave medvit: `pseudonym(raw)` -> (id, source)."""

    key: bytes | None  # None: raw IDs (the explicit opt-in)

    @property
    def mode(self) -> str:
        """"raw" or "hmac:<fingerprint of the key>" (a journal record made another way is redone)."""
        if self.key is None:
            return "raw"
        return "hmac:" + hashlib.sha256(b"medvit-key-fingerprint" + self.key).hexdigest()[:8]

    def pseudonym(self, raw: str, source: str = "header") -> tuple[str, str]:
        """(the ID to write, where it came from: "header" / "folder", with "_hmac" when hashed)."""
        raw = str(raw or "").strip()
        if not raw:
            return "", ""
        if self.key is None:
            return raw, source
        digest = hmac.new(self.key, raw.encode("utf-8"), hashlib.sha256).hexdigest()
        return PREFIX + digest[:DIGITS], f"{source}_hmac"


def patient_ids(id_key: str | None = None, raw: bool = False) -> PatientIds:
    """The policy for a run: raw IDs with `raw` (opt-in), else pseudonyms under the resolved key."""
    if raw:
        if id_key is not None:
            raise ConfigError("--raw-patient-ids and --id-key exclude each other: raw IDs are not hashed")
        return PatientIds(None)
    return PatientIds(load_key(id_key))


def folder_id(rel: str, src: Path) -> str:
    """The patient ID a file without a header PatientID falls back to: its parent folder's name
    (RSNA's layout is <patient_id>/<image_id>.dcm), SRC's own name for a file at the top."""
    return rel.rsplit("/", 2)[-2] if "/" in rel else Path(src).resolve().name
