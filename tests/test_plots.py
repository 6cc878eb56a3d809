"""medvit.plots: each writes a valid PNG atomically, and refuses input it cannot draw."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvit.errors import MedvitError
from medvit.plots import (plot_confusion, plot_pr, plot_roc, plot_roc_compare, plot_training_curves,
                          roc_band)


def _sample(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, 1 / (1 + np.exp(-rng.normal(1.2 * y, 1.0)))


def _check_png(path, folder, min_side=300):
    assert path.exists()
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert min_side <= w <= 4000 and min_side <= h <= 4000
        # not a blank canvas: a drawn plot has many distinct colours
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_plot_roc_and_band(tmp_path):
    y, p = _sample()
    out = plot_roc(y, p, tmp_path / "sub" / "roc.png", n_boot=50)
    assert out == tmp_path / "sub" / "roc.png"
    _check_png(out, tmp_path / "sub")
    grid, low, high = roc_band(y, p, n_boot=50, seed=0)
    assert grid.shape == low.shape == high.shape == (101,)
    assert (low <= high + 1e-12).all() and high[-1] == pytest.approx(1.0)
    # the band is seeded
    np.testing.assert_array_equal(low, roc_band(y, p, n_boot=50, seed=0)[1])


def test_plot_pr_confusion_compare(tmp_path):
    y, p = _sample()
    _check_png(plot_pr(y, p, tmp_path / "pr.png"), tmp_path)
    _check_png(plot_confusion([[50, 3], [7, 40]], ["benign", "cancer"], tmp_path / "cm.png"), tmp_path)
    cm10 = np.random.default_rng(0).integers(0, 100, (10, 10))
    _check_png(plot_confusion(cm10, [f"class{i}" for i in range(10)], tmp_path / "cm10.png"), tmp_path)
    y2, p2 = _sample(seed=1)
    _check_png(plot_roc_compare({"vit_p16": (y, p), "resnet18": (y2, p2)}, tmp_path / "cmp.png"), tmp_path)


def test_overwrite_keeps_one_file(tmp_path):
    y, p = _sample()
    path = tmp_path / "pr.png"
    plot_pr(y, p, path)
    plot_pr(y, 1 - p, path)
    assert [q.name for q in tmp_path.iterdir()] == ["pr.png"]
    _check_png(path, tmp_path)


def test_training_curves_from_csv_jsonl_and_partial_frames(tmp_path):
    epochs = np.arange(6)
    full = pd.DataFrame({"epoch": epochs, "step": epochs * 100, "train_loss": 1 / (epochs + 1),
                         "val_loss": 1.2 / (epochs + 1), "val_accuracy": 0.5 + 0.05 * epochs,
                         "val_auc": [None, 0.6, 0.65, 0.7, 0.72, 0.74], "lr": 1e-3 * 0.5 ** epochs})
    csv = tmp_path / "metrics_epoch.csv"
    full.to_csv(csv, index=False)
    _check_png(plot_training_curves(csv, tmp_path / "curves.png"), tmp_path)
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in full.drop(columns="val_auc").to_dict("records")))
    _check_png(plot_training_curves(jsonl, tmp_path / "curves_jsonl.png"), tmp_path)
    only_loss = full[["train_loss"]]  # no epoch column, no val columns
    _check_png(plot_training_curves(only_loss, tmp_path / "loss.png"), tmp_path)


def test_bad_input_is_refused_cleanly(tmp_path):
    with pytest.raises(MedvitError, match="positive and negative"):
        plot_roc([0, 0, 0], [0.1, 0.2, 0.3], tmp_path / "roc.png")
    with pytest.raises(MedvitError, match="not found"):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "c.png")
    with pytest.raises(MedvitError, match="none of the columns"):
        plot_training_curves(pd.DataFrame({"epoch": [0, 1], "other": [1, 2]}), tmp_path / "c.png")
    with pytest.raises(MedvitError, match="square"):
        plot_confusion([[1, 2, 3]], ["a"], tmp_path / "cm.png")
    with pytest.raises(MedvitError, match="no curves"):
        plot_roc_compare({}, tmp_path / "cmp.png")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_roc_band_uses_the_auc_ci_resamples():
    """Issue 11: the band came from an unstratified Python-loop bootstrap while the printed CI came
    from metrics.bootstrap_aucs. Now both read metrics.bootstrap_counts' stratified resamples."""
    from sklearn.metrics import roc_curve

    y, p = _sample()
    y = np.asarray(y)
    p = np.round(np.asarray(p), 2)  # ties too
    grid = np.linspace(0, 1, 51)
    rng = np.random.default_rng(4)  # what bootstrap_counts draws (all 30 rows in one chunk)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.concatenate([pos[rng.integers(0, pos.size, size=(30, pos.size))],
                          neg[rng.integers(0, neg.size, size=(30, neg.size))]], axis=1)
    curves = []
    for i in idx:
        fpr, tpr, _ = roc_curve(y[i], p[i], drop_intermediate=False)
        curves.append(np.interp(grid, fpr, tpr))
    low, high = np.percentile(np.array(curves), [2.5, 97.5], axis=0)
    g, band_low, band_high = roc_band(y, p, n_boot=30, seed=4, grid=grid)
    np.testing.assert_allclose(band_low, low, atol=1e-12)
    np.testing.assert_allclose(band_high, high, atol=1e-12)
