"""`medvit evaluate`: metrics.json, predictions.csv and plots from a tiny trained run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvit.cli import main
from medvit.config import load_config
from medvit.data.benchmarks import write_cifar10
from medvit.evaluate import evaluate
from medvit.metrics import binary_metrics, multiclass_metrics, per_breast_metrics
from medvit.train import fit

from fake_cache import cifar_bars, make_manifest

SIZE = 32



@pytest.fixture(scope="module")
def mammo_run(tmp_path_factory) -> Path:
    data = make_manifest(tmp_path_factory.mktemp("mammo"), SIZE)
    run = tmp_path_factory.mktemp("runs") / "cnn"
    cfg = load_config(None, [
        f"data.dir={data}", f"data.image_size={SIZE}", "data.batch_size=8", "data.workers=0",
        "model.backbone=cnn_test", "optim.lr=3e-3", "train.epochs=3", "schedule.warmup_epochs=0.5",
        "train.device=cpu"])
    fit(cfg, run)
    return run


@pytest.fixture(scope="module")
def mammo_eval(mammo_run) -> dict:
    return evaluate(mammo_run, device="cpu")


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_binary_metrics_json_keys_and_ranges(mammo_run, mammo_eval):
    out = mammo_run / "eval"
    m = json.loads((out / "metrics.json").read_text())
    for key in ("auc", "auc_ci", "accuracy", "loss", "pf1", "sensitivity_at_specificity",
                "specificity_at_sensitivity", "best_f1", "per_breast", "at_checkpoint_threshold"):
        assert key in m, key
    assert m["n"] == 16 and m["n_pos"] == 4  # fold 0: patients 0,3,6,9; the even ones have a positive L breast
    assert 0 <= m["auc"] <= 1 and 0 <= m["accuracy"] <= 1 and m["loss"] > 0 and 0 <= m["pf1"] <= 1
    low, high = m["auc_ci"]
    assert 0 <= low <= m["auc"] <= high <= 1
    assert m["n_boot"] == 1000
    assert set(m["sensitivity_at_specificity"]) == {"0.8", "0.9", "0.95"}
    assert all(0 <= v <= 1 for v in m["sensitivity_at_specificity"].values())
    assert m["data"]["fold"] == 0 and m["binary"] is True
    t = m["at_checkpoint_threshold"]
    assert t["threshold"] == pytest.approx(m["checkpoint_threshold"])
    assert t["tp"] + t["fp"] + t["tn"] + t["fn"] == 16
    pb = m["per_breast"]
    assert pb["n_breasts"] == 8 and pb["mean"]["n"] == 8 and pb["max"]["n_pos"] == 2
    assert mammo_eval["auc"] == m["auc"]


def test_metrics_equal_metrics_module_on_predictions_csv(mammo_run):
    out = mammo_run / "eval"
    m = json.loads((out / "metrics.json").read_text())
    pred = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert list(pred.columns) == ["image_id", "patient_id", "laterality", "view", "label", "prob"]
    assert len(pred) == 16 and set(pred["laterality"]) == {"L", "R"}
    again = binary_metrics(pred["label"], pred["prob"], loss=m["loss"], n_boot=1000, seed=0)
    for key, value in again.items():
        if key != "notes":  # evaluate adds the data's notes (validation fold: optimistic)
            assert m[key] == value, key
    assert m["split"] == "validation (optimistic)" and any("optimistic" in n for n in m["notes"])
    breast = per_breast_metrics(pred, n_boot=1000, seed=0)
    assert m["per_breast"]["mean"]["auc"] == breast["mean"]["auc"]
    assert m["per_breast"]["max"]["auc_ci"] == breast["max"]["auc_ci"]
    # the checkpoint's threshold counts
    t = m["at_checkpoint_threshold"]
    hit = pred["prob"] >= t["threshold"]
    assert t["tp"] == int((hit & (pred["label"] == 1)).sum()) and t["fp"] == int((hit & (pred["label"] == 0)).sum())


def test_plots_written(mammo_run):
    for name in ("roc.png", "pr.png", "confusion.png", "training_curves.png"):
        assert_png(mammo_run / "eval" / name)
    assert not list((mammo_run / "eval").glob(".*tmp"))  # no temp files left behind


def test_other_fold_and_data_dir(mammo_run, tmp_path):
    m = evaluate(mammo_run, fold=1, n_boot=50, out=tmp_path / "f1", device="cpu")
    assert m["data"]["fold"] == 1 and m["n"] == 16
    assert any("fold 1 was part of this run's training data" in n for n in m["notes"])
    data_dir = load_config(mammo_run / "config.yaml").data.dir
    m = evaluate(mammo_run, data_dir=data_dir, n_boot=50, out=tmp_path / "all", device="cpu")
    assert m["n"] == 48 and m["per_breast"]["n_breasts"] == 24
    assert len(pd.read_csv(tmp_path / "all" / "predictions.csv")) == 48
    assert any("this run's own data folder" in n for n in m["notes"])  # training images included


def test_cli_in_process(mammo_run, tmp_path, capsys):
    rc = main(["evaluate", str(mammo_run), "--checkpoint", "last", "--n-boot", "100", "--out", str(tmp_path),
               "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "AUC" in text and "breast (mean" in text
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["checkpoint"].endswith("last.pt") and m["n_boot"] == 100


def test_cli_errors_name_the_problem(mammo_run, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["evaluate", str(mammo_run), "--fold", "7", "--out", str(tmp_path)]) == 2
    assert "fold 7" in capsys.readouterr().err


def test_multiclass_run(tmp_path):
    rng = np.random.default_rng(0)

    (xtr, ytr), (xte, yte) = cifar_bars(rng, 60), cifar_bars(rng, 40)
    write_cifar10(tmp_path / "cifar", xtr, ytr, xte, yte)
    cfg = load_config(None, [
        "data.kind=cifar10", f"data.dir={tmp_path / 'cifar'}", "data.image_size=16", "data.batch_size=20",
        "data.workers=0", "model.backbone=vit_test", "model.patch_size=4", "train.epochs=1",
        "train.device=cpu"])
    run = tmp_path / "run"
    fit(cfg, run)
    m = evaluate(run, device="cpu")
    assert m["binary"] is False and m["n"] == 40 and m["num_classes"] == 10
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 40 and (cm.sum(axis=1) == 4).all()
    pred = pd.read_csv(run / "eval" / "predictions.csv")
    probs = pred[[f"prob_{k}" for k in range(10)]].to_numpy()
    again = multiclass_metrics(pred["label"], probs, loss=m["loss"])
    assert again["accuracy"] == m["accuracy"] and again["confusion_matrix"] == m["confusion_matrix"]
    assert (pred["pred"] == probs.argmax(axis=1)).all()
    assert_png(run / "eval" / "confusion.png")
    assert_png(run / "eval" / "training_curves.png")
    assert not (run / "eval" / "roc.png").exists()


def test_a_test_split_drawn_after_training_is_refused(tmp_path):
    """Re-ingesting with --test-share after training would call the run's own training images
    "test": evaluate refuses, naming the manifest, and says how to go on."""
    from medvit.errors import MedvitError

    data = make_manifest(tmp_path / "data", SIZE, n_patients=6)
    cfg = load_config(None, [f"data.dir={data}", f"data.image_size={SIZE}", "data.batch_size=8", "data.workers=0",
                             "model.backbone=cnn_test", "train.epochs=1", "train.device=cpu"])
    fit(cfg, tmp_path / "run")
    frame = pd.read_csv(data / "manifest.csv")
    frame["split"] = np.where(frame["patient_id"].isin(["p0", "p1"]), "test", "train")  # trained on, now "test"
    frame.to_csv(data / "manifest.csv", index=False)
    with pytest.raises(MedvitError, match="re-ingested since the run was trained"):
        evaluate(tmp_path / "run", device="cpu")
    m = evaluate(tmp_path / "run", device="cpu", split="validation")
    assert m["split"] == "validation (optimistic)"
