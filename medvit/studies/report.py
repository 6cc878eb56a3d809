"""Tables, plots and fits of a study, drawn from OUT/results.csv alone (plus OUT/curves.csv, the
per-epoch curves gathered from the runs, for the curve plots): `redraw(out)` rebuilds them all."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvit.errors import MedvitError
from medvit.io import write_text
from medvit.studies.fits import fit_power_law, peak_width

RESULTS, CURVES, TABLE, FIT = "results.csv", "curves.csv", "table.md", "fit.json"
CURVE_COLUMNS = ["epoch", "step", "train_loss", "train_error", "val_loss", "val_accuracy", "elapsed"]


def _fig(ncols: int = 1, size=(5.5, 4.5)):
    from medvit.plots import _figure

    return _figure(ncols, size)


def _save(fig, path: Path) -> str:
    from medvit.plots import _save as save

    save(fig, path)
    return path.name


def _ms(seconds: float) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "-"
    return f"{int(seconds // 60)}:{int(round(seconds % 60)):02d}"


def _pm(values: pd.Series, spec: str = ".3f") -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "-"
    return f"{v.mean():{spec}}" + (f" ± {v.std(ddof=1):{spec}}" if len(v) > 1 else "")


def _md(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"].copy()


def _failed_section(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return ""
    return "\n## Failed runs\n\n" + _md(["run", "error"], [[r.run_id, str(r.error).replace("|", "/")]
                                                         for r in bad.itertuples()])


def _stop_summary(rows: pd.DataFrame) -> str:
    reasons = rows["stop_reason"].fillna("").astype(str).str.replace(r"=.*", "", regex=True)
    reasons = reasons.str.replace("train error unchanged for.*", "flat train error", regex=True)
    return ", ".join(f"{k} ×{v}" for k, v in reasons.value_counts().items())


# ------------------------------------------------------------------------------ per study

def _vit_vs_cnn(df: pd.DataFrame, curves: pd.DataFrame | None, out: Path) -> tuple[str, list[str], dict | None]:
    ok = _ok(df)
    rows = [[arm, _pm(g["test_accuracy"]), _pm(g["test_loss"]), f"{int(g['params'].iloc[0]):,}",
             _ms(g["train_wall_s"].mean()), int(g["epochs"].max()), len(g)] for arm, g in ok.groupby("arm", sort=False)]
    table = "## Test loss and accuracy\n\n" + _md(
        ["Model", "Accuracy", "Loss", "Params", "Training time (m:s)", "Epochs", "Seeds"], rows)
    plots = [_curves_plot(curves, out / "curves.png", "arm", "ViT vs CNN: training and validation")] \
        if curves is not None and len(curves) else []
    return table, plots, None


def _patch_size(df: pd.DataFrame, curves: pd.DataFrame | None, out: Path, mammo: bool = False
                ) -> tuple[str, list[str], dict | None]:
    ok = _ok(df)
    ok["point"] = pd.to_numeric(ok["point"])
    rows = []
    for patch, g in ok.groupby("point"):
        if mammo:
            auc = g["test_auc"].mean()
            ci = f"{auc:.3f} [{g['test_auc_lo'].mean():.3f}, {g['test_auc_hi'].mean():.3f}]" if pd.notna(auc) else "-"
            rows.append([int(patch), _ms(g["train_wall_s"].mean()), ci, _pm(g["test_accuracy"]),
                         _pm(g["test_loss"]), int(g["n_test"].iloc[0]), len(g)])
        else:
            rows.append([int(patch), _ms(g["train_wall_s"].mean()), _pm(g["train_accuracy"]), _pm(g["test_accuracy"]),
                         _pm(g["train_loss"]), _pm(g["test_loss"]), len(g)])
    if mammo:
        header = ["Patch Size", "Training Time (m:s)", "Test AUC [95% CI]", "Accuracy", "Loss", "n test", "Seeds"]
        title = "## ViT patch size on mammograms (test AUC, stratified bootstrap CI)\n\n"
    else:
        header = ["Patch Size", "Training Time (m:s)", "Train Accuracy", "Test Accuracy", "Train Loss",
                  "Test Loss", "Seeds"]
        title = "## Vision Transformer trials by patch size\n\n"
    fig, (ax,) = _fig()
    g = ok.groupby("point")
    if mammo:
        auc = g["test_auc"].mean()
        lo, hi = g["test_auc_lo"].mean(), g["test_auc_hi"].mean()
        ax.errorbar(auc.index, auc, yerr=[auc - lo, hi - auc], marker="o", capsize=4, label="test AUC (95% CI)")
        ax.set(ylabel="AUC", ylim=(0, 1))
    else:
        for col in ("train_accuracy", "test_accuracy"):
            ax.errorbar(g[col].mean().index, g[col].mean(), yerr=g[col].std().fillna(0), marker="o", capsize=4,
                        label=col.replace("_", " "))
        ax.set(ylabel="accuracy")
    ax.set(xscale="log", xlabel="patch size", title=title.strip("# \n"))
    ax.set_xticks(sorted(ok["point"].unique()), [str(int(p)) for p in sorted(ok["point"].unique())])
    ax.grid(alpha=0.3)
    ax.legend()
    plots = [_save(fig, out / "patch_size.png")]
    if curves is not None and len(curves):
        plots.append(_curves_plot(curves, out / "curves.png", "point", "Patch size: training and validation"))
    return title + _md(header, rows), plots, None


def _double_descent(df: pd.DataFrame, out: Path) -> tuple[str, list[str], dict]:
    ok = _ok(df)
    ok["point"] = pd.to_numeric(ok["point"])
    ok["noise"] = pd.to_numeric(ok["noise"]).fillna(0.0)
    fit: dict = {}
    rows, plots = [], []
    for arm, a in ok.groupby("arm", sort=False):
        fit[arm] = {"peak_width": {}, "peak_test_error": {}, "interior_peak": {}, "max_width": {}, "widths": {},
                    "test_error": {}, "train_error": {}}
        fig, axes = _fig(2, (5.5, 4.5))
        noises = sorted(a["noise"].unique())
        for i, (noise, g) in enumerate(a.groupby("noise")):
            by = g.groupby("point")
            m = pd.DataFrame({(c, stat): getattr(by[c], stat)() for c in ("train_error", "test_error")
                              for stat in ("mean", "std")})
            widths = m.index.to_numpy(dtype=float)
            key = f"{noise:g}"
            peak = peak_width(widths, m[("test_error", "mean")].to_numpy())
            fit[arm]["peak_width"][key] = peak["peak_width"]
            fit[arm]["peak_test_error"][key] = peak["peak_test_error"]
            fit[arm]["interior_peak"][key] = peak["interior"]
            fit[arm]["max_width"][key] = peak["max_width"]
            fit[arm]["widths"][key] = widths.tolist()
            fit[arm]["test_error"][key] = m[("test_error", "mean")].tolist()
            fit[arm]["train_error"][key] = m[("train_error", "mean")].tolist()
            for w, r in m.iterrows():
                n = int((g["point"] == w).sum())
                rows.append([arm, f"{noise:.0%}", int(w) if float(w).is_integer() else w,
                             f"{r[('train_error', 'mean')]:.4f}", f"{r[('test_error', 'mean')]:.4f}",
                             f"{r[('test_error', 'std')]:.4f}" if n > 1 else "-", n])
            if noise == max(noises):
                for col, style in (("train_error", "--"), ("test_error", "-")):
                    mu, sd = m[(col, "mean")], m[(col, "std")].fillna(0)
                    axes[0].plot(widths, mu, style, marker="o", label=col.replace("_", " "))
                    axes[0].fill_between(widths, mu - sd, mu + sd, alpha=0.2)
                axes[0].set(title=f"(a) {arm}, label noise {noise:.0%}")
            mu, sd = m[("test_error", "mean")], m[("test_error", "std")].fillna(0)
            axes[1].plot(widths, mu, marker="o", color=f"C{i}", label=f"test, noise {noise:.0%}")
            axes[1].plot(widths, m[("train_error", "mean")], "--", color=f"C{i}", alpha=0.6)
            axes[1].fill_between(widths, mu - sd, mu + sd, color=f"C{i}", alpha=0.15)
            axes[1].set(title=f"(b) {arm}: test (solid) and train (dashed) error")
        for ax in axes:
            ax.set(xscale="log", xlabel="width (C1 for the CNN, h_embed for the ViT)", ylabel="error")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        plots.append(_save(fig, out / f"double_descent_{arm}.png"))
    peaks = [[arm, f"{float(n):.0%}", f["peak_width"][n] if f["interior_peak"][n] else "none in the sweep",
              f["max_width"][n]] for arm, f in fit.items() for n in f["peak_width"]]
    table = ("## Train and test error against width (mean over seeds)\n\n"
             + _md(["Model", "Label noise", "Width", "Train error", "Test error", "Test error sd", "Seeds"], rows)
             + "\n## Test-error peak\n\n"
             + _md(["Model", "Label noise", "Peak width", "Width of the highest test error"], peaks)
             + f"\nStopped by: {_stop_summary(ok)}\n")
    return table, plots, fit


_VARIANT = re.compile(r"vit_H(\d+)_L(\d+)$")


def _learning_curves(df: pd.DataFrame, out: Path, groups: dict[str, list[str]] | None = None
                     ) -> tuple[str, list[str], dict]:
    ok = _ok(df)
    ok["point"] = pd.to_numeric(ok["point"])
    fit: dict = {}
    for arm, a in ok.groupby("arm", sort=False):
        wide = a.pivot_table(index="seed", columns="point", values="test_error", aggfunc="mean")
        fit[arm] = fit_power_law(wide.columns.to_numpy(dtype=float), wide.to_numpy(dtype=float))
    groups = groups or {"learning_curve": list(fit)}
    plots = []
    for name, arms in groups.items():
        arms = [a for a in arms if a in fit]
        if not arms:
            continue
        fig, (ax,) = _fig(1, (6.0, 4.8))
        for i, arm in enumerate(arms):
            f, a = fit[arm], ok[ok["arm"] == arm]
            g = a.groupby("point")["test_error"]
            ax.errorbar(g.mean().index, g.mean(), yerr=g.std().fillna(0), fmt="o", color=f"C{i}", capsize=3)
            if f["alpha"] is not None:
                p = np.array(f["points"])
                ci = f["alpha_ci"]
                ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] is not None else ""
                ax.plot(p, np.exp(f["intercept"]) * p ** f["alpha"], "-", color=f"C{i}",
                        label=f"{arm}: α = {f['alpha']:.2f}{ci_txt}")
        what = "" if name == "learning_curve" else f" ({name})"
        ax.set(xscale="log", yscale="log", xlabel="p_train (training points)", ylabel="test error",
               title=f"Learning curves{what}: ε_test ∝ p_train^α")
        ticks = sorted(ok[ok["arm"].isin(arms)]["point"].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.xaxis.set_minor_formatter("")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        plots.append(_save(fig, out / f"{name}.png"))
    rows = []
    for arm, a in ok.groupby("arm", sort=False):
        for p, g in a.groupby("point"):
            rows.append([arm, int(p), _pm(g["test_error"], ".4f"), _pm(g["train_error"], ".4f"),
                         _stop_summary(g), len(g)])
    alphas = [[arm, "-" if f["alpha"] is None else f"{f['alpha']:.3f}",
               "-" if f["alpha_ci"][0] is None else f"[{f['alpha_ci'][0]:.3f}, {f['alpha_ci'][1]:.3f}]",
               f.get("ci_method") or "-"] for arm, f in fit.items()]
    table = ("## Learning-curve exponents (ε_test ∝ p_train^α, fit to the mean over seeds)\n\n"
             + _md(["Model", "α", "95% CI", "CI method"], alphas)
             + "\n## Test error by training-set size\n\n"
             + _md(["Model", "p_train", "Test error", "Train error", "Stopped by", "Seeds"], rows))
    return table, plots, fit


def _heads_layers_groups(ok: pd.DataFrame) -> dict[str, list[str]]:
    """Arms of each heads-layers figure, from results.csv's `group` column (an arm can be in two:
    "heads|combined"); results without it: guessed from the arm names (H1 -> layers, L1 -> heads)."""
    arms = list(ok["arm"].unique())
    if "group" in ok and ok["group"].notna().any():
        groups = ok.drop_duplicates("arm").set_index("arm")["group"].fillna("").astype(str)
        out = {k: [a for a in arms if k in groups[a].split("|")] for k in ("heads", "layers", "combined")}
        return {k: v for k, v in out.items() if v}
    parsed = {a: _VARIANT.match(a) for a in arms}
    heads = [a for a, m in parsed.items() if m and m.group(2) == "1"]
    layers = [a for a, m in parsed.items() if m and m.group(1) == "1"]
    combined = [a for a in arms if not parsed[a]] + [a for a in arms if a not in heads + layers and parsed[a]]
    return {k: v for k, v in (("heads", heads), ("layers", layers), ("combined", combined)) if v}


# ------------------------------------------------------------------------------ entry points

def collect_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch curves of every finished run (metrics_epoch.csv), keyed like results.csv."""
    frames = []
    for r in df[df["status"] == "ok"].itertuples():
        log = Path(str(r.run_dir)) / "metrics_epoch.csv"
        if log.is_file() and log.stat().st_size:
            e = pd.read_csv(log)
            e = e[[c for c in CURVE_COLUMNS if c in e.columns]]
            frames.append(e.assign(run_id=r.run_id, arm=r.arm, point=r.point, seed=r.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _curves_plot(curves: pd.DataFrame, path: Path, by: str, title: str) -> str:
    fig, axes = _fig(2, (5.5, 4.2))
    for i, (key, g) in enumerate(curves.groupby(by, sort=False)):
        m = g.groupby("epoch").mean(numeric_only=True)
        label = f"{by} {key}" if by != "arm" else str(key)
        axes[0].plot(m.index, m["train_loss"], "--", color=f"C{i}", label=f"{label} train")
        axes[1].plot(m.index, 1 - m["train_error"], "--", color=f"C{i}", label=f"{label} train")
        if "val_loss" in m and m["val_loss"].notna().any():
            axes[0].plot(m.index, m["val_loss"], "-", color=f"C{i}", label=f"{label} validation")
            axes[1].plot(m.index, m["val_accuracy"], "-", color=f"C{i}", label=f"{label} validation")
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.set(xlabel="epoch", ylabel=what, title=f"{title}: {what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def paired_delong(pretrained: pd.Series, scratch: pd.Series) -> dict:
    """DeLong's test of two runs' AUCs on the same test images (their eval/predictions.csv)."""
    from medvit.compare.stats import delong_test

    a, b = (pd.read_csv(Path(r["run_dir"]) / "eval" / "predictions.csv") for r in (pretrained, scratch))
    m = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    if len(m) != len(a) or len(m) != len(b):
        raise MedvitError(f"{pretrained['run_dir']} and {scratch['run_dir']} were scored on different images")
    t = delong_test(m["label_a"].to_numpy(), m["prob_a"].to_numpy(), m["prob_b"].to_numpy())
    return {"arm": pretrained["arm"], "scratch": scratch["arm"], "fraction": float(pretrained["point"]),
            "seed": int(pretrained["seed"]), "auc_pretrained": t["auc_a"], "auc_scratch": t["auc_b"],
            "diff": t["diff"], "diff_ci": t["ci"], "p": t["p"], "n_test": len(m)}


def _label_efficiency(df: pd.DataFrame, out: Path) -> tuple[str, list[str], dict]:
    """Test AUC [CI] per arm and label fraction, a figure of AUC against the fraction, and the paired
    DeLong test of each pretrained arm against the scratch arm of its backbone (same fraction, seed)."""
    ok = _ok(df)
    ok["point"] = pd.to_numeric(ok["point"])
    rows = []
    fig, (ax,) = _fig(size=(6.0, 4.5))
    colours = {g: f"C{i}" for i, g in enumerate(sorted(ok["group"].astype(str).unique()))}  # one per backbone
    for arm, g in ok.groupby("arm", sort=True):
        by = g.groupby("point")
        auc, lo, hi = by["test_auc"].mean(), by["test_auc_lo"].mean(), by["test_auc_hi"].mean()
        ax.errorbar(auc.index, auc, yerr=[auc - lo, hi - auc], marker="o", capsize=3, label=arm,
                    color=colours[str(g["group"].iloc[0])], ls="--" if arm.startswith("scratch-") else "-")
        for frac in auc.index:
            rows.append([arm, f"{frac:g}", f"{auc[frac]:.3f} [{lo[frac]:.3f}, {hi[frac]:.3f}]",
                         int(by["n_test"].first()[frac]), len(by.get_group(frac))])
    ax.set(xscale="log", xlabel="share of labelled training patients", ylabel="test AUC (95% CI)", ylim=(0, 1),
           title="Label efficiency: pretrained vs scratch")
    fractions = sorted(ok["point"].unique())
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.minorticks_off()
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots = [_save(fig, out / "label_efficiency.png")]
    tests = []
    for group, g in ok.groupby("group"):
        scratch = g[g["arm"].str.startswith("scratch-")]
        for _, r in g[~g["arm"].str.startswith("scratch-")].iterrows():
            match = scratch[(scratch["point"] == r["point"]) & (scratch["seed"] == r["seed"])]
            if len(match):
                tests.append(paired_delong(r, match.iloc[0]))
    table = "## Label efficiency (test AUC, stratified bootstrap CI; mean over seeds)\n\n" + _md(
        ["Arm", "Label fraction", "Test AUC [95% CI]", "n test", "Seeds"], rows)
    if tests:
        table += "\n\n## Pretrained vs scratch, paired DeLong on the same test images\n\n" + _md(
            ["Arm", "vs", "Fraction", "Seed", "AUC pretrained", "AUC scratch", "Difference [95% CI]", "p"],
            [[t["arm"], t["scratch"], f"{t['fraction']:g}", t["seed"], f"{t['auc_pretrained']:.3f}",
              f"{t['auc_scratch']:.3f}", f"{t['diff']:+.3f} [{t['diff_ci'][0]:+.3f}, {t['diff_ci'][1]:+.3f}]",
              f"{t['p']:.3g}"] for t in tests])
    return table, plots, {"delong": tests}


def redraw(out: str | Path) -> dict[str, Any]:
    """Rebuild table.md, the PNGs and fit.json from OUT/results.csv (and OUT/curves.csv)."""
    out = Path(out)
    path = out / RESULTS
    if not path.is_file():
        raise MedvitError(f"{path}: no results to draw (run the study first)")
    df = pd.read_csv(path)
    if df.empty:
        raise MedvitError(f"{path}: no rows")
    study = str(df["study"].iloc[0])
    curves = pd.read_csv(out / CURVES) if (out / CURVES).is_file() and (out / CURVES).stat().st_size > 1 else None
    ok = _ok(df)
    if ok.empty:
        table, plots, fit = "No run finished.\n", [], None
    elif study == "vit-vs-cnn":
        table, plots, fit = _vit_vs_cnn(df, curves, out)
    elif study in ("patch-size", "mammo-patch"):
        table, plots, fit = _patch_size(df, curves, out, mammo=study == "mammo-patch")
    elif study == "double-descent":
        table, plots, fit = _double_descent(df, out)
    elif study == "learning-curve":
        table, plots, fit = _learning_curves(df, out)
    elif study == "heads-layers":
        table, plots, fit = _learning_curves(df, out, _heads_layers_groups(ok))
    elif study == "label-efficiency":
        table, plots, fit = _label_efficiency(df, out)
    else:
        raise MedvitError(f"{path}: unknown study {study!r}")
    if fit is None and study in ("double-descent", "learning-curve", "heads-layers"):
        fit = {}
    head = (f"# Study {study}\n\n{len(df)} runs: {int((df['status'] == 'ok').sum())} ok, "
            f"{int((df['status'] != 'ok').sum())} failed; device(s): "
            f"{', '.join(sorted(ok['device'].dropna().astype(str).unique())) or '-'}; "
            f"training wall time {ok['train_wall_s'].sum():.0f} s in all.\n\n")
    write_text(out / TABLE, head + table + _failed_section(df))
    if fit is not None:
        write_text(out / FIT, json.dumps(fit, indent=2, default=float) + "\n")
    return {"study": study, "table": str(out / TABLE), "plots": plots, "fit": fit}
