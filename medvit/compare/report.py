"""Assemble the comparison: numbers (compare.json), figures (PNG) and the page (index.html).

Every number comes from the one metrics module (`medvit.metrics` via `medvit.evaluate.binary_report`),
`medvit.compare.stats` and `medvit.compare.calibration`; figures from `medvit.plots` and
`medvit.explain` (one colour scale for every map). The page is a Jinja2 template shipped with
the package (templates/report.html.j2): plain HTML + inline CSS, no scripts, images as files beside
it, so it reads offline. Titles and tables carry run folder names and image ids only (no PHI).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvit.canvas import size_text
from medvit.compare.maps import disagreement_gallery, pointing
from medvit.compare.runs import Run
from medvit.evaluate import TEST, VALIDATION

ALPHA = 0.05
MIN_POSITIVES = 10  # a subgroup with fewer positives (or negatives) is marked: its AUC is unreliable
SUBGROUP_COLUMNS = ("site_id", "machine_id", "view", "laterality", "density", "age_band")
AGE_BANDS = ((0, 50, "<50"), (50, 60, "50-59"), (60, 70, "60-69"), (70, 200, ">=70"))


# ----------------------------------------------------------------------------- entry point

def compare(paths: list[str], out: str | Path, *, which: str = "best", split: str = "auto",
            n_boot: int = 1000, seed: int = 0, device: str = "auto", gallery: int = 6,
            masks: str | None = None, batch_size: int | None = None, workers: int = 0,
            log=print) -> dict[str, Any]:
    """Compare runs on the same images; write OUT/index.html, OUT/compare.json and PNGs. Returns
    the compare.json content."""
    from medvit.compare import runs as R
    from medvit.errors import ConfigError
    from medvit.io import write_text

    if n_boot < 1:
        raise ConfigError(f"--n-boot {n_boot}: the paired bootstrap needs at least 1 resample")
    runs = R.load_runs(paths, which, device)
    R.check_compatible(runs)
    log(f"scoring {len(runs)} runs: {', '.join(r.name for r in runs)}")
    source = R.score_runs(runs, split, batch_size, workers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "split": source["split"], "data": {k: v for k, v in source.items() if k != "notes"},
        "n": int(len(runs[0].frame)), "alpha": ALPHA, "n_boot": n_boot, "seed": seed,
        "notes": list(source["notes"]), "figures": [],
    }
    if runs[0].binary:
        result.update(binary_sections(runs, out, n_boot, seed, result["split"]))
        result["subgroups"] = subgroups(runs, R.data_manifest(runs), n_boot, seed)
        log("maps of the images where the runs disagree most")
        result["gallery"] = disagreement_gallery(runs, out, gallery)
        result["pointing"] = pointing(runs, R.masks_dir(runs, masks))
    else:
        result.update(multiclass_sections(runs, out))
    result["figures"] = sorted(p.name for p in out.glob("*.png")) + sorted(
        f"gallery/{p.name}" for p in (out / "gallery").glob("*.png"))
    for entry, r in zip(result["runs"], runs):
        entry["cost"] = {"parameters": r.params, "images_per_s": round(R.images_per_second(r), 2),
                         "training_seconds": r.training_seconds, "device": str(r.device)}
    for entry in result["runs"]:
        if entry["provenance"].get("include_test"):
            result["notes"].append(f"{entry['name']} starts from a pretraining run that saw the test split's images "
                                   "(pretrain --include-test): its test numbers are not on unseen images")
    result["summary"] = summary_sentence(result)
    write_text(out / "compare.json", json.dumps(result, indent=2, default=_json_default) + "\n")
    write_text(out / "index.html", render(result))
    return result


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


# ----------------------------------------------------------------------------- binary runs

def provenance(r: Run) -> dict[str, Any]:
    """Where a run's starting weights came from (its checkpoint's `init`): from scratch, ImageNet, a
    weights file, or a `medvit pretrain` run (method, images, whether its test split was used)."""
    init = r.ckpt.get("init") or {}
    out: dict[str, Any] = {"start": "scratch", "text": "trained from scratch"}
    if init.get("pretrained"):
        out.update(start="imagenet", text=f"from {init['pretrained']} weights")
    elif init.get("method"):
        run = Path(str(init.get("run", ""))).name
        out.update(start="pretrained", method=init["method"], images=init.get("images"), run=run,
                   include_test=bool(init.get("include_test")),
                   text=f"fine-tuned from {init['method']} pretraining run {run} "
                        f"on {init.get('images')} unlabelled images")
    elif init.get("weights"):
        out.update(start="weights", text=f"from the weights file {Path(str(init['weights'])).name}")
    return out


def _run_entry(r: Run) -> dict[str, Any]:
    return {"name": r.name, "backbone": r.backbone, "run_dir": str(r.run_dir), "checkpoint": str(r.checkpoint),
            "threshold": r.threshold, "image_size": size_text(r.image_size), "provenance": provenance(r),
            **({"canvas": size_text(r.ingest_size)} if r.cfg.data.kind == "mammo" else {})}


def binary_sections(runs: list[Run], out: Path, n_boot: int, seed: int, split: str) -> dict[str, Any]:
    """Per run metrics (image, breast mean/max), calibration, paired tests, ROC + reliability PNGs."""
    from medvit.compare.calibration import calibration_metrics, plot_reliability
    from medvit.evaluate import binary_report
    from medvit.plots import plot_roc_compare

    y = runs[0].frame["label"].to_numpy()
    entries, cal = [], {}
    for r in runs:
        m = binary_report(r.frame, r.loss, r.threshold, n_boot, seed)
        c = calibration_metrics(y, r.frame["prob"].to_numpy())
        cal[r.name] = c
        pb = m.get("per_breast")
        entries.append({**_run_entry(r), "n": m["n"], "n_pos": m["n_pos"], "auc": m["auc"], "auc_ci": m["auc_ci"],
                        "brier": c["brier"], "ece": c["ece"], "mce": c["mce"], "pf1": m["pf1"],
                        "loss": m["loss"],
                        "sensitivity_at_specificity": m["sensitivity_at_specificity"],
                        "specificity_at_sensitivity": m["specificity_at_sensitivity"],
                        "at_threshold": m["at_checkpoint_threshold"],
                        "per_breast": None if not pb else {
                            "n_breasts": pb["n_breasts"],
                            **{how: {k: v for k, v in pb[how].items() if k != "notes"}
                               for how in ("mean", "max")}},
                        "calibration_bins": c["bins"], "notes": m["notes"]})
    known = {r.name: (y, r.frame["prob"].to_numpy()) for r in runs}
    notes = []
    try:
        plot_roc_compare(known, out / "roc.png", title=f"ROC - {split}")
    except Exception as err:  # noqa: BLE001 - one class only: the page says so instead of the figure
        notes.append(f"roc.png not drawn: {err}")
    plot_reliability(cal, out / "reliability.png", title=f"Reliability - {split}")
    pairs, correction = paired_tests(runs, y, n_boot, seed)
    return {"runs": entries, "pairs": pairs, "correction": correction, "notes_binary": notes}


def paired_tests(runs: list[Run], y: np.ndarray, n_boot: int, seed: int) -> tuple[list[dict], str]:
    """DeLong + paired bootstrap of the AUC difference and McNemar on sensitivity / specificity at
    each run's validation threshold, for every pair; Holm-adjusted p-values with more than one pair."""
    from medvit.compare.runs import correct
    from medvit.compare.stats import bootstrap_auc_diff, delong_test, holm, mcnemar

    pos = y == 1
    pairs = []
    for a, b in itertools.combinations(runs, 2):
        pa, pb = a.frame["prob"].to_numpy(), b.frame["prob"].to_numpy()
        entry: dict[str, Any] = {"a": a.name, "b": b.name}
        try:
            d = delong_test(y, pa, pb)
            entry.update(auc_a=d["auc_a"], auc_b=d["auc_b"], auc_diff=d["diff"], auc_diff_ci=d["ci"],
                         delong_se=d["se"], delong_z=d["z"], delong_p=d["p"])
        except ValueError as err:
            entry.update(auc_a=None, auc_b=None, auc_diff=None, auc_diff_ci=None, delong_p=None,
                         note=str(err))
        bs = bootstrap_auc_diff(y, pa, pb, n_boot=n_boot, seed=seed)
        entry.update(bootstrap_diff_ci=bs["diff_ci"], bootstrap_p=bs["p"])
        ca, cb = correct(a), correct(b)
        for what, mask in (("sensitivity", pos), ("specificity", ~pos)):
            mc = mcnemar(ca[mask], cb[mask])
            ra = float(ca[mask].mean()) if mask.any() else None
            rb = float(cb[mask].mean()) if mask.any() else None
            entry[what] = {"a": ra, "b": rb, "diff": None if ra is None else ra - rb, "mcnemar": mc}
        pairs.append(entry)
    if len(pairs) > 1:
        for key in ("delong_p", "bootstrap_p"):
            for e, adj in zip(pairs, holm([e.get(key) for e in pairs])):
                e[f"{key}_holm"] = adj
        for what in ("sensitivity", "specificity"):
            for e, adj in zip(pairs, holm([e[what]["mcnemar"]["p"] for e in pairs])):
                e[what]["mcnemar"]["p_holm"] = adj
        correction = (f"Holm step-down over the {len(pairs)} pairs, separately for each test "
                      "(DeLong, bootstrap, McNemar sensitivity, McNemar specificity); *_holm fields")
    else:
        correction = "none (a single pair)"
    return pairs, correction


# ----------------------------------------------------------------------------- subgroups

def _age_band(age) -> str:
    try:
        a = float(age)
    except (TypeError, ValueError):
        return ""
    if np.isnan(a):
        return ""
    return next(label for lo, hi, label in AGE_BANDS if lo <= a < hi)


def _ordered(values: set, column: str) -> list[str]:
    """Subgroup values in reading order: age bands youngest first, numbers numerically."""
    if column == "age_band":
        return [label for _, _, label in AGE_BANDS if label in values]
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def subgroups(runs: list[Run], manifest: pd.DataFrame | None, n_boot: int, seed: int) -> list[dict]:
    """AUC [95% CI] per run in each subgroup the data describes; subgroups with fewer than
    MIN_POSITIVES positives or negatives are kept and marked."""
    from medvit.metrics import bootstrap_auc_ci, rank_auc

    if manifest is None:
        return []
    meta = manifest.set_index("image_id")
    frame = runs[0].frame[["image_id", "label"]].copy()
    if "age" in meta:
        meta = meta.assign(age_band=[_age_band(a) for a in meta["age"]])
    rows = []
    for col in SUBGROUP_COLUMNS:
        if col not in meta:
            continue
        values = meta[col].reindex(frame["image_id"]).fillna("").astype(str).str.strip().to_numpy()
        values = np.array([v[:-2] if v.endswith(".0") else v for v in values])  # 1.0 -> 1 (read as float)
        present = _ordered(set(values) - {""}, col)
        if len(present) < 2:
            continue
        for value in present:
            sel = values == value
            y = frame["label"].to_numpy()[sel]
            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            entry = {"column": col, "value": value, "n": int(sel.sum()), "n_pos": n_pos,
                     "few_positives": n_pos < MIN_POSITIVES or n_neg < MIN_POSITIVES, "auc": {}, "auc_ci": {}}
            for r in runs:
                p = r.frame["prob"].to_numpy()[sel]
                both = n_pos > 0 and n_neg > 0
                entry["auc"][r.name] = rank_auc(y, p) if both else None
                entry["auc_ci"][r.name] = (list(bootstrap_auc_ci(y, p, n_boot=min(n_boot, 500), seed=seed))
                                           if both else None)
            rows.append(entry)
    return rows


# ----------------------------------------------------------------------------- benchmark runs

def multiclass_sections(runs: list[Run], out: Path) -> dict[str, Any]:
    """CIFAR-10 / MNIST: accuracy [Wilson 95% CI], per-class accuracy, macro AUC, Brier, top-label
    ECE, confusion matrices side by side; McNemar on per-image correctness for every pair."""
    from medvit.compare.calibration import reliability
    from medvit.compare.runs import correct
    from medvit.compare.stats import holm, mcnemar, wilson_ci
    from medvit.evaluate import _class_names
    from medvit.metrics import multiclass_metrics
    from medvit.plots import plot_confusion

    names = _class_names(runs[0].cfg.data.kind)
    entries = []
    for i, r in enumerate(runs):
        P = r.frame[[c for c in r.frame if c.startswith("prob_")]].to_numpy()
        y = r.frame["label"].to_numpy()
        m = multiclass_metrics(y, P, loss=r.loss)
        ok = correct(r)
        onehot = np.eye(P.shape[1])[y]
        rel = reliability(ok.astype(int), P.max(axis=1))  # top-label calibration
        labels = names if names and len(names) == P.shape[1] else [str(c) for c in range(P.shape[1])]
        fig = f"confusion_{i}.png"
        plot_confusion(m["confusion_matrix"], labels, out / fig, title=f"{r.name} ({r.backbone})")
        entries.append({**_run_entry(r), "n": m["n"], "accuracy": m["accuracy"],
                        "accuracy_ci": wilson_ci(int(ok.sum()), int(ok.size)),
                        "auc": m["auc_macro_ovr"], "auc_ci": None, "auc_kind": "macro one-vs-rest",
                        "brier": float(((P - onehot) ** 2).sum(axis=1).mean()), "ece": rel["ece"],
                        "per_class_accuracy": m["per_class_accuracy"], "class_names": labels,
                        "confusion_matrix": m["confusion_matrix"], "confusion_figure": fig, "loss": m["loss"]})
    pairs = []
    for (ea, a), (eb, b) in itertools.combinations(zip(entries, runs), 2):
        mc = mcnemar(correct(a), correct(b))
        pairs.append({"a": a.name, "b": b.name, "accuracy_diff": ea["accuracy"] - eb["accuracy"],
                      "mcnemar": mc, "auc_diff": None, "auc_diff_ci": None, "delong_p": None, "bootstrap_p": None})
    correction = "none (a single pair)"
    if len(pairs) > 1:
        for e, adj in zip(pairs, holm([e["mcnemar"]["p"] for e in pairs])):
            e["mcnemar"]["p_holm"] = adj
        correction = f"Holm step-down over the {len(pairs)} pairs (mcnemar.p_holm)"
    return {"runs": entries, "pairs": pairs, "correction": correction}


# ----------------------------------------------------------------------------- summary + page

def _where(result: dict) -> str:
    n = result["n"]
    if result["split"] == TEST:
        return f"On the held-out test split ({n} images)"
    if result["split"] == VALIDATION:
        return f"On the validation fold ({n} images; optimistic: it chose each run's checkpoint and threshold)"
    return f"On {result['split']} ({n} images)"


def summary_sentence(result: dict) -> str:
    """One sentence: which run is better on the compared split, and whether it is significant, e.g.
    "On the held-out test split (80 images), cnn (resnet10t) has the higher AUC, 0.950 vs 0.700 for
    vit (difference +0.250, 95% CI +0.120 to +0.380); the difference is statistically significant
    (DeLong p = 0.0003)." With more than two runs: the best against each other, Holm-adjusted."""
    runs, pairs = result["runs"], result["pairs"]
    binary = "accuracy_ci" not in runs[0]
    metric, label = ("auc", "AUC") if binary else ("accuracy", "accuracy")
    scored = [r for r in runs if r.get(metric) is not None]
    if not scored:
        return f"{_where(result)}, the {label} is undefined for every run (one class only)."
    best = max(scored, key=lambda r: r[metric])
    parts = []
    for pair in pairs:
        if best["name"] not in (pair["a"], pair["b"]):
            continue
        other = next(r for r in runs if r["name"] == (pair["b"] if pair["a"] == best["name"] else pair["a"]))
        sign = 1 if pair["a"] == best["name"] else -1
        if binary:
            p, holm_used = pair.get("delong_p_holm", pair.get("delong_p")), "delong_p_holm" in pair
            ci = pair.get("auc_diff_ci")
            ci = None if not ci else sorted([sign * ci[0], sign * ci[1]])
            diff = None if pair.get("auc_diff") is None else sign * pair["auc_diff"]
            test = "DeLong"
        else:
            p, holm_used = pair["mcnemar"].get("p_holm", pair["mcnemar"]["p"]), "p_holm" in pair["mcnemar"]
            ci, diff, test = None, sign * pair["accuracy_diff"], "McNemar"
        value = "n/a" if other.get(metric) is None else f"{other[metric]:.3f}"
        detail = "" if diff is None else f"difference {diff:+.3f}" + (
            f", 95% CI {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else "")
        head = f"{best[metric]:.3f} vs {value} for {other['name']}" + (f" ({detail})" if detail else "")
        test += ", Holm-adjusted" if holm_used else ""
        if p is None:
            verdict = "its significance could not be tested"
        elif p < ALPHA:
            verdict = f"the difference is statistically significant ({test} p = {p:.2g})"
        else:
            verdict = f"the difference is not statistically significant ({test} p = {p:.2g})"
        parts.append(f"{head}; {verdict}")
    which = "higher" if len(runs) == 2 else "highest"
    return f"{_where(result)}, {best['name']} ({best['backbone']}) has the {which} {label}, " + "; ".join(parts) + "."


def render(result: dict) -> str:
    """index.html from the packaged Jinja2 template (autoescaped)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("medvit.compare", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)

    def num(x, spec: str = ".3f") -> str:
        return "n/a" if x is None else format(x, spec)

    def ci(x, spec: str = ".3f") -> str:
        return "" if not x else f"[{format(x[0], spec)}, {format(x[1], spec)}]"

    def pval(x) -> str:
        return "n/a" if x is None else (f"{x:.2e}" if x < 1e-3 else f"{x:.3f}")

    env.filters.update(num=num, ci=ci, pval=pval)
    return env.get_template("report.html.j2").render(r=result, TEST=TEST, alpha=ALPHA, min_pos=MIN_POSITIVES)
