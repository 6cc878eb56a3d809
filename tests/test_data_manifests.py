"""data_manifests/: the YAML descriptors parse and match the code they describe (no drift)."""
from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from medvit.dicom import synth
from medvit.dicom.write import SYNTAXES
from medvit.ingest import ingest
from medvit.manifest import MANIFEST_COLUMNS

ROOT = Path(__file__).resolve().parents[1] / "data_manifests"


def _load(name: str) -> dict:
    data = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict), name
    return data


def test_manifest_schema_matches_manifest_columns() -> None:
    columns = _load("manifest.schema.yaml")["columns"]
    assert [c["name"] for c in columns] == list(MANIFEST_COLUMNS)
    for column in columns:
        assert column["dtype"] in {"str", "int", "float"}, column["name"]
        assert column["meaning"].strip(), column["name"]


def test_rsna_descriptor_matches_synth_and_ingest() -> None:
    rsna = _load("rsna_screening_mammography.yaml")
    assert [c["name"] for c in rsna["train_csv"]["columns"]] == list(synth.CSV_COLUMNS)
    assert all(c["meaning"].strip() for c in rsna["train_csv"]["columns"])
    assert rsna["label_column"] == inspect.signature(ingest).parameters["label_column"].default
    assert rsna["label_column"] in synth.CSV_COLUMNS
    # synth writes RSNA's compressed syntaxes (plus uncompressed): its files must cover them.
    assert {s["uid"] for s in rsna["transfer_syntaxes"]} <= set(SYNTAXES)
