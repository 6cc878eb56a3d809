"""medvit.metrics against hand-computed cases and against scikit-learn."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, roc_auc_score

from medvit.errors import MedvitError
from medvit.metrics import (aggregate_per_breast, binary_metrics, bootstrap_auc_ci, bootstrap_aucs,
                            classification_metrics, multiclass_metrics, per_breast_metrics,
                            probabilistic_f1, rank_auc)

# The hand example: 3 negatives, 3 positives.
Y = [0, 0, 0, 1, 1, 1]
P = [0.1, 0.4, 0.6, 0.35, 0.8, 0.9]


def _sample(n: int, seed: int, prevalence: float = 0.3, shift: float = 1.0):
    """Scores from two overlapping normals squashed to (0, 1); AUC well inside (0.5, 1)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(shift * y, 1.0)
    return y, 1 / (1 + np.exp(-z))


def test_hand_example():
    m = binary_metrics(Y, P, n_boot=0)
    assert (m["n"], m["n_pos"]) == (6, 3)
    # AUC: 9 (pos, neg) pairs. 0.35 beats only 0.1 -> 1; 0.8 and 0.9 beat all three -> 3 + 3. 7/9.
    assert m["auc"] == pytest.approx(7 / 9)
    # accuracy at 0.5: predictions 0,0,1,0,1,1 -> wrong on 0.6 (neg) and 0.35 (pos): 4/6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # pF1: ctp = .35+.8+.9 = 2.05, cfp = .1+.4+.6 = 1.1; P = 2.05/3.15, R = 2.05/3
    # 2PR/(P+R) = 2 ctp / (ctp + cfp + n_pos) = 4.1 / 6.15 = 2/3
    assert m["pf1"] == pytest.approx(2 / 3)
    # specificity >= 0.8 with 3 negatives needs 0 false positives: threshold above 0.6 -> 0.8, 0.9 -> 2/3
    assert m["sensitivity_at_specificity"] == pytest.approx({"0.8": 2 / 3, "0.9": 2 / 3, "0.95": 2 / 3})
    # sensitivity >= 0.8 needs all 3 positives: threshold 0.35 -> negatives 0.4, 0.6 above -> spec 1/3
    assert m["specificity_at_sensitivity"] == pytest.approx({"0.8": 1 / 3, "0.9": 1 / 3, "0.95": 1 / 3})
    # F1 by threshold: 0.9 -> 1/2; 0.8 -> P 1, R 2/3 -> 0.8; 0.6 -> 2/3; 0.35 -> P 3/5, R 1 -> 0.75
    assert m["best_f1"] == pytest.approx(0.8)
    assert m["best_f1_threshold"] == pytest.approx(0.8)
    # binary cross-entropy: mean of -log(1-p) over negatives and -log(p) over positives
    bce = -(math.log(0.9) + math.log(0.6) + math.log(0.4) + math.log(0.35) + math.log(0.8) + math.log(0.9)) / 6
    assert m["loss"] == pytest.approx(bce)
    assert m["auc_ci"] is None and m["threshold"] == 0.5
    # a different threshold moves accuracy: at 0.7 predictions 0,0,0,0,1,1 -> 5/6
    assert binary_metrics(Y, P, n_boot=0, threshold=0.7)["accuracy"] == pytest.approx(5 / 6)


def test_given_loss_is_kept_and_output_is_json():
    m = binary_metrics(Y, P, loss=0.123, n_boot=50)
    assert m["loss"] == 0.123
    json.dumps(m, allow_nan=False)  # plain python, no NaN
    assert isinstance(m["auc_ci"], list) and len(m["auc_ci"]) == 2


def test_pf1_edge_cases():
    assert probabilistic_f1([1, 1, 0], [0.0, 0.0, 0.7]) == 0.0  # ctp = 0
    assert probabilistic_f1([0, 0], [0.2, 0.3]) is None  # no positives
    assert probabilistic_f1([1, 0], [1.0, 0.0]) == pytest.approx(1.0)
    # beta = 2 weighs recall: P = 0.5/0.75, R = 0.5 -> 5PR/(4P+R)
    p_, r_ = 0.5 / 0.75, 0.5
    assert probabilistic_f1([1, 0], [0.5, 0.25], beta=2) == pytest.approx(5 * p_ * r_ / (4 * p_ + r_))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_against_sklearn_random(seed):
    y, p = _sample(500, seed)
    p = np.round(p, 2)  # plenty of ties
    m = binary_metrics(y, p, n_boot=0)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert m["loss"] == pytest.approx(log_loss(y, p))
    # operating points by brute force over every threshold
    thresholds = np.unique(p)
    sens = np.array([(p[y == 1] >= t).mean() for t in thresholds])
    spec = np.array([(p[y == 0] < t).mean() for t in thresholds])
    for t in (0.8, 0.9, 0.95):
        ok = spec >= t
        expect = sens[ok].max() if ok.any() else 0.0
        assert m["sensitivity_at_specificity"][f"{t:g}"] == pytest.approx(expect)
        assert m["specificity_at_sensitivity"][f"{t:g}"] == pytest.approx(spec[sens >= t].max())
    f1 = [2 * ((p >= t) & (y == 1)).sum() / ((p >= t).sum() + y.sum()) for t in thresholds]
    assert m["best_f1"] == pytest.approx(max(f1))


def test_vectorised_bootstrap_matches_sklearn_per_resample():
    """The bincount bootstrap must give exactly sklearn's AUC of each (stratified) resample."""
    y, p = _sample(80, 5)
    p = np.round(p, 1)
    aucs, skipped = bootstrap_aucs(y, p, n_boot=40, seed=9)
    assert skipped == 0 and aucs.shape == (40,)
    rng = np.random.default_rng(9)  # bootstrap_aucs draws all 40 rows in one chunk here
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.concatenate([pos[rng.integers(0, pos.size, size=(40, pos.size))],
                          neg[rng.integers(0, neg.size, size=(40, neg.size))]], axis=1)
    expect = [roc_auc_score(y[i], p[i]) for i in idx]
    np.testing.assert_allclose(aucs, expect, atol=1e-12)


def test_bootstrap_ci_contains_estimate_narrows_and_is_seeded():
    y_small, p_small = _sample(100, 11)
    y_big, p_big = _sample(2000, 12)
    lo_s, hi_s = bootstrap_auc_ci(y_small, p_small, n_boot=300, seed=0)
    lo_b, hi_b = bootstrap_auc_ci(y_big, p_big, n_boot=300, seed=0)
    assert lo_s <= roc_auc_score(y_small, p_small) <= hi_s
    assert lo_b <= roc_auc_score(y_big, p_big) <= hi_b
    assert (hi_b - lo_b) < 0.5 * (hi_s - lo_s)  # width ~ 1/sqrt(n): ~4.5x narrower
    assert bootstrap_auc_ci(y_small, p_small, n_boot=300, seed=0) == (lo_s, hi_s)
    assert bootstrap_auc_ci(y_small, p_small, n_boot=300, seed=1) != (lo_s, hi_s)


def test_bootstrap_is_stratified_so_rare_positives_keep_every_resample():
    y = np.array([1] + [0] * 9)  # unstratified, ~35% of resamples would miss the one positive
    p = np.linspace(0.1, 0.9, 10)
    aucs, skipped = bootstrap_aucs(y, p, n_boot=200, seed=0)
    assert skipped == 0 and aucs.size == 200
    # the positive (p=0.1) is below every negative in every resample: AUC 0 each time
    np.testing.assert_array_equal(aucs, 0.0)
    m = binary_metrics(y, p, n_boot=200)
    assert m["boot_skipped"] == 0 and m["auc_ci"] == [0.0, 0.0]
    assert bootstrap_aucs([0, 0, 0], [0.1, 0.2, 0.3], n_boot=50)[1] == 50


def test_single_class_is_none_with_note():
    m = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9], n_boot=100)
    assert m["auc"] is None and m["auc_ci"] is None and m["best_f1_threshold"] is None
    assert m["sensitivity_at_specificity"]["0.9"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert "one class" in m["notes"][0]
    json.dumps(m, allow_nan=False)


def test_bad_input():
    with pytest.raises(MedvitError, match="empty"):
        binary_metrics([], [])
    with pytest.raises(MedvitError, match="3 labels but 2"):
        binary_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(MedvitError, match="logits"):
        binary_metrics([0, 1], [-2.0, 3.0])
    with pytest.raises(MedvitError, match="NaN"):
        binary_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(MedvitError, match="0 or 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(MedvitError, match="unlabelled"):
        binary_metrics([-1, -1], [0.1, 0.2])


def test_unlabelled_items_are_dropped():
    m = binary_metrics(Y + [-1, -1], P + [0.99, 0.01], n_boot=0)
    assert m["n"] == 6 and m["auc"] == pytest.approx(7 / 9)
    assert "dropped 2 unlabelled" in m["notes"][0]


def _breast_frame():
    return pd.DataFrame({
        "patient_id": [1, 1, 1, 1, 2, 2, 3],
        "laterality": ["L", "L", "R", "R", "L", "L", "R"],
        "label": [1, 1, 0, 0, 0, 0, 1],
        "prob": [0.9, 0.5, 0.2, 0.4, 0.1, 0.7, 0.6],
    })


def test_aggregate_per_breast():
    b = aggregate_per_breast(_breast_frame())
    assert list(b.columns) == ["patient_id", "laterality", "label", "prob_mean", "prob_max", "n_images"]
    rows = {(r.patient_id, r.laterality): r for r in b.itertuples()}
    assert len(rows) == 4
    assert rows[(1, "L")].prob_mean == pytest.approx(0.7) and rows[(1, "L")].prob_max == pytest.approx(0.9)
    assert rows[(1, "R")].prob_mean == pytest.approx(0.3) and rows[(1, "R")].n_images == 2
    assert rows[(2, "L")].prob_max == pytest.approx(0.7) and rows[(2, "L")].label == 0
    assert rows[(3, "R")].label == 1 and rows[(3, "R")].n_images == 1
    # label is the max over a breast's images
    df = _breast_frame()
    df.loc[2, "label"] = 1
    assert aggregate_per_breast(df).set_index(["patient_id", "laterality"]).loc[(1, "R"), "label"] == 1


def test_per_breast_metrics():
    m = per_breast_metrics(_breast_frame(), n_boot=0)
    assert m["n_breasts"] == 4
    # breasts: (1L +, mean .7 max .9), (1R -, .3 .4), (2L -, .4 .7), (3R +, .6 .6)
    # mean: positives .7, .6 beat negatives .3, .4 -> AUC 1; max: .6 loses to .7 -> 3/4
    assert m["mean"]["auc"] == pytest.approx(1.0)
    assert m["max"]["auc"] == pytest.approx(0.75)
    assert m["mean"]["n"] == 4 and m["max"]["n_pos"] == 2
    with pytest.raises(MedvitError, match="laterality"):
        per_breast_metrics(_breast_frame().drop(columns="laterality"))


def test_multiclass_against_sklearn():
    rng = np.random.default_rng(0)
    n, c = 300, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    m = multiclass_metrics(y, probs)
    p64 = probs.astype(np.float64)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p64.argmax(1)))
    assert m["loss"] == pytest.approx(log_loss(y, p64 / p64.sum(1, keepdims=True)), rel=1e-6)
    assert m["auc_macro_ovr"] == pytest.approx(roc_auc_score(y, p64 / p64.sum(1, keepdims=True),
                                                             multi_class="ovr", average="macro"))
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (c, c) and cm.sum() == n
    np.testing.assert_array_equal(cm, confusion_matrix(y, p64.argmax(1)))
    assert m["per_class_accuracy"] == pytest.approx(list(np.diag(cm) / cm.sum(1)))
    json.dumps(m, allow_nan=False)


def test_multiclass_missing_class_and_bad_rows():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = multiclass_metrics([0, 1, 0], probs)
    assert m["auc_macro_ovr"] is None and m["per_class_accuracy"] == [1.0, 1.0, None]
    assert np.array(m["confusion_matrix"]).shape == (3, 3)
    with pytest.raises(MedvitError, match="softmax"):
        multiclass_metrics([0, 1], np.array([[2.0, 1.0], [0.0, 3.0]]))
    with pytest.raises(MedvitError, match="integers in"):
        multiclass_metrics([0, 3], np.full((2, 3), 1 / 3))


def test_classification_metrics_dispatch():
    y, p = _sample(200, 3)
    one = classification_metrics(y, p, n_boot=0)
    two = classification_metrics(y, np.stack([1 - p, p], 1), n_boot=0)
    col = classification_metrics(y, p[:, None], n_boot=0)
    assert one["auc"] == two["auc"] == col["auc"] == pytest.approx(roc_auc_score(y, p))
    assert one["auc_ci"] is None  # the trainer's fast path
    probs = np.full((6, 3), 1 / 3)
    multi = classification_metrics([0, 1, 2, 0, 1, 2], probs, loss=0.5, n_boot=0)  # binary kwargs ignored
    assert multi["num_classes"] == 3 and multi["loss"] == 0.5 and "auc_macro_ovr" in multi
    with pytest.raises(MedvitError, match="shape"):
        classification_metrics([0, 1], np.zeros((2, 2, 2)))
