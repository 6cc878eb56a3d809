"""Evaluation and training plots: ROC (with a bootstrap band), PR, confusion matrix, training curves.

Each function draws on a bare matplotlib `Figure` (the Agg canvas, no pyplot global state, no
display needed), writes a PNG to a temp name in the target folder, renames it into place and
returns the path. Curves come from scikit-learn; only the bootstrap band is ours.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from medvit.errors import MedvitError
from medvit.io import atomic_path
from medvit.metrics import _as_binary, bootstrap_auc_ci

DPI = 120


def _figure(ncols: int = 1, size: tuple[float, float] = (5.5, 5.0)):
    from matplotlib.figure import Figure  # Agg canvas; never touches pyplot's backend

    fig = Figure(figsize=(size[0] * ncols, size[1]), dpi=DPI)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def save_figure(fig, path: str | Path) -> Path:
    """savefig (PNG, DPI) to a temp name in the same folder, then rename: never a half-written PNG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    return save_figure(fig, path)


def _both_classes(y_true, prob, what: str) -> tuple[np.ndarray, np.ndarray]:
    y, p, _ = _as_binary(y_true, prob)
    if y.min() == y.max():
        raise MedvitError(f"{what}: needs positive and negative labels, all {y.size} are {int(y[0])}")
    return y, p


def _diagonal(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title=title)
    ax.grid(alpha=0.3)


def roc_band(y_true, prob, *, n_boot: int = 200, seed: int = 0, grid: np.ndarray | None = None,
             alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr grid, low TPR, high TPR): percentiles of the bootstrap resamples' TPR on a fixed FPR
    grid. The resamples are `metrics.bootstrap_roc`'s, i.e. the stratified ones the printed AUC
    CI (`metrics.bootstrap_aucs`) comes from: one bootstrap for the band and the interval."""
    from medvit.metrics import bootstrap_roc

    grid = np.linspace(0, 1, 101) if grid is None else np.asarray(grid, dtype=float)
    rows = bootstrap_roc(y_true, prob, grid, n_boot=n_boot, seed=seed)
    if not len(rows):
        return grid, np.full_like(grid, np.nan), np.full_like(grid, np.nan)
    low, high = np.percentile(rows, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return grid, low, high


def plot_roc(y_true, prob, path: str | Path, *, n_boot: int = 200, seed: int = 0, title: str = "ROC") -> Path:
    """ROC curve with a bootstrap confidence band and AUC [95% CI] in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, p = _both_classes(y_true, prob, "ROC plot")
    fpr, tpr, _ = roc_curve(y, p)
    auc = roc_auc_score(y, p)
    label = f"AUC {auc:.3f}"
    fig, (ax,) = _figure()
    if n_boot > 0:
        ci = bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)
        grid, low, high = roc_band(y, p, n_boot=n_boot, seed=seed)
        ax.fill_between(grid, low, high, color="C0", alpha=0.2, lw=0, label="95% bootstrap band")
        if ci is not None:
            label += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    ax.plot(fpr, tpr, color="C0", lw=2, label=f"{label} (n={y.size}, pos={int(y.sum())})")
    _diagonal(ax, title)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def plot_pr(y_true, prob, path: str | Path, *, title: str = "Precision-recall") -> Path:
    """Precision-recall curve with average precision and the prevalence (chance) baseline."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = _both_classes(y_true, prob, "PR plot")
    precision, recall, _ = precision_recall_curve(y, p)
    ap = average_precision_score(y, p)
    prevalence = float(y.mean())
    fig, (ax,) = _figure()
    ax.step(recall, precision, where="post", color="C1", lw=2, label=f"AP {ap:.3f} (n={y.size})")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    return _save(fig, path)


def plot_confusion(cm, labels: Sequence[str], path: str | Path, *, title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows true, columns predicted) with the count in each cell."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise MedvitError(f"confusion plot: need a square matrix matching {len(labels)} labels, got {cm.shape}")
    k = cm.shape[0]
    side = max(4.5, 0.6 * k + 2)
    fig, (ax,) = _figure(size=(side + 1, side))
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(s) for s in labels], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(ticks, [str(s) for s in labels])
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    middle = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center", fontsize=9 if k <= 10 else 7,
                    color="white" if cm[i, j] > middle else "black")
    return _save(fig, path)


# (panel title, y label, columns) — any column may be missing from the log
_PANELS = [
    ("Loss", "loss", ["train_loss", "val_loss"]),
    ("Validation metrics", "value", ["val_accuracy", "val_auc", "train_error"]),
    ("Learning rate", "lr", ["lr"]),
]


def read_log(log: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A training log as a frame: a DataFrame as is, or a .csv / .jsonl file."""
    if isinstance(log, pd.DataFrame):
        return log
    path = Path(log)
    if not path.is_file():
        raise MedvitError(f"{path}: training log not found")
    try:
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl")
        return pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:
        raise MedvitError(f"{path}: cannot read training log ({e})") from e


def plot_training_curves(log: pd.DataFrame | str | Path, path: str | Path, *, title: str = "Training") -> Path:
    """Loss (train/val), validation metrics and lr against epoch; panels without data are left out."""
    df = read_log(log)
    x_name = "epoch" if "epoch" in df.columns else "step" if "step" in df.columns else None
    x = pd.to_numeric(df[x_name], errors="coerce") if x_name else pd.Series(np.arange(len(df)))
    panels = []
    for name, ylabel, cols in _PANELS:
        series = {c: pd.to_numeric(df[c], errors="coerce") for c in cols if c in df.columns}
        series = {c: s for c, s in series.items() if s.notna().any()}
        if series:
            panels.append((name, ylabel, series))
    if not panels:
        known = [c for _, _, cols in _PANELS for c in cols]
        raise MedvitError(f"training curves: the log has none of the columns {known} with values "
                          f"(columns: {list(df.columns)}, rows: {len(df)})")
    fig, axes = _figure(ncols=len(panels), size=(5.0, 4.0))
    for ax, (name, ylabel, series) in zip(axes, panels):
        for col, s in series.items():
            ok = s.notna() & x.notna()
            ax.plot(x[ok], s[ok], marker="o" if ok.sum() < 30 else None, ms=3, label=col)
        ax.set(title=name, xlabel=x_name or "row", ylabel=ylabel)
        if name == "Learning rate" and (series["lr"] > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_roc_compare(curves: Mapping[str, tuple], path: str | Path, *, title: str = "ROC comparison") -> Path:
    """Several models' ROC curves on one axes (e.g. ViT vs CNN), AUC of each in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if not curves:
        raise MedvitError("ROC comparison: no curves given")
    fig, (ax,) = _figure()
    for i, (name, (y_true, prob)) in enumerate(curves.items()):
        y, p = _both_classes(y_true, prob, f"ROC comparison ({name})")
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color=f"C{i % 10}", lw=2, label=f"{name}: AUC {roc_auc_score(y, p):.3f} (n={y.size})")
    _diagonal(ax, title)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)
