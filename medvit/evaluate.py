"""`medvit evaluate`: score a trained run on the held-out test split of `ingest --test-share`, else
its validation fold (labelled "validation (optimistic)"), or another fold / data folder.

The model and the data come back from the checkpoint (`model_spec`, resolved `config`); the one
inference loop (`medvit.train.steps.predict`) gives the probabilities; the one metrics module
(`medvit.metrics`) and `medvit.plots` do the scoring and drawing. Writes into OUT (default
RUN_DIR/eval): metrics.json, predictions.csv, roc.png, pr.png, confusion.png,
training_curves.png — each to a temp name, then renamed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from medvit.errors import ConfigError, MedvitError
from medvit.io import write_text  # temp name + os.replace

EVAL_DIR = "eval"
PREDICTION_COLUMNS = ["image_id", "patient_id", "laterality", "view", "label", "prob"]


@dataclass
class EvalData:
    dataset: Any  # torch Dataset: (image, label) items, .ids
    source: dict  # kind, dir, fold, what was scored (JSON-able)
    notes: list[str]


# ----------------------------------------------------------------------------- data


TEST = "test"
VALIDATION = "validation (optimistic)"  # the fold that chose the checkpoint and the threshold
SPLITS = ("auto", "test", "validation")


def eval_data(cfg, fold: int | None = None, data_dir: str | Path | None = None, split: str = "auto",
              run_dir: str | Path | None = None) -> EvalData:
    """The data to score. Mammography runs: the held-out test split of `ingest --test-share` when
    the run's data folder has one (split auto or test), else the run's validation fold, labelled
    "validation (optimistic)" since it chose the checkpoint and threshold; or `fold`, or every
    labelled ok image of another ingest folder (`data_dir`). CIFAR-10/MNIST runs: the test split.
    `source["split"]` says which: "test", "validation (optimistic)", or what else was scored.
    With `run_dir`, a test split holding images the run trained or selected on (its
    `data_ids.csv`; the folder re-ingested since training) is refused."""
    from medvit.train.setup import build_data

    d = cfg.data
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: valid: {', '.join(SPLITS)}")
    if fold is not None and data_dir is not None:
        raise ConfigError("evaluate: pass --fold or --data, not both")
    notes: list[str] = []
    if d.kind != "mammo":
        if fold is not None or split == "validation":
            raise ConfigError(f"evaluate --fold / --split validation are for mammography runs; this run's "
                              f"data.kind is {d.kind!r} (CIFAR-10/MNIST runs are scored on the test split)")
        if data_dir is not None:  # another copy of the benchmark files
            d.dir = str(data_dir)
        return EvalData(build_data(cfg).test, {"kind": d.kind, "dir": d.dir, "fold": None, "split": TEST}, notes)
    if data_dir is not None:
        if Path(data_dir).resolve() == Path(d.dir).resolve():
            notes.append(f"{data_dir} is this run's own data folder: every labelled image is scored, "
                         f"training folds included; these numbers are optimistic (use --fold {d.fold})")
        return EvalData(_labelled_images(cfg, Path(data_dir)),
                        {"kind": d.kind, "dir": str(data_dir), "fold": None, "split": "all labelled ok images"},
                        notes)
    bundle = None
    if fold is None and split != "validation":
        bundle = build_data(cfg)  # built once: its .val serves the fallback below
        test = bundle.test
        if test is not None:
            notes += unseen_check(test.ids, run_dir, Path(d.dir) / "manifest.csv")
            return EvalData(test, {"kind": d.kind, "dir": d.dir, "fold": None, "split": TEST}, notes)
        if split == "test":
            raise MedvitError(f"{Path(d.dir) / 'manifest.csv'}: no test split; re-run `medvit ingest --test-share F` "
                              "(and retrain), or pass --split validation")
    label = VALIDATION
    if fold is not None and fold != d.fold:
        label = f"training fold {fold} (optimistic)"
        notes.append(f"fold {fold} was part of this run's training data (it validated on fold {d.fold}): "
                     "these numbers are optimistic")
    if fold is not None:
        d.fold = int(fold)
    if label == VALIDATION:
        notes.append(f"scored on validation fold {d.fold}, which chose the checkpoint and the threshold: "
                     "these numbers are optimistic (ingest with --test-share for a held-out test split)")
    val = (bundle if bundle is not None else build_data(cfg)).val  # fold set above when given
    return EvalData(val, {"kind": d.kind, "dir": d.dir, "fold": d.fold, "split": label}, notes)


def unseen_check(test_ids, run_dir: str | Path | None, manifest: Path) -> list[str]:
    """Refuse a test split that overlaps what the run trained or selected on (RUN_DIR/data_ids.csv);
    a note when the run predates that log and the test split cannot be verified as unseen."""
    from medvit.train.logs import DATA_IDS

    if run_dir is None:
        return []
    log = Path(run_dir) / DATA_IDS
    if not log.is_file():
        return [f"{Path(run_dir).name} does not list the images it trained on ({DATA_IDS}; trained before "
                "medvit logged them): its test split cannot be verified as unseen"]
    seen = set(pd.read_csv(log, dtype={"image_id": str})["image_id"])
    overlap = seen.intersection(map(str, test_ids))
    if overlap:
        raise MedvitError(f"{manifest}: {len(overlap)} of the test split's images were used by {run_dir} for "
                          f"training or selection ({log}); the folder was re-ingested since the run was "
                          "trained. Retrain on this ingest, or pass --split validation")
    return []


def _labelled_images(cfg, data_dir: Path):
    from medvit.data.datasets import MammoDataset, read_manifest
    from medvit.data.transforms import build_transform

    frame = read_manifest(data_dir)
    usable = frame[(frame["status"] == "ok") & frame["label"].notna()]
    if usable.empty:
        raise MedvitError(f"{data_dir / 'manifest.csv'}: no labelled, successfully ingested images to evaluate on")
    return MammoDataset(data_dir, usable, cfg.data.image_size,
                        build_transform(cfg.data.augment, train=False), cfg.train.seed)


def predictions_frame(dataset, ids: list, labels: np.ndarray, probs: np.ndarray, binary: bool) -> pd.DataFrame:
    """One row per scored image; mammography rows carry patient_id, laterality and view."""
    meta = getattr(dataset, "frame", None)
    out = pd.DataFrame({"image_id": [str(i) for i in ids]})
    for col in ("patient_id", "laterality", "view"):
        out[col] = meta[col].fillna("").astype(str).to_numpy() if meta is not None and col in meta else ""
    out["label"] = labels.astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)  # float64 so the CSV round-trips exactly
    if binary:
        out["prob"] = probs.reshape(-1)
        return out
    out["pred"] = probs.argmax(axis=1)
    out["prob"] = probs.max(axis=1)  # of the predicted class
    for k in range(probs.shape[1]):
        out[f"prob_{k}"] = probs[:, k]
    return out


# ----------------------------------------------------------------------------- metrics


def threshold_metrics(y_true, prob, threshold: float) -> dict[str, Any]:
    """Counts and rates at one operating point (e.g. the checkpoint's validation threshold)."""
    from sklearn.metrics import confusion_matrix

    y = np.asarray(y_true).astype(np.int64)
    pred = (np.asarray(prob) >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())

    def rate(num: int, den: int) -> float | None:
        return num / den if den else None

    precision, recall = rate(tp, tp + fp), rate(tp, tp + fn)
    f1 = rate(2 * tp, 2 * tp + fp + fn)
    return {"threshold": float(threshold), "accuracy": (tp + tn) / max(len(y), 1),
            "sensitivity": recall, "specificity": rate(tn, tn + fp), "precision": precision, "f1": f1,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def binary_report(frame: pd.DataFrame, loss: float, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    from medvit.metrics import binary_metrics, per_breast_metrics

    y, p = frame["label"].to_numpy(), frame["prob"].to_numpy()
    out = binary_metrics(y, p, loss=loss, n_boot=n_boot, seed=seed)
    known = y >= 0
    out["at_checkpoint_threshold"] = threshold_metrics(y[known], p[known], threshold)
    breasts = frame[(frame["patient_id"] != "") & (frame["laterality"] != "") & known]
    if breasts.empty:
        out["per_breast"] = None
        out["notes"].append("no patient_id/laterality: per-breast metrics skipped")
    else:
        out["per_breast"] = per_breast_metrics(breasts, n_boot=n_boot, seed=seed)
    return out


# ----------------------------------------------------------------------------- plots


def write_plots(frame: pd.DataFrame, report: dict, out: Path, run_dir: Path, binary: bool,
                n_boot: int, seed: int, class_names: list[str] | None,
                split: str = "") -> tuple[list[str], list[str]]:
    """The PNGs that can be drawn; returns (file names, notes on those that could not). `split`
    (e.g. "validation (optimistic)") goes into the titles."""
    on = f" - {split}" if split else ""
    from medvit.plots import plot_confusion, plot_pr, plot_roc, plot_training_curves

    written, notes = [], []

    def attempt(name: str, draw: Callable[[], Path]) -> None:
        try:
            draw()
            written.append(name)
        except MedvitError as err:
            notes.append(f"{name} not drawn: {err}")

    known = frame[frame["label"] >= 0]
    if binary:
        y, p = known["label"].to_numpy(), known["prob"].to_numpy()
        attempt("roc.png", lambda: plot_roc(y, p, out / "roc.png", n_boot=n_boot, seed=seed, title=f"ROC{on}"))
        attempt("pr.png", lambda: plot_pr(y, p, out / "pr.png", title=f"Precision-recall{on}"))
        t = report["at_checkpoint_threshold"]
        cm = [[t["tn"], t["fp"]], [t["fn"], t["tp"]]]
        attempt("confusion.png", lambda: plot_confusion(
            cm, ["negative", "positive"], out / "confusion.png",
            title=f"Confusion at threshold {t['threshold']:.3g}{on}"))
    else:
        cm = report["confusion_matrix"]
        names = class_names if class_names and len(class_names) == len(cm) else [str(k) for k in range(len(cm))]
        attempt("confusion.png", lambda: plot_confusion(cm, names, out / "confusion.png",
                                                        title=f"Confusion matrix{on}"))
    log = run_dir / "metrics_epoch.csv"
    if log.is_file():
        attempt("training_curves.png", lambda: plot_training_curves(log, out / "training_curves.png"))
    else:
        notes.append(f"training_curves.png not drawn: {log} not found")
    return written, notes


# ----------------------------------------------------------------------------- entry point


def score(run, dataset, batch_size: int | None = None, workers: int = 0) -> tuple[pd.DataFrame, float]:
    """A loaded run's model (`medvit.runs.LoadedRun`) over `dataset` with the one inference loop:
    (predictions frame, mean loss)."""
    from torch.utils.data import DataLoader

    from medvit.train.steps import predict

    loader = DataLoader(dataset, batch_size=batch_size or run.cfg.data.batch_size, shuffle=False,
                        num_workers=workers, pin_memory=run.device.type == "cuda",
                        collate_fn=getattr(dataset, "collate_fn", None))
    ids, labels, probs, loss = predict(run.model, loader, run.device, run.amp, run.binary)
    return predictions_frame(dataset, ids, labels, probs, run.binary), loss


def evaluate(run_dir, *, which: str = "best", fold: int | None = None,
             data_dir: str | Path | None = None, split: str = "auto", n_boot: int = 1000, seed: int = 0,
             out: str | Path | None = None, device: str = "auto", batch_size: int | None = None,
             workers: int = 0, plots: bool = True) -> dict[str, Any]:
    """Score a run (RUN_DIR, a checkpoint file, or a `medvit.runs.LoadedRun`); write metrics.json,
    predictions.csv and the plots into `out`; return the metrics.

    which: best | last (inside RUN_DIR/checkpoints) or a checkpoint file. split: auto (the test
    split when the data has one, else the validation fold) | test | validation. plots=False skips
    the PNGs (sweeps score hundreds of runs and draw their own plots).
    """
    from medvit.metrics import multiclass_metrics

    if n_boot < 0:
        raise ConfigError(f"--n-boot {n_boot}: must be 0 (no CI) or more")
    from medvit.canvas import size_text
    from medvit.runs import LoadedRun, load_run

    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir, which, device)
    run_dir, cfg, binary, threshold = run.run_dir, run.cfg, run.binary, run.threshold
    data = run.data(fold, data_dir, split)
    frame, loss = score(run, data.dataset, batch_size, workers)
    if binary:
        report = binary_report(frame, loss, threshold, n_boot, seed)
    else:
        report = multiclass_metrics(frame["label"].to_numpy(), frame[[c for c in frame if c.startswith("prob_")]]
                                    .to_numpy(), loss=loss)
    out = Path(out) if out else run_dir / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    names = _class_names(cfg.data.kind)
    plots, plot_notes = (write_plots(frame, report, out, run_dir, binary, n_boot, seed, names,
                                     split=data.source["split"]) if plots else ([], []))
    canvas = {"image_size": size_text(run.image_size)}
    if cfg.data.kind == "mammo":
        canvas["canvas"] = size_text(run.ingest_size)
    report = {"run_dir": str(run_dir), "checkpoint": str(run.checkpoint), "backbone": run.name,
              **canvas, "binary": binary, "checkpoint_threshold": threshold, "data": data.source,
              "split": data.source["split"], "seed": seed, **report, "plots": plots}
    report["notes"] = data.notes + report.get("notes", []) + plot_notes
    write_text(out / "predictions.csv", frame.to_csv(index=False))
    write_text(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    report["out"] = str(out)
    from medvit.tracking import log_evaluation  # on the run's MLflow run, when it has one (RUN_DIR/mlflow.json)

    log_evaluation(run_dir, report, out, step=int(run.ckpt.get("counters", {}).get("step", 0)))
    return report


def _class_names(kind: str) -> list[str] | None:
    if kind == "cifar10":
        from medvit.data.benchmarks import CIFAR_CLASSES

        return list(CIFAR_CLASSES)
    return None


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal."""
    src = report["data"]
    fold = f" fold {src['fold']}" if src.get("fold") is not None and "fold" not in src["split"] else ""
    lines = [f"{report['backbone']} on {src['split']}{fold} of {src['dir']}: {report['n']} images"]
    if report["binary"]:
        ci = report.get("auc_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        sens = report["sensitivity_at_specificity"]
        lines.append(f"  image:  AUC {_fmt(report['auc'])}{ci_text}  accuracy {_fmt(report['accuracy'])}  "
                     f"loss {_fmt(report['loss'], '.4f')}  pF1 {_fmt(report['pf1'])}  "
                     f"sens@spec0.9 {_fmt(sens.get('0.9'))}  best F1 {_fmt(report['best_f1'])}")
        t = report["at_checkpoint_threshold"]
        lines.append(f"  at checkpoint threshold {t['threshold']:.3g}: sensitivity {_fmt(t['sensitivity'])}  "
                     f"specificity {_fmt(t['specificity'])}  F1 {_fmt(t['f1'])}")
        pb = report.get("per_breast")
        if pb:
            for how in ("mean", "max"):
                m = pb[how]
                lines.append(f"  breast ({how}, n={pb['n_breasts']}): AUC {_fmt(m['auc'])}  pF1 {_fmt(m['pf1'])}")
    else:
        lines.append(f"  accuracy {_fmt(report['accuracy'])}  loss {_fmt(report['loss'], '.4f')}  "
                     f"macro AUC {_fmt(report['auc_macro_ovr'])}")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    lines.append(f"  wrote {report['out']}: metrics.json, predictions.csv, {', '.join(report['plots'])}")
    return lines
