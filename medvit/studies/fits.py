"""Fits of the seed studies: the learning-curve exponent α (ε_test ∝ p_train^α, seed 000 eq. 6)
and the width of the double-descent peak. numpy only; no torch."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CI_LEVEL = 0.95


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """slope, intercept and the slope's standard error of y = a x + b."""
    a, b = np.polyfit(x, y, 1)
    if len(x) < 3:
        return float(a), float(b), float("nan")
    resid = y - (a * x + b)
    s2 = float(resid @ resid) / (len(x) - 2)
    return float(a), float(b), float(np.sqrt(s2 / np.sum((x - x.mean()) ** 2)))


def fit_power_law(points: Sequence[float], errors: np.ndarray, *, floor: float = 1e-4, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """Fit log ε = α log p + c to the mean over seeds of `errors` (seeds × points; NaN = a failed run).

    CI of α: with 10 or more complete seeds, a percentile bootstrap over seeds (each resample
    refits the mean curve of seeds drawn with replacement); with 2 to 9, a t-interval from the
    spread of the per-seed slopes (alpha ± t_{n-1} sd/sqrt(n): a bootstrap over 3 seeds has only 10
    distinct resamples and is too narrow); with one seed, the regression's t-interval on its
    curve (needs 3 or more points). α and its CI use the same seeds: those with no failed run
    (all seeds when none is complete). Errors are floored at `floor` (zero has no logarithm)."""
    from scipy import stats

    p = np.asarray(points, dtype=float)
    e = np.atleast_2d(np.asarray(errors, dtype=float))
    usable = ~np.all(np.isnan(e), axis=0)
    p, e = p[usable], e[:, usable]
    complete = e[~np.any(np.isnan(e), axis=1)]
    e = complete if len(complete) else e
    out: dict[str, Any] = {"alpha": None, "alpha_ci": [None, None], "ci_method": None, "intercept": None,
                           "points": p.tolist(), "test_error": np.nanmean(e, axis=0).tolist() if e.size else [],
                           "seeds": int(e.shape[0])}
    if len(p) < 2:
        out["note"] = "fewer than two points: no fit"
        return out
    x = np.log(p)
    alpha, intercept, se = _ols(x, np.log(np.clip(np.nanmean(e, axis=0), floor, None)))
    out.update(alpha=alpha, intercept=intercept)
    n = len(complete)
    xc = x - x.mean()
    if n >= 10:
        draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        curves = np.log(np.clip(complete[draws].mean(axis=1), floor, None))  # (n_boot, points)
        slopes = (curves - curves.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
        lo, hi = np.percentile(slopes, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)])
        out.update(alpha_ci=[float(lo), float(hi)], ci_method=f"percentile bootstrap over {n} seeds")
    elif n >= 2:
        logs = np.log(np.clip(complete, floor, None))
        slopes = (logs - logs.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)  # one slope per seed
        half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1)) * float(slopes.std(ddof=1)) / np.sqrt(n)
        out.update(alpha_ci=[alpha - half, alpha + half],
                   ci_method=f"t-interval over the per-seed slopes of {n} seeds")
    elif np.isfinite(se):
        t = float(stats.t.ppf(0.5 + CI_LEVEL / 2, len(x) - 2))
        out.update(alpha_ci=[alpha - t * se, alpha + t * se],
                   ci_method=f"t-interval of the log-log regression slope ({len(x)} points, one seed)")
    else:
        out["ci_method"] = "none: two points and one seed"
    return out


def peak_width(widths: Sequence[float], test_error: Sequence[float]) -> dict[str, Any]:
    """The width of the interpolation peak of double descent: the highest interior local maximum
    of the mean test error (a rise, then a fall; the error is also high at the smallest widths,
    which underfit, so the global maximum is not it). Without an interior maximum there is no
    peak in the sweep: peak_width None, and the sweep's maximum under max_width."""
    w = np.asarray(widths, dtype=float)
    e = np.asarray(test_error, dtype=float)
    ok = ~np.isnan(e)
    if not ok.any():
        return {"peak_width": None, "peak_test_error": None, "interior": False, "max_width": None}
    w, e = w[ok], e[ok]
    top = int(np.argmax(e))
    local = [i for i in range(1, len(e) - 1) if e[i] > e[i - 1] and e[i] >= e[i + 1]]
    if not local:
        return {"peak_width": None, "peak_test_error": None, "interior": False, "max_width": float(w[top])}
    i = max(local, key=lambda k: e[k])
    return {"peak_width": float(w[i]), "peak_test_error": float(e[i]), "interior": True, "max_width": float(w[top])}
