"""The runs being compared: load them, refuse runs that were trained on different data, and score
every run on the same images (the test split, or the shared validation fold, labelled optimistic)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvit.errors import ConfigError, MedvitError
from medvit.runs import LoadedRun, load_run


@dataclass
class Run:
    """A compared run: the loaded run (`medvit.runs.LoadedRun`: checkpoint, config, model built
    once, threshold, parameters, training time, ...; its attributes are read through) plus a
    short label and what scoring it produced."""

    name: str  # a short label for tables and figures: the run folder's name
    loaded: LoadedRun
    frame: pd.DataFrame | None = None  # predictions on the compared images
    loss: float | None = None
    dataset: Any = None
    extra: dict = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        if key == "loaded":  # not set yet (copy / unpickling)
            raise AttributeError(key)
        return getattr(self.loaded, key)

    @property
    def backbone(self) -> str:
        return self.loaded.name


def load_runs(paths: list[str], which: str = "best", device: str = "auto") -> list[Run]:
    if len(paths) < 2:
        raise ConfigError(f"compare needs at least two runs, got {len(paths)}")
    runs = []
    for p in paths:
        loaded = load_run(p, which, device)
        runs.append(Run(loaded.run_dir.resolve().name or str(loaded.run_dir), loaded))
    seen: dict[str, int] = {}
    for r in runs:  # two folders with the same name: add the parent's
        if sum(o.name == r.name for o in runs) > 1:
            r.name = f"{r.run_dir.resolve().parent.name}/{r.name}"
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name}#{seen[r.name]}"
    return runs


def identity(run: Run) -> dict:
    """What the run was trained and selected on (`medvit.train.setup.data_identity`, saved in
    its checkpoint; for older checkpoints rebuilt from its config, without the fingerprint)."""
    ident = run.ckpt.get("data_identity")
    if ident:
        return ident
    d = run.cfg.data
    ident = {"kind": d.kind, "dir": str(Path(d.dir).resolve())}
    if d.kind == "mammo":
        ident["fold"] = int(d.fold)
    return ident


def check_compatible(runs: list[Run]) -> None:
    """Raise, naming every difference, unless all runs were trained on the same data, ingest,
    fold and split; and unless the data folder still holds the split they were trained on."""
    from medvit.config import flatten
    from medvit.train.setup import split_fingerprint

    idents = [flatten(identity(r)) for r in runs]
    first = idents[0]
    problems = []
    for r, ident in zip(runs[1:], idents[1:]):
        # the same fingerprint of (image_id, fold, split): a moved or copied data folder is the same data
        moved = {"dir", "ingest.labels"} if first.get("split_sha1") and first.get("split_sha1") == ident.get(
            "split_sha1") else set()
        for key in sorted(set(first) | set(ident)):
            if key in first and key in ident and key not in moved and first[key] != ident[key]:
                problems.append(f"{key}: {runs[0].name} has {first[key]!r}, {r.name} has {ident[key]!r}")
    if any(r.binary != runs[0].binary for r in runs):
        problems.append("some runs are binary (mammography) and some multi-class")
    if problems:
        raise MedvitError("these runs were trained on different data, so their scores are not paired; "
                          "retrain them on one ingest and fold. Differences: " + "; ".join(problems))
    if first.get("kind") == "mammo" and first.get("split_sha1"):
        now = split_fingerprint(first["dir"])
        if now != first["split_sha1"]:
            raise MedvitError(f"{first['dir']}/manifest.csv: its folds or test split changed since these runs "
                              "were trained (re-ingested with other settings?); the test images may have been "
                              "trained on. Retrain the runs on this ingest, or restore the ingest they used")


def score_runs(runs: list[Run], split: str = "auto", batch_size: int | None = None, workers: int = 0) -> dict:
    """Score every run on the same images (each at its own input size): fills run.frame, .loss,
    .dataset; returns the data source of `medvit.evaluate.eval_data` (its `split` says test or
    validation (optimistic)) plus notes. Raises if the runs were scored on different images."""
    from medvit.evaluate import score

    source, notes = None, []
    for r in runs:
        data = r.loaded.data(split=split)
        r.dataset = data.dataset
        r.frame, r.loss = score(r.loaded, data.dataset, batch_size, workers)
        if source is None:
            source, notes = data.source, data.notes
        elif list(r.frame["image_id"]) != list(runs[0].frame["image_id"]):
            raise MedvitError(f"{r.name} was scored on other images than {runs[0].name}; "
                              "compare needs the same images for every run")
    return {**source, "notes": notes}


def images_per_second(run: Run, batch: int = 16, budget_s: float = 1.0) -> float:
    """Forward passes per second of the model on a batch of the compared images, on this
    machine (after one warm-up pass; repeated for about `budget_s` seconds, at most 20 batches)."""
    import torch

    model, dev = run.model, run.device
    n = min(batch, len(run.dataset))
    x = torch.stack([run.dataset[i][0] for i in range(n)]).to(dev)
    with torch.inference_mode():
        model(x)
        done, t0 = 0, time.perf_counter()
        while True:
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            done += n
            if time.perf_counter() - t0 >= budget_s or done >= 20 * n:
                break
    return done / (time.perf_counter() - t0)


def data_manifest(runs: list[Run]) -> pd.DataFrame | None:
    """The compared images' manifest rows joined with the labels CSV's subgroup columns
    (site_id, machine_id, density, age where it has them); None for benchmark runs."""
    from medvit.data.datasets import read_manifest

    d = runs[0].cfg.data
    if d.kind != "mammo":
        return None
    frame = read_manifest(d.dir)
    frame = frame[frame["image_id"].isin(set(runs[0].frame["image_id"]))].copy()
    labels = _labels_csv(Path(d.dir))
    if labels is not None:
        try:
            extra = pd.read_csv(labels, dtype=str, keep_default_na=False)
        except (OSError, ValueError):
            extra = None
        cols = [c for c in ("site_id", "machine_id", "density", "age") if extra is not None and c in extra]
        if cols:
            extra = extra[["image_id", *cols]].drop_duplicates("image_id")
            frame = frame.drop(columns=[c for c in cols if c in frame], errors="ignore")
            frame = frame.merge(extra, on="image_id", how="left")
    return frame


def _labels_csv(data_dir: Path) -> Path | None:
    from medvit.ingest import ingest_settings

    labels = ingest_settings(data_dir).get("labels")
    return Path(labels) if labels and Path(labels).is_file() else None


def masks_dir(runs: list[Run], given: str | None = None) -> Path | None:
    """Synth lesion masks for the pointing game: `given`, else SRC/lesion_masks of the ingest."""
    from medvit.ingest import ingest_settings

    if given:
        p = Path(given)
        if not p.is_dir():
            raise ConfigError(f"--masks {given}: not a folder")
        return p
    d = runs[0].cfg.data
    if d.kind != "mammo":
        return None
    src = ingest_settings(d.dir).get("src")
    p = Path(src) / "lesion_masks" if src else None
    return p if p is not None and p.is_dir() else None


def correct(run: Run) -> np.ndarray:
    """Per image: is the run right? Binary: at its validation threshold; multi-class: argmax."""
    f = run.frame
    if run.binary:
        return (f["prob"].to_numpy() >= run.threshold).astype(int) == f["label"].to_numpy()
    return f["pred"].to_numpy() == f["label"].to_numpy()
