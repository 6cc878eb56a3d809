"""Calibration: reliability bins, Brier score, expected calibration error, reliability diagram.

Brier comes from scikit-learn (`brier_score_loss`). The bins are scikit-learn's
`calibration_curve` bins (uniform, same edges and assignment), kept with their counts, which
calibration_curve drops and the ECE needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medvit.metrics import _as_binary


def reliability(y_true, prob, n_bins: int = 10) -> dict[str, Any]:
    """Uniform bins over [0, 1]: per bin the count, mean predicted probability and observed
    positive fraction (None for empty bins), plus ECE = sum over bins of count/N · |observed - predicted|
    and MCE, the largest such gap."""
    y, p, _ = _as_binary(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)  # calibration_curve's assignment
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    nz = count > 0
    mean_p = np.divide(sum_p, count, out=np.zeros(n_bins), where=nz)
    frac = np.divide(sum_y, count, out=np.zeros(n_bins), where=nz)
    gaps = np.abs(frac - mean_p)
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(),
            "mean_predicted": [float(v) if k else None for v, k in zip(mean_p, nz)],
            "fraction_positive": [float(v) if k else None for v, k in zip(frac, nz)],
            "ece": float((count * gaps).sum() / y.size), "mce": float(gaps[nz].max()) if nz.any() else None}


def brier(y_true, prob) -> float:
    from sklearn.metrics import brier_score_loss

    y, p, _ = _as_binary(y_true, prob)
    return float(brier_score_loss(y, p))


def calibration_metrics(y_true, prob, n_bins: int = 10) -> dict[str, Any]:
    """{"brier", "ece", "mce", "bins": reliability(...)}."""
    rel = reliability(y_true, prob, n_bins)
    return {"brier": brier(y_true, prob), "ece": rel["ece"], "mce": rel["mce"], "bins": rel}


def plot_reliability(curves: Mapping[str, dict], path: str | Path, *, title: str = "Reliability") -> Path:
    """Reliability diagram of several runs (name -> calibration_metrics output) on one axes, with
    the share of images per bin below."""
    from medvit.plots import _figure, _save

    fig, (ax, hist) = _figure(ncols=2, size=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    n_runs = max(1, len(curves))
    for i, (name, cal) in enumerate(curves.items()):
        bins = cal["bins"]
        pts = [(x, y) for x, y in zip(bins["mean_predicted"], bins["fraction_positive"]) if x is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", color=f"C{i % 10}", lw=2,
                    label=f"{name}: ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}")
        edges = np.asarray(bins["edges"])
        width = (edges[1] - edges[0]) / (n_runs + 1)
        counts = np.asarray(bins["count"], dtype=float)
        hist.bar(edges[:-1] + width * (i + 0.5), counts / max(counts.sum(), 1), width=width,
                 color=f"C{i % 10}", label=name, align="edge")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Mean predicted probability", ylabel="Observed fraction positive",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlim=(0, 1), xlabel="Predicted probability", ylabel="Share of images", title="Images per bin")
    hist.grid(alpha=0.3)
    hist.legend(fontsize=8)
    return _save(fig, path)
