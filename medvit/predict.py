"""`medvit predict FOLDER`: batch inference on a folder of DICOMs -> CSV (+ per breast, + overlays).

Files are found the way ingest finds them (`medvit.ingest.find_inputs`: every regular,
non-hidden file, recursively, any suffix) and named the way ingest names them
(`assign_image_ids`). Each goes through the one preprocessing function
(`medvit.dicom.normalize.preprocess`, at the size the training data was ingested at), then
through the training Dataset's scaling and resizing (`model_input`) — no second path, so no
train/serve skew.

Streaming: a torch DataLoader decodes in `workers` processes (bounded prefetch) while the model
runs here; CSV rows are written as batches finish to a hidden temp file, renamed at the end.
Memory stays flat in the number of files (only three small fields per ok file are kept, for the
per-breast table). A bad file is an error row; the run goes on.

No PHI: rows carry the relative path, image_id, the patient_id as a keyed pseudonym (the same one
ingest writes, `medvit.privacy`; raw only with raw_patient_ids), modality, laterality (+ its
source) and view only. Files whose Modality is not MG are error rows `not_mammogram` unless
any_modality.
"""
from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medvit.canvas import parse_size, size_text
from medvit.errors import ConfigError, DicomError, MedvitError, shorten
from medvit.io import atomic_path, printable, write_text
from medvit.privacy import PatientIds, folder_id, patient_ids
from medvit.runs import LoadedRun, load_run
from medvit.workers import usable_cores

COLUMNS = ["path", "image_id", "patient_id", "patient_id_source", "modality", "laterality", "laterality_source",
           "view", "prob", "pred", "status", "error"]
BREAST_COLUMNS = ["patient_id", "laterality", "prob_mean", "prob_max", "n_images", "pred"]
# the only header fields that reach any output; patient_id as its keyed pseudonym (medvit.privacy)
META_KEYS = ("patient_id", "patient_id_source", "modality", "laterality", "laterality_source", "view")


# ----------------------------------------------------------------------------- model


def load_predictor(checkpoint: str | Path, *, which: str = "best", device: str = "auto",
                   size: int | tuple[int, int] | str | None = None) -> LoadedRun:
    """The run (a checkpoint file or a run dir, RUN_DIR/checkpoints/<which>.pt) through the one run
    loader; `size` overrides the ingest canvas new DICOMs are preprocessed to."""
    run = load_run(checkpoint, which, device)
    if size:
        run.canvas = parse_size(size, "--ingest-size")
    return run


def forward_probs(p: LoadedRun, images) -> np.ndarray:
    """Probabilities (N,) or (N, C) with the trainer's own logit -> probability function."""
    import torch

    from medvit.train.steps import autocast, loss_and_probs

    with torch.inference_mode():
        with autocast(p.device, p.amp):
            logits = p.model(images.to(p.device, non_blocking=True))
        dummy = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        _, probs, _ = loss_and_probs(logits, dummy, p.binary)
    return probs.float().cpu().numpy()


# ----------------------------------------------------------------------------- files


def list_dicoms(folder: Path, skip: list[Path]) -> tuple[list[str], dict[str, str]]:
    """(sorted relative paths, rel -> image_id), found and named as ingest does."""
    from medvit.ingest import assign_image_ids, find_inputs

    rels = find_inputs(folder, skip)
    return rels, assign_image_ids(rels)


class DicomFiles:
    """Map-style dataset of files: item = {index, image (C,h,w) tensor or None, meta, error,
    display ((H,W) uint16 canvas for overlays, when asked)}. Never raises on a bad file."""

    def __init__(self, folder: Path, rels: list[str], ingest_size: tuple[int, int], image_size: tuple[int, int],
                 in_chans: int, keep_display: bool = False, ids: PatientIds | None = None,
                 any_modality: bool = False) -> None:
        self.folder, self.rels = folder, rels
        self.ingest_size, self.image_size, self.in_chans = ingest_size, image_size, in_chans
        self.keep_display = keep_display
        self.ids = ids if ids is not None else patient_ids()  # pseudonyms unless told otherwise
        self.any_modality = any_modality

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, index: int) -> dict:
        from medvit.dicom.normalize import preprocess
        from medvit.dicom.read import quiet_pydicom  # pydicom warnings can quote header values (PHI)
        from medvit.models.inputs import model_input

        item: dict = {"index": index, "image": None, "meta": {}, "error": "", "display": None}
        try:
            with quiet_pydicom():
                out = preprocess(self.folder / self.rels[index], size=self.ingest_size,
                                 any_modality=self.any_modality)
            item["image"] = model_input(out.image, self.image_size, self.in_chans)
            info = dict(out.info)
            header_id = info.get("patient_id", "")
            info["patient_id"], info["patient_id_source"] = (  # as ingest: the header's, else the folder's
                self.ids.pseudonym(header_id) if header_id
                else self.ids.pseudonym(folder_id(self.rels[index], self.folder), "folder"))
            item["meta"] = {k: str(info.get(k, "") or "") for k in META_KEYS}  # whitelist: no PHI
            if self.keep_display:
                item["display"] = out.image
        except DicomError as err:
            item["error"] = shorten(f"{err.reason}: {err.detail}" if err.detail else err.reason)
            item["meta"] = {k: str(err.info.get(k, "") or "") for k in META_KEYS}
        except Exception as err:  # a bug or a decoder crash must not stop the batch; messages can
            item["error"] = f"internal: {type(err).__name__}"  # quote header values, so type only
        return item


def collate(items: list[dict]) -> tuple[Any, list[dict]]:
    """(stacked images of the ok items or None, all items without their image tensors)."""
    import torch

    ok = [it["image"] for it in items if it["image"] is not None]
    images = torch.stack(ok) if ok else None
    return images, [{**it, "image": None} for it in items]


def _init_worker(_: int) -> None:
    """One thread per decode worker: the parallelism is across processes."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- rows


def result_rows(p: LoadedRun, items: list[dict], probs: np.ndarray | None, rels: list[str],
                ids: dict[str, str], threshold: float) -> list[dict]:
    rows, k = [], 0
    for it in items:
        rel = rels[it["index"]]
        row = {"path": printable(rel), "image_id": ids[rel], **dict.fromkeys(META_KEYS, ""),
               "prob": "", "pred": "", "status": "error", "error": printable(it["error"])}
        row.update({k: v for k, v in it["meta"].items() if v})  # what an error row still knows
        if it["error"] == "":
            row.update(it["meta"], status="ok")
            pr = probs[k]
            k += 1
            if p.binary:
                row["prob"], row["pred"] = float(pr), int(pr >= threshold)
            else:  # multi-class: the predicted class and its probability
                row["pred"] = int(np.argmax(pr))
                row["prob"] = float(pr[row["pred"]])
        rows.append(row)
    return rows


def per_breast_table(breasts: list[tuple[str, str, float]], threshold: float):
    """patient_id, laterality, prob_mean, prob_max, n_images, pred (mean >= threshold)."""
    import pandas as pd

    from medvit.metrics import aggregate_per_breast

    frame = pd.DataFrame(breasts, columns=["patient_id", "laterality", "prob"])
    if frame.empty:
        return pd.DataFrame(columns=BREAST_COLUMNS)
    frame["label"] = -1  # unknown at inference; aggregate_per_breast wants the column
    table = aggregate_per_breast(frame)
    table["pred"] = (table["prob_mean"] >= threshold).astype(int)
    return table[BREAST_COLUMNS]


def breast_csv_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_per_breast.csv")


def save_overlays(p: LoadedRun, images, items: list[dict], probs: np.ndarray, rels: list[str],
                  ids: dict[str, str], folder: Path, method: str) -> int:
    """An overlay PNG per ok image of the batch: the preprocessed image, the explain map on top."""
    from medvit.explain import explain, save_overlay

    maps = explain(p.model, images.to(p.device), method)
    ok = [it for it in items if it["error"] == ""]
    for it, heat, pr in zip(ok, maps, probs):
        image_id = ids[rels[it["index"]]]
        score = float(pr) if p.binary else float(np.max(pr))
        save_overlay(it["display"], heat, folder / f"{image_id}.png", title=f"{image_id}  {p.name}  p={score:.3f}")
    return len(ok)


@dataclass
class Collected:
    n_ok: int = 0
    breasts: list = field(default_factory=list)  # (patient_id, laterality, prob): small, for the per-breast table


def _stream(p: LoadedRun, loader, writer, f, rels: list[str], ids: dict[str, str], threshold: float,
            overlays: str | Path | None, method: str, bar) -> tuple[Collected, int]:
    """Forward each batch as it arrives from the decode workers; write its rows at once."""
    got, n_overlays = Collected(), 0
    for images, items in loader:
        probs = forward_probs(p, images) if images is not None else None
        rows = result_rows(p, items, probs, rels, ids, threshold)
        writer.writerows(rows)
        f.flush()
        for row in rows:
            if row["status"] != "ok":
                continue
            got.n_ok += 1
            if row["patient_id"] and row["laterality"] in ("L", "R"):
                got.breasts.append((row["patient_id"], row["laterality"], row["prob"]))
        if overlays is not None and images is not None:
            n_overlays += save_overlays(p, images, items, probs, rels, ids, Path(overlays), method)
        bar.update(len(items))
    return got, n_overlays


# ----------------------------------------------------------------------------- entry point


@contextlib.contextmanager
def model_threads(device, workers: int) -> Iterator[None]:
    """On a CPU, leave one core per decode worker: the model's threads and the workers would
    otherwise fight over the same cores and neither keeps pace. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if device.type == "cpu" and workers:
        torch.set_num_threads(max(1, min(before, usable_cores() - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict_folder(folder: str | Path, checkpoint: str | Path, out: str | Path = "predictions.csv", *,
                   overlays: str | Path | None = None, workers: int = 0, batch_size: int | None = None,
                   threshold: float | None = None, ingest_size: int | tuple[int, int] | None = None,
                   which: str = "best", device: str = "auto", method: str = "auto", progress: bool | None = None,
                   any_modality: bool = False, id_key: str | None = None, raw_patient_ids: bool = False) -> dict:
    """Predict every file under `folder`; write `out` and `<out stem>_per_breast.csv` (binary
    models), and overlays into `overlays` when given. Returns a summary dict. Patient IDs are
    pseudonymised as ingest does (`id_key`, `raw_patient_ids`: see `medvit.privacy`)."""
    from torch.utils.data import DataLoader
    from medvit.progress import progress_bar
    from medvit.workers import worker_context

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise MedvitError(f"{folder}: not a folder; pass the folder holding the DICOM files")
    if workers < 0 or (batch_size is not None and batch_size < 1):
        raise ConfigError(f"--workers {workers} / --batch-size {batch_size}: workers >= 0, batch size >= 1")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold}: must lie in [0, 1]")
    pseudonyms = patient_ids(id_key, raw_patient_ids)
    p = load_predictor(checkpoint, which=which, device=device, size=ingest_size)
    if overlays is not None:
        from medvit.explain import resolve_method

        method = resolve_method(p.model, method)  # fail before decoding anything
    t = p.threshold if threshold is None else float(threshold)
    skip = [out, breast_csv_path(out)] + ([Path(overlays)] if overlays else [])
    rels, ids = list_dicoms(folder, skip)
    if not rels:
        raise MedvitError(f"{folder}: no input files found (hidden files are skipped)")
    data = DicomFiles(folder, rels, p.ingest_size, p.image_size, p.in_chans, keep_display=overlays is not None,
                      ids=pseudonyms, any_modality=any_modality)
    loader = DataLoader(data, batch_size=batch_size or 16, shuffle=False, num_workers=workers,
                        collate_fn=collate, worker_init_fn=_init_worker if workers else None,
                        pin_memory=p.device.type == "cuda", prefetch_factor=2 if workers else None,
                        multiprocessing_context=worker_context() if workers else None)
    bar = progress_bar(total=len(rels), desc="predict", unit="img", enabled=progress)
    try:
        with model_threads(p.device, workers), atomic_path(out) as tmp, \
                open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            got, n_overlays = _stream(p, loader, writer, f, rels, ids, t, overlays, method, bar)
    finally:
        bar.close()
    n_ok = got.n_ok
    summary = {"files": len(rels), "ok": n_ok, "error": len(rels) - n_ok, "out": str(out),
               "threshold": t, "canvas": size_text(p.ingest_size), "image_size": size_text(p.image_size),
               "backbone": p.name, "binary": p.binary, "overlays": n_overlays}
    if p.binary:
        table = per_breast_table(got.breasts, t)
        write_text(breast_csv_path(out), table.to_csv(index=False))
        summary["per_breast"] = str(breast_csv_path(out))
        summary["breasts"] = len(table)
    return summary
