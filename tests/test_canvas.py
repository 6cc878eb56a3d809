"""Issue 14 §2: a canvas shaped like the breast. `ingest --size 512x256` runs through the demo's steps
(ingest, train a CNN and a ViT, evaluate, explain, predict, compare, analyze) with the token grid and
every map read from the model, never from a square assumption."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medvit.canvas import compact, parse_size, size_text
from medvit.cli import main

CANVAS = "512x256"
INPUT = "64x32"  # the model input: the canvas / 8, same aspect


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("canvas")
    assert main(["synth", str(root / "rsna"), "--patients", "8", "--seed", "1", "--cancer-rate", "0.5",
                 "--workers", "1"]) == 0
    assert main(["ingest", str(root / "rsna"), "--out", str(root / "data"), "--size", CANVAS, "--test-share", "0.25",
                 "--workers", "1", "--folds", "2", "--no-progress"]) == 0
    runs = {}
    for backbone in ("cnn_test", "vit_test"):
        runs[backbone] = root / backbone
        assert main(["train", "--backbone", backbone, "--data", str(root / "data"), "--image-size", INPUT,
                     "--epochs", "2", "--out", str(runs[backbone]), "data.workers=0", "data.batch_size=8",
                     "train.device=cpu", "optim.lr=3e-3"]) == 0
    return {"root": root, "data": root / "data", "runs": runs}


def test_parse_and_text():
    assert parse_size(512) == parse_size("512") == (512, 512)
    assert parse_size("1024x512") == parse_size([1024, 512]) == (1024, 512)
    assert size_text(256) == "256x256" and compact("64x32") == (64, 32) and compact("64x64") == 64
    for bad in ("0x4", "512x", "x512", "abc", 3.5, True, [1, 2, 3], 70000):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_ingest_writes_the_canvas_everywhere(flow):
    data = flow["data"]
    info = json.loads((data / "ingest.json").read_text())
    assert info["canvas"] == CANVAS
    frame = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 32 and set(ok["canvas"]) == {CANVAS}
    for cache in ok["cache"]:
        image = np.load(data / cache)
        assert image.shape == (512, 256)
        assert image[:, 0].max() > 0  # chest wall flush left: the first column holds tissue


def test_checkpoints_and_results_record_both_canvases(flow):
    import torch

    for run in flow["runs"].values():
        ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True, map_location="cpu")
        assert ck["canvas"] == CANVAS and compact(ck["model_spec"]["kwargs"]["img_size"]) == (64, 32)
        assert ck["config"]["data"]["image_size"] == INPUT
        assert main(["evaluate", str(run), "--n-boot", "50", "--device", "cpu"]) == 0
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert (metrics["canvas"], metrics["image_size"], metrics["split"]) == (CANVAS, INPUT, "test")


def test_vit_token_grid_comes_from_the_canvas(flow):
    from medvit.runs import load_run

    vit = load_run(flow["runs"]["vit_test"], device="cpu").model
    gh, gw = vit.patch_embed.grid_size
    ph, pw = vit.patch_embed.patch_size
    assert (gh * ph, gw * pw) == (64, 32) and gh == 2 * gw


def test_explain_overlays_and_pointing_on_the_canvas(flow, tmp_path):
    frame = pd.read_csv(flow["data"] / "manifest.csv", dtype=str, keep_default_na=False)
    image_id = frame[(frame["status"] == "ok") & (frame["label"] == "1")]["image_id"].iloc[0]
    out = tmp_path / "explain"
    runs = flow["runs"]
    assert main(["explain", str(runs["vit_test"]), image_id, "--compare", str(runs["cnn_test"]), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert np.load(out / f"{image_id}_rollout.npy").shape == (64, 32)
    assert (out / f"{image_id}_panel.png").is_file()
    for backbone, method in (("vit_test", "attention"), ("cnn_test", "gradcam")):
        assert main(["explain", str(runs[backbone]), image_id, "--method", method, "--out", str(out),
                     "--device", "cpu"]) == 0
        assert np.load(out / f"{image_id}_{method}.npy").shape == (64, 32)
    heads = np.load(out / f"{image_id}_attention_heads.npy")
    assert heads.shape[-2:] == (4, 2)  # (layers, heads, gh, gw): the grid of a 64x32 input at patch 16
    assert main(["explain", str(runs["cnn_test"]), "--pointing", str(flow["root"] / "rsna"), "--out", str(out),
                 "--device", "cpu"]) == 0
    pointing = json.loads((out / "pointing_gradcam.json").read_text())
    assert pointing["n"] > 0 and 0 <= pointing["hits"] <= pointing["n"]


def test_predict_preprocesses_to_the_run_canvas(flow, tmp_path):
    from medvit.predict import predict_folder

    out = tmp_path / "preds.csv"
    summary = predict_folder(flow["root"] / "rsna" / "train_images", flow["runs"]["cnn_test"], out,
                             device="cpu", progress=False)
    assert (summary["canvas"], summary["image_size"]) == (CANVAS, INPUT)
    pred = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert (pred["status"] == "ok").all() and len(pred) == 32
    # the same probability the cached (ingested) image gives: no train/serve skew on a rectangle
    evaluate_preds = pd.read_csv(flow["runs"]["cnn_test"] / "eval" / "predictions.csv", dtype={"image_id": str})
    merged = evaluate_preds.merge(pred, on="image_id", suffixes=("_eval", "_pred"))
    assert len(merged) > 0
    np.testing.assert_allclose(merged["prob_eval"], merged["prob_pred"].astype(float), atol=1e-4)


def test_compare_and_analyze_on_the_canvas(flow, tmp_path):
    runs = flow["runs"]
    report = tmp_path / "report"
    assert main(["compare", str(runs["cnn_test"]), str(runs["vit_test"]), "--out", str(report), "--n-boot", "50",
                 "--gallery", "2", "--device", "cpu"]) == 0
    result = json.loads((report / "compare.json").read_text())
    assert {(r["canvas"], r["image_size"]) for r in result["runs"]} == {(CANVAS, INPUT)}
    assert result["gallery"] and all((report / g["figure"]).is_file() for g in result["gallery"])
    for kind in ("attention", "distance", "sparsity"):
        out = tmp_path / kind
        assert main(["analyze", str(runs["vit_test"]), kind, "--out", str(out), "--device", "cpu"]) == 0
        assert (out / "result.json").is_file()
    distance = json.loads((tmp_path / "distance" / "result.json").read_text())
    assert distance["grid"] == [4, 2] and distance["image_pixels"] == [64.0, 32.0]
    assert distance["data"]["image_size"] == INPUT


def test_a_square_input_on_a_rectangular_canvas_is_named(flow, tmp_path):
    run = tmp_path / "stretched"
    assert main(["train", "--backbone", "cnn_test", "--data", str(flow["data"]), "--image-size", "32",
                 "--max-steps", "1", "--out", str(run), "data.workers=0", "train.device=cpu"]) == 0
    log = (run / "train.log").read_text()
    assert "stretched" in log and "--image-size 32x16" in log


def test_no_square_root_of_a_token_count_is_left():
    """The token grid always comes from the model: no `** 0.5` / sqrt over token counts."""
    root = Path(__file__).resolve().parents[1] / "medvit"
    found = subprocess.run(["grep", "-rnE", r"(\*\* ?0\.5|isqrt|math\.sqrt\(.*(token|patch|len|shape))",
                            str(root / "explain"), str(root / "analysis"), str(root / "models"),
                            str(root / "compare" / "maps.py")], capture_output=True, text=True).stdout
    assert found == "", found


def test_vit_weights_move_between_rectangular_canvases(tmp_path):
    """A medvit checkpoint records its patch, so its H x W token grid is known: positions are resampled
    from 4x2 to 8x4, not from a square guess. A plain state dict into an H x W ViT is refused."""
    import torch

    from medvit._compat import import_timm
    from medvit.errors import ConfigError
    from medvit.models import create_backbone
    from medvit.train.checkpoint import save_checkpoint

    src = create_backbone("vit_test", img_size=(64, 32), patch_size=16)  # grid 4 x 2
    spec = {"name": "vit_test", "kwargs": {"num_classes": 1, "in_chans": 1, "img_size": (64, 32), "patch_size": 16}}
    path = save_checkpoint({"format": "medvit-checkpoint-1", "model_spec": spec, "model": src.state_dict(),
                            "input_norm": None}, tmp_path / "a.pt")
    dst = create_backbone("vit_test", img_size=(128, 64), patch_size=16, weights=str(path))  # grid 8 x 4
    import_timm()
    from timm.layers import resample_abs_pos_embed

    expect = resample_abs_pos_embed(src.pos_embed.detach(), new_size=[8, 4], old_size=[4, 2], num_prefix_tokens=1)
    assert torch.allclose(dst.pos_embed.detach(), expect)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="plain.pt"):
        create_backbone("vit_test", img_size=(128, 64), patch_size=16, weights=str(tmp_path / "plain.pt"))
