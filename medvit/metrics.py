"""The one metrics module: used by the trainer's validation and by `medvit evaluate`.

scikit-learn computes every metric it has (AUC, ROC/PR curves, accuracy, log loss, confusion
matrix). Written here by hand only what it lacks: the bootstrap CI of the AUC (vectorised),
the RSNA probabilistic F1, sensitivity at specificity (and back), per-breast aggregation.

Inputs are numpy arrays / pandas frames; outputs are plain python floats, ints, lists and dicts
(JSON-able: an undefined metric is None and `notes` says why, never NaN). Labels < 0 mean
"unlabelled" (the project's convention) and are dropped before scoring, with a note.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from medvit.errors import MedvitError

BREAST_KEYS = ["patient_id", "laterality"]


# ----------------------------------------------------------------------------- input checks


def _as_binary(y_true, prob) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated (labels 0/1 int, probs float64, notes); unlabelled (label < 0) items dropped."""
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    if y.size != p.size:
        raise MedvitError(f"metrics: {y.size} labels but {p.size} probabilities")
    y, p, notes = _drop_unlabelled(y, p)
    if not np.isfinite(p).all():
        raise MedvitError(f"metrics: {int((~np.isfinite(p)).sum())} probabilities are NaN or infinite")
    if p.min() < 0 or p.max() > 1:
        raise MedvitError(f"metrics: probabilities must lie in [0, 1], got [{p.min():.4g}, {p.max():.4g}] "
                          "(logits? apply a sigmoid first)")
    bad = ~np.isin(y, [0, 1])
    if bad.any():
        raise MedvitError(f"metrics: binary labels must be 0 or 1, got {sorted(set(y[bad].tolist()))[:5]}")
    return y.astype(np.int64), p, notes


def _drop_unlabelled(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if y.size == 0:
        raise MedvitError("metrics: no predictions to score (empty input)")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number) or not np.isfinite(y.astype(np.float64)).all():
        raise MedvitError("metrics: labels must be finite numbers")
    known = y >= 0
    notes = [] if known.all() else [f"dropped {int((~known).sum())} unlabelled items (label < 0)"]
    if not known.any():
        raise MedvitError(f"metrics: all {y.size} items are unlabelled (label < 0); nothing to score")
    return y[known], scores[known], notes


def _f(x) -> float | None:
    """Plain float, or None for NaN/None (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _key(t: float) -> str:
    return f"{t:g}"  # 0.8 -> "0.8"


# ----------------------------------------------------------------------------- binary


def binary_metrics(y_true, prob, *, loss: float | None = None, n_boot: int = 1000, seed: int = 0,
                   specificities: Sequence[float] = (0.8, 0.9, 0.95),
                   sensitivities: Sequence[float] = (0.8, 0.9, 0.95),
                   threshold: float = 0.5) -> dict[str, Any]:
    """All binary metrics in one JSON-able dict. `n_boot=0` skips the bootstrap (auc_ci None)."""
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    y, p, notes = _as_binary(y_true, prob)
    n, n_pos = int(y.size), int(y.sum())
    both = 0 < n_pos < n
    if not both:
        notes.append(f"only one class present ({'positive' if n_pos else 'negative'}): "
                     "AUC, best F1 and operating points are undefined")
    out: dict[str, Any] = {
        "n": n, "n_pos": n_pos, "prevalence": n_pos / n, "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, p >= threshold)),
        "loss": _f(loss) if loss is not None else float(log_loss(y, p, labels=[0, 1])),
        "pf1": probabilistic_f1(y, p),
        "auc": float(roc_auc_score(y, p)) if both else None,
        "auc_ci": None, "n_boot": int(n_boot), "boot_skipped": 0,
    }
    if both and n_boot > 0:
        aucs, skipped = bootstrap_aucs(y, p, n_boot=n_boot, seed=seed)
        out["auc_ci"] = _percentile_ci(aucs)
        out["boot_skipped"] = skipped
        if skipped:
            notes.append(f"{skipped} of {n_boot} bootstrap resamples could not be scored")
    out.update(best_f1(y, p) if both else {"best_f1": None, "best_f1_threshold": None})
    out.update(operating_points(y, p, specificities, sensitivities) if both else {
        "sensitivity_at_specificity": {_key(t): None for t in specificities},
        "specificity_at_sensitivity": {_key(t): None for t in sensitivities}})
    out["notes"] = notes
    return out


def probabilistic_f1(y_true, prob, beta: float = 1.0) -> float | None:
    """pF1 of the RSNA Screening Mammography competition (not in scikit-learn).

    ctp = sum(prob over positives), cfp = sum(prob over negatives), precision = ctp/(ctp+cfp),
    recall = ctp/n_pos; 0 when either is 0, as in the competition's reference code; None
    without positives.
    """
    y = np.asarray(y_true).reshape(-1).astype(bool)
    p = np.clip(np.asarray(prob, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if not y.any():
        return None
    ctp, cfp = float(p[y].sum()), float(p[~y].sum())
    precision = ctp / (ctp + cfp) if ctp + cfp > 0 else 0.0
    recall = ctp / int(y.sum())
    if precision <= 0 or recall <= 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def best_f1(y_true, prob) -> dict[str, float]:
    """The threshold maximising F1 over scikit-learn's precision-recall curve."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y_true, prob)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    i = int(np.argmax(f1))
    return {"best_f1": float(f1[i]), "best_f1_threshold": float(thresholds[i])}


def operating_points(y_true, prob, specificities: Sequence[float] = (0.8, 0.9, 0.95),
                     sensitivities: Sequence[float] = (0.8, 0.9, 0.95)) -> dict[str, dict]:
    """Best sensitivity among ROC points with specificity >= target, and vice versa.

    scikit-learn gives the ROC points (all of them: drop_intermediate=False, since a dropped
    collinear point can be the best one under a constraint); the constrained max is ours.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y_true, prob, drop_intermediate=False)
    spec = 1.0 - fpr
    eps = 1e-12  # 0.8 specificity from 4 of 5 negatives must count as >= 0.8
    sens_at = {_key(t): float(tpr[spec >= t - eps].max()) for t in specificities}
    spec_at = {_key(t): float(spec[tpr >= t - eps].max()) for t in sensitivities}
    return {"sensitivity_at_specificity": sens_at, "specificity_at_sensitivity": spec_at}


# ----------------------------------------------------------------------------- bootstrap


def rank_auc(y_true, prob) -> float:
    """Mann-Whitney AUC (ties count 1/2); equals scikit-learn's roc_auc_score (tested)."""
    y = np.asarray(y_true).reshape(-1).astype(bool)
    group, n_groups = _score_groups(prob)
    counts = np.bincount(group * 2 + y, minlength=2 * n_groups).reshape(1, n_groups, 2)
    return float(_auc_from_group_counts(counts)[0])


def _score_groups(prob) -> tuple[np.ndarray, int]:
    """Each item's tie group: the rank of its score among the distinct scores (ascending)."""
    values, group = np.unique(np.asarray(prob, dtype=np.float64).reshape(-1), return_inverse=True)
    return group.reshape(-1), int(values.size)


def _auc_from_group_counts(counts: np.ndarray) -> np.ndarray:
    """AUCs from (B, G, 2) counts of negatives/positives per ascending score group; NaN if a class is absent."""
    neg, pos = counts[..., 0].astype(np.float64), counts[..., 1].astype(np.float64)
    neg_below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each group
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _stratified_resamples(y: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """`n_boot` seeded, class-stratified resamples of the item indices, in (B, N) chunks
    (positives and negatives resampled separately, their counts kept, as pROC does by default:
    every resample has both classes, so all `n_boot` count even at RSNA's ~2% prevalence).
    Nothing is yielded when a class is absent. The chunk size depends on N and `n_boot` only."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        return
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // max(y.size, 1)))  # bounds memory to ~100 MB per chunk
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield np.concatenate([pos[rng.integers(0, pos.size, size=(b, pos.size))],
                              neg[rng.integers(0, neg.size, size=(b, neg.size))]], axis=1)


def _group_counts(idx: np.ndarray, cell: np.ndarray, n_groups: int) -> np.ndarray:
    """(B, G, 2) negatives / positives per score group in each resample row of `idx`."""
    b = idx.shape[0]
    flat = (cell[idx] + (2 * n_groups) * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * 2 * n_groups).reshape(b, n_groups, 2)


def bootstrap_counts(y_true, prob, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """The one bootstrap (`_stratified_resamples`), yielded in chunks as (B, G, 2) counts of
    negatives / positives per ascending score group (`_score_groups`). A resample is only a count
    per (score group, class), so one bincount per chunk serves them all: `bootstrap_aucs` (the CI),
    `bootstrap_roc` (the ROC plot's band) and `paired_bootstrap_aucs` read the same resamples."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    group, n_groups = _score_groups(prob)
    cell = group * 2 + y  # each item's (score group, class) cell
    for idx in _stratified_resamples(y, n_boot, seed):
        yield _group_counts(idx, cell, n_groups)


def bootstrap_aucs(y_true, prob, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, int]:
    """AUCs of the `bootstrap_counts` resamples and how many could not be scored (`n_boot`
    when a class is absent altogether, else 0). Hand-written because scikit-learn scores one
    AUC per call (1000 calls on 50k images take minutes)."""
    aucs = [_auc_from_group_counts(counts) for counts in bootstrap_counts(y_true, prob, n_boot, seed)]
    if not aucs:
        return np.empty(0), int(n_boot)
    aucs = np.concatenate(aucs)
    ok = np.isfinite(aucs)
    return aucs[ok], int((~ok).sum())


def paired_bootstrap_aucs(y_true, probs, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, K) AUCs of K scorers `probs` (K, N) on the same stratified resamples of the N
    items (paired: every scorer sees the same images in each resample); empty (0, K) when a class
    is absent. With the same seed, column k equals `bootstrap_aucs` of scorer k."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, y.size)
    cells = [(g * 2 + y, n) for g, n in map(_score_groups, probs)]
    out = [np.stack([_auc_from_group_counts(_group_counts(idx, cell, n)) for cell, n in cells], axis=1)
           for idx in _stratified_resamples(y, n_boot, seed)]
    return np.concatenate(out) if out else np.empty((0, probs.shape[0]))


def bootstrap_roc(y_true, prob, grid: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, len(grid)) TPR of each `bootstrap_counts` resample's ROC curve at the FPRs of
    `grid` (linear between the curve's points, as scikit-learn's roc_curve draws it); an
    empty (0, len(grid)) array when a class is absent. The same resamples as `bootstrap_aucs`."""
    rows = []
    for counts in bootstrap_counts(y_true, prob, n_boot, seed):
        # thresholds from the highest score group down: cumulative counts give each ROC point
        desc = counts[:, ::-1, :].cumsum(axis=1).astype(np.float64)
        fpr = np.concatenate([np.zeros((len(desc), 1)), desc[..., 0] / desc[:, -1:, 0]], axis=1)
        tpr = np.concatenate([np.zeros((len(desc), 1)), desc[..., 1] / desc[:, -1:, 1]], axis=1)
        rows.extend(np.interp(grid, f, t) for f, t in zip(fpr, tpr))
    return np.array(rows).reshape(len(rows), len(grid))


def bootstrap_auc_ci(y_true, prob, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap (1 - alpha) CI of the ROC AUC; None if no resample has both classes."""
    y, p, _ = _as_binary(y_true, prob)
    aucs, _ = bootstrap_aucs(y, p, n_boot=n_boot, seed=seed)
    ci = _percentile_ci(aucs, alpha)
    return None if ci is None else (ci[0], ci[1])


def _percentile_ci(values: np.ndarray, alpha: float = 0.05) -> list[float] | None:
    if values.size == 0:
        return None
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(low), float(high)]


# ----------------------------------------------------------------------------- per breast


def aggregate_per_breast(df: pd.DataFrame, prob_col: str = "prob", label_col: str = "label") -> pd.DataFrame:
    """One row per (patient_id, laterality): label (max), prob_mean, prob_max, n_images."""
    missing = [c for c in BREAST_KEYS + [prob_col, label_col] if c not in df.columns]
    if missing:
        raise MedvitError(f"per-breast metrics: missing columns {missing} (have {list(df.columns)})")
    if df.empty:
        raise MedvitError("per-breast metrics: no rows to aggregate")
    g = df.groupby(BREAST_KEYS, sort=True, dropna=False)
    out = g.agg(label=(label_col, "max"), prob_mean=(prob_col, "mean"),
                prob_max=(prob_col, "max"), n_images=(prob_col, "size"))
    return out.reset_index()


def per_breast_metrics(df: pd.DataFrame, *, prob_col: str = "prob", label_col: str = "label",
                       **kw) -> dict[str, Any]:
    """binary_metrics per breast, scoring the breast by the mean and by the max of its images."""
    breasts = aggregate_per_breast(df, prob_col=prob_col, label_col=label_col)
    return {"n_breasts": int(len(breasts)),
            "mean": binary_metrics(breasts["label"].to_numpy(), breasts["prob_mean"].to_numpy(), **kw),
            "max": binary_metrics(breasts["label"].to_numpy(), breasts["prob_max"].to_numpy(), **kw)}


# ----------------------------------------------------------------------------- multiclass


def multiclass_metrics(y_true, probs, *, loss: float | None = None) -> dict[str, Any]:
    """accuracy, cross-entropy, macro one-vs-rest AUC, confusion matrix, per-class accuracy."""
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, roc_auc_score

    y, P, notes = _as_multiclass(y_true, probs)
    n, c = P.shape
    labels = list(range(c))
    cm = confusion_matrix(y, P.argmax(axis=1), labels=labels)
    support = cm.sum(axis=1)
    present = np.unique(y)
    auc = None
    if present.size == c:
        auc = float(roc_auc_score(y, P, multi_class="ovr", average="macro", labels=labels))
    else:
        notes.append(f"classes {sorted(set(labels) - set(present.tolist()))} absent from the labels: "
                     "macro AUC undefined")
    return {
        "n": int(n), "num_classes": int(c),
        "accuracy": float(accuracy_score(y, P.argmax(axis=1))),
        "loss": _f(loss) if loss is not None else float(log_loss(y, P, labels=labels)),
        "auc_macro_ovr": auc,
        "confusion_matrix": cm.tolist(),
        "per_class_accuracy": [float(cm[k, k] / support[k]) if support[k] else None for k in labels],
        "notes": notes,
    }


def _as_multiclass(y_true, probs) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray(y_true).reshape(-1)
    P = np.asarray(probs, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != y.size:
        raise MedvitError(f"metrics: expected probabilities of shape ({y.size}, C), got {P.shape}")
    y, P, notes = _drop_unlabelled(y, P)
    if not np.isfinite(P).all():
        raise MedvitError("metrics: probabilities contain NaN or infinite values")
    sums = P.sum(axis=1)
    if P.min() < 0 or np.abs(sums - 1).max() > 1e-3:
        raise MedvitError("metrics: each row must be class probabilities summing to 1 "
                          f"(row sums span [{sums.min():.4g}, {sums.max():.4g}]; logits? apply a softmax)")
    if (y != np.round(y)).any() or y.max() >= P.shape[1]:
        raise MedvitError(f"metrics: labels must be integers in [0, {P.shape[1] - 1}], got max {y.max()}")
    return y.astype(np.int64), P / sums[:, None], notes  # renormalise float32 rounding


def classification_metrics(y_true, scores, *, loss: float | None = None, **binary_kw) -> dict[str, Any]:
    """Dispatch on the shape of `scores`: (N,) or (N,1) -> binary, (N,2) -> binary on column 1,
    (N,C>2) -> multiclass. `binary_kw` (n_boot, seed, threshold, ...) apply to binary only."""
    s = np.asarray(scores)
    if s.ndim == 1 or (s.ndim == 2 and s.shape[1] == 1):
        return binary_metrics(y_true, s.reshape(-1), loss=loss, **binary_kw)
    if s.ndim == 2 and s.shape[1] == 2:
        return binary_metrics(y_true, s[:, 1], loss=loss, **binary_kw)
    if s.ndim == 2:
        return multiclass_metrics(y_true, s, loss=loss)
    raise MedvitError(f"metrics: scores must be (N,) or (N, C), got shape {s.shape}")
