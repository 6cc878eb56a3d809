"""Paired statistics for comparing scorers on the same images.

- DeLong's test for the difference of two correlated ROC AUCs, with the fast algorithm of
  Sun & Xu (2014, IEEE SPL 21(11)): midranks instead of the O(m·n) kernel, O(K·N log N) for K
  scorers. Written here because neither scikit-learn nor scipy has it.
- A paired, class-stratified bootstrap of the AUC difference (the resamples of
  `medvit.metrics.paired_bootstrap_aucs`), shown beside DeLong as a cross-check.
- McNemar's test on paired binary outcomes: exact binomial when the discordant pairs are few
  (< 25), else chi-square with continuity correction (Edwards); the result says which.
- Holm's step-down correction for several comparisons; Wilson's interval for a proportion.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from medvit.metrics import _as_binary, paired_bootstrap_aucs

Z95 = 1.959963984540054  # standard normal 97.5% quantile
EXACT_BELOW = 25  # McNemar: exact binomial test when b + c < 25 discordant pairs


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def delong_covariance(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (K,), covariance (K, K)) of K scorers `probs` (K, N) on labels `y_true` (N,) by
    DeLong et al. (1988), computed with Sun & Xu's (2014) midrank algorithm."""
    from scipy.stats import rankdata

    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    P = np.asarray(probs, dtype=np.float64).reshape(-1, y.size)
    labelled = y >= 0  # unlabelled items (-1, NaN) are left out, as everywhere in medvit.metrics
    y, P = y[labelled] == 1, P[:, labelled]
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    X, Y = P[:, y], P[:, ~y]  # (K, m) positives, (K, n) negatives
    tx = rankdata(X, axis=1)  # midranks within the positives
    ty = rankdata(Y, axis=1)
    tz = rankdata(np.concatenate([X, Y], axis=1), axis=1)  # midranks in the pooled sample
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # structural components of the positives
    v01 = 1.0 - (tz[:, m:] - ty) / m  # ... of the negatives
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y_true, prob_a, prob_b, alpha: float = 0.05) -> dict[str, Any]:
    """DeLong's test of AUC(a) - AUC(b) = 0 on the same images: difference, its standard error,
    (1 - alpha) normal CI, z and two-sided p. Identical scorers give difference 0 and p = 1."""
    aucs, cov = delong_covariance(y_true, np.stack([prob_a, prob_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    z_crit = Z95 if alpha == 0.05 else _norm_ppf(1 - alpha / 2)
    if se < 1e-12:  # the same ranking: no evidence of a difference
        z, p = 0.0, 1.0
        if abs(diff) > 1e-12:  # a difference with no variance (degenerate); report it as certain
            z, p = math.copysign(math.inf, diff), 0.0
    else:
        z = diff / se
        p = min(1.0, 2 * _norm_sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se,
            "ci": [diff - z_crit * se, diff + z_crit * se], "z": z, "p": p}


def _norm_ppf(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def bootstrap_auc_diff(y_true, prob_a, prob_b, n_boot: int = 2000, seed: int = 0,
                       alpha: float = 0.05) -> dict[str, Any]:
    """Paired, class-stratified bootstrap of AUC(a) - AUC(b): percentile CI and a two-sided p
    (twice the share of resampled differences on the far side of 0, at most 1)."""
    y, pa, _ = _as_binary(y_true, prob_a)
    _, pb, _ = _as_binary(y_true, prob_b)
    aucs = paired_bootstrap_aucs(y, np.stack([pa, pb]), n_boot=n_boot, seed=seed)
    d = aucs[:, 0] - aucs[:, 1]
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"diff_ci": None, "p": None, "n_boot": int(n_boot)}
    low, high = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    eps = 1e-12
    p = min(1.0, 2 * min(float(np.mean(d <= eps)), float(np.mean(d >= -eps))))
    return {"diff_ci": [float(low), float(high)], "p": p, "n_boot": int(d.size)}


def mcnemar(correct_a, correct_b, exact: bool | None = None) -> dict[str, Any]:
    """McNemar's test on paired outcomes (e.g. each image right or wrong under runs a and b).

    b = a right and b wrong, c = a wrong and b right. exact=None: the exact two-sided binomial
    test when b + c < 25, else chi-square (1 df) with continuity correction, (|b - c| - 1)² / (b + c).
    `method` names the one used."""
    from scipy.stats import binomtest, chi2

    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    bb = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.size != bb.size:
        raise ValueError(f"mcnemar: {a.size} vs {bb.size} paired outcomes")
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    n = b + c
    out: dict[str, Any] = {"n": int(a.size), "a_right_b_wrong": b, "a_wrong_b_right": c,
                           "both_right": int((a & bb).sum()), "both_wrong": int((~a & ~bb).sum())}
    if n == 0:
        return {**out, "statistic": 0.0, "p": 1.0, "method": "no discordant pairs"}
    if exact or (exact is None and n < EXACT_BELOW):
        return {**out, "statistic": float(min(b, c)), "p": float(binomtest(b, n, 0.5).pvalue),
                "method": "exact binomial (two-sided)"}
    stat = max(0, abs(b - c) - 1) ** 2 / n
    return {**out, "statistic": float(stat), "p": float(chi2.sf(stat, 1)),
            "method": "chi-square with continuity correction"}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), None entries left out and kept None."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    k = len(order)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def wilson_ci(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval of a proportion (better than the normal one near 0 or 1)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]
