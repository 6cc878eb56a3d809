"""`medvit compare` and the honest-evaluation path it stands on (`ingest --test-share`).

Statistics against hand-worked numbers and scikit-learn; one synth -> ingest --test-share -> train
CNN + ViT -> compare flow (test fold never trained on, PHI scan, the page in headless Chromium);
refusal of mismatched runs; the validation fallback with three runs (Holm); benchmark runs.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvit.cli import main
from medvit.compare.calibration import brier, calibration_metrics, reliability
from medvit.compare.stats import bootstrap_auc_diff, delong_covariance, delong_test, holm, mcnemar, wilson_ci
from medvit.config import load_config
from medvit.errors import MedvitError
from medvit.manifest import assign_folds, assign_test_split
from medvit.train import fit

from fake_cache import cifar_bars, make_manifest

PHI_MARKER = b"MEDVITPHI"  # every fake identifying field `medvit synth` writes contains it


# ----------------------------------------------------------------------------- statistics

def test_delong_matches_hand_worked_example():
    # positives then negatives. A: X = .9 .6 .4, Y = .5 .3 -> V10 = 1, 1, 1/2; V01 = 2/3, 1; AUC 5/6
    # B: X = .8 .2 .5, Y = .6 .1 -> V10 = 1, 1/2, 1/2; V01 = 1/3, 1; AUC 2/3
    # S10 = [[1/12, 1/24], [1/24, 1/12]], S01 = [[1/18, 1/9], [1/9, 2/9]]; S = S10/3 + S01/2
    # var(A - B) = 1/18 + 5/36 - 2 * 5/72 = 1/18; z = (1/6) / sqrt(1/18) = 1/sqrt(2)
    y = np.array([1, 1, 1, 0, 0])
    a = np.array([.9, .6, .4, .5, .3])
    b = np.array([.8, .2, .5, .6, .1])
    aucs, cov = delong_covariance(y, np.stack([a, b]))
    assert aucs == pytest.approx([5 / 6, 2 / 3])
    assert cov == pytest.approx(np.array([[1 / 18, 5 / 72], [5 / 72, 5 / 36]]))
    d = delong_test(y, a, b)
    assert d["diff"] == pytest.approx(1 / 6) and d["se"] == pytest.approx(math.sqrt(1 / 18))
    assert d["z"] == pytest.approx(1 / math.sqrt(2))
    assert d["p"] == pytest.approx(math.erfc(0.5))  # 2 * (1 - Phi(1/sqrt 2)) = erfc(1/2) = 0.4795
    assert d["ci"] == pytest.approx([1 / 6 - 1.959964 * math.sqrt(1 / 18), 1 / 6 + 1.959964 * math.sqrt(1 / 18)])


def test_delong_agrees_with_paired_bootstrap_on_a_known_auc_gap():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 300)
    # scores: label + N(0, 1) vs label + N(0, 2): AUCs Phi(1/sqrt2) = .760 and Phi(1/(2 sqrt2)) = .638
    a = 1 / (1 + np.exp(-(y + rng.normal(0, 1, y.size))))
    b = 1 / (1 + np.exp(-(y + rng.normal(0, 2, y.size))))
    gap = 0.7602 - 0.6382
    d = delong_test(y, a, b)
    boot = bootstrap_auc_diff(y, a, b, n_boot=2000, seed=0)
    assert abs(d["diff"] - gap) < 0.05 and d["ci"][0] < gap < d["ci"][1]
    assert d["p"] < 0.01 and boot["p"] < 0.01
    assert boot["diff_ci"][0] == pytest.approx(d["ci"][0], abs=0.015)
    assert boot["diff_ci"][1] == pytest.approx(d["ci"][1], abs=0.015)
    # no gap: same signal, independent noise -> not significant, CI covers 0
    c = 1 / (1 + np.exp(-(y + rng.normal(0, 1, y.size))))
    d0 = delong_test(y, a, c)
    assert d0["ci"][0] < 0 < d0["ci"][1] and d0["p"] > 0.05


def test_identical_scorers_give_difference_zero_and_p_one():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    d = delong_test(y, p, p.copy())
    boot = bootstrap_auc_diff(y, p, p.copy(), n_boot=300)
    assert d["diff"] == 0 and d["p"] == 1.0
    assert boot["diff_ci"] == [0.0, 0.0] and boot["p"] == 1.0


def test_mcnemar_against_hand_counts():
    # 7 pairs a right / b wrong, 2 the other way, 5 both right, 1 both wrong
    a = [1] * 7 + [0] * 2 + [1] * 5 + [0]
    b = [0] * 7 + [1] * 2 + [1] * 5 + [0]
    m = mcnemar(a, b)
    assert (m["a_right_b_wrong"], m["a_wrong_b_right"], m["both_right"], m["both_wrong"]) == (7, 2, 5, 1)
    assert m["method"].startswith("exact binomial")
    assert m["p"] == pytest.approx(2 * (1 + 9 + 36) / 2 ** 9)  # 2 P(X <= 2), X ~ Bin(9, 1/2)
    # 30 vs 12 discordant pairs: chi-square with continuity correction, (18 - 1)^2 / 42
    a = [1] * 30 + [0] * 12
    b = [0] * 30 + [1] * 12
    m = mcnemar(a, b)
    stat = 17 ** 2 / 42
    assert m["method"] == "chi-square with continuity correction" and m["statistic"] == pytest.approx(stat)
    assert m["p"] == pytest.approx(math.erfc(math.sqrt(stat / 2)))  # chi2(1) survival
    assert mcnemar([1, 0], [1, 0])["p"] == 1.0
    balanced = mcnemar([1] * 15 + [0] * 15, [0] * 15 + [1] * 15)  # b = c: no evidence either way
    assert balanced["statistic"] == 0.0 and balanced["p"] == 1.0


def test_delong_leaves_unlabelled_items_out():
    rng = np.random.default_rng(3)
    y = np.array([0, 1] * 20)
    p = np.stack([rng.random(40) + 0.3 * y, rng.random(40)])
    with_unlabelled = delong_covariance(np.r_[y, [-1, -1]], np.c_[p, [[0.9, 0.1], [0.2, 0.8]]])
    np.testing.assert_allclose(with_unlabelled[0], delong_covariance(y, p)[0])
    np.testing.assert_allclose(with_unlabelled[1], delong_covariance(y, p)[1])


def test_holm_and_wilson_against_hand_values():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    low, high = wilson_ci(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_calibration_against_scikit_learn():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(3)
    p = rng.random(500) ** 2
    y = (rng.random(500) < p).astype(int)
    p[:5] = [0.1, 0.2, 0.0, 1.0, 0.5]  # bin edges land where scikit-learn puts them
    rel = reliability(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10)
    assert [v for v in rel["fraction_positive"] if v is not None] == pytest.approx(frac)
    assert [v for v in rel["mean_predicted"] if v is not None] == pytest.approx(mean)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p))
    # ECE by hand on four images: bins [0, .1) and [.9, 1]: |0 - .05| * 2/4 + |.5 - .95| * 2/4
    assert reliability([0, 0, 1, 0], [0.05, 0.05, 0.95, 0.95])["ece"] == pytest.approx(0.25)
    perfect = calibration_metrics([0, 1], [0.0, 1.0])
    assert perfect["brier"] == 0 and perfect["ece"] == 0


def test_test_split_is_patient_grouped_stratified_and_seeded():
    rows = [{"status": "ok", "label": str(int(p % 3 == 0)), "patient_id": f"p{p}", "fold": "-1", "split": ""}
            for p in range(40) for _ in range(4)]
    rows += [{"status": "error", "label": "1", "patient_id": "bad", "fold": "-1", "split": ""},
             {"status": "ok", "label": "", "patient_id": "nolabel", "fold": "-1", "split": ""}]
    info = assign_test_split(rows, 0.25, 0, print)
    assign_folds(rows, 3, 0, print)
    test = [r for r in rows if r["split"] == "test"]
    assert info["test_patients"] == 10 and info["test_images"] == 40 and len(test) == 40
    assert {r["split"] for r in rows[-2:]} == {""}
    assert all(r["fold"] == "-1" for r in test)  # no fold: nothing trains or validates on them
    assert {r["fold"] for r in rows if r["split"] == "train"} == {"0", "1", "2"}
    split_of = {}
    for r in rows[:-2]:
        split_of.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())  # patient-grouped
    assert sum(r["label"] == "1" for r in test) / len(test) == pytest.approx(14 / 40, abs=0.06)  # stratified
    again = copy.deepcopy(rows)
    assign_test_split(again, 0.25, 0, print)
    assert [r["split"] for r in again] == [r["split"] for r in rows]
    assign_test_split(again, 0.25, 1, print)
    assert [r["split"] for r in again] != [r["split"] for r in rows]


# ----------------------------------------------------------------------------- the honest flow

SIZE = 64


def _train(data: Path, run: Path, backbone: str, *extra: str) -> Path:
    cfg = load_config(None, [
        f"data.dir={data}", "data.image_size=32", "data.batch_size=8", "data.workers=0",
        f"model.backbone={backbone}", "optim.lr=3e-3", "train.epochs=2", "schedule.warmup_epochs=0.5",
        "train.device=cpu", *extra])
    fit(cfg, run)
    return run


@pytest.fixture(scope="module")
def synth_flow(tmp_path_factory):
    """synth (12 patients, PHI markers in the headers) -> ingest --test-share 0.25 -> CNN + ViT -> compare."""
    root = tmp_path_factory.mktemp("flow")
    assert main(["synth", str(root / "rsna"), "--patients", "12", "--seed", "0", "--cancer-rate", "0.5",
                 "--workers", "1"]) == 0
    assert main(["ingest", str(root / "rsna"), "--out", str(root / "data"), "--size", str(SIZE),
                 "--workers", "1", "--folds", "3", "--test-share", "0.25", "--no-progress"]) == 0
    runs = [_train(root / "data", root / "runs" / "cnn", "cnn_test"),
            _train(root / "data", root / "runs" / "vit", "vit_test")]
    report = root / "report"
    assert main(["compare", *map(str, runs), "--out", str(report), "--n-boot", "200", "--device", "cpu",
                 "--gallery", "3"]) == 0
    return root, runs, report


def test_test_split_never_reaches_training_or_selection(synth_flow):
    root, runs, _ = synth_flow
    manifest = pd.read_csv(root / "data" / "manifest.csv", dtype=str)
    test_ids = set(manifest.loc[manifest["split"] == "test", "image_id"])
    train_ids = set(manifest.loc[manifest["split"] == "train", "image_id"])
    assert len(test_ids) == 12 and len(train_ids) == 36  # 3 of 12 patients held out, 4 images each
    assert set(manifest.loc[manifest["split"] == "test", "fold"]) == {"-1"}
    for run in runs:
        logged = pd.read_csv(run / "data_ids.csv", dtype=str)
        assert not test_ids & set(logged["image_id"])  # neither fitted nor used to pick best.pt / threshold
        assert set(logged["image_id"]) == train_ids
        val = set(logged.loc[logged["role"] == "val", "image_id"])
        assert val == set(manifest.loc[manifest["fold"] == "0", "image_id"])
    # evaluate scores the test split by default, at the threshold fixed on validation
    from medvit.evaluate import evaluate
    from medvit.train.checkpoint import load_checkpoint

    m = evaluate(runs[0], device="cpu", n_boot=0, out=root / "eval")
    assert m["split"] == "test" and m["n"] == 12 and not any("optimistic" in n for n in m["notes"])
    threshold = load_checkpoint(runs[0] / "checkpoints" / "best.pt")["threshold"]
    assert m["at_checkpoint_threshold"]["threshold"] == pytest.approx(threshold)
    v = evaluate(runs[0], device="cpu", n_boot=0, split="validation", out=root / "eval_val")
    assert v["split"] == "validation (optimistic)" and v["n"] == int((manifest["fold"] == "0").sum())


def test_compare_json_has_every_required_number(synth_flow):
    root, runs, report = synth_flow
    res = json.loads((report / "compare.json").read_text())
    assert res["split"] == "test" and res["n"] == 12
    assert [r["name"] for r in res["runs"]] == ["cnn", "vit"]
    for r in res["runs"]:
        for key in ("auc", "auc_ci", "brier", "ece", "pf1", "sensitivity_at_specificity",
                    "specificity_at_sensitivity", "per_breast", "at_threshold", "cost"):
            assert key in r, key
        assert 0 <= r["brier"] <= 1 and 0 <= r["ece"] <= 1
        assert r["cost"]["parameters"] > 0 and r["cost"]["images_per_s"] > 0 and r["cost"]["training_seconds"] > 0
        assert set(r["per_breast"]) == {"n_breasts", "mean", "max"}
    (pair,) = res["pairs"]
    for key in ("auc_diff", "auc_diff_ci", "delong_p", "bootstrap_p", "bootstrap_diff_ci", "sensitivity",
                "specificity"):
        assert key in pair, key
    assert pair["auc_diff"] == pytest.approx(res["runs"][0]["auc"] - res["runs"][1]["auc"])
    assert pair["sensitivity"]["mcnemar"]["method"]
    assert res["correction"].startswith("none")
    significant = pair["delong_p"] < 0.05
    assert "test split" in res["summary"]
    assert ("not statistically significant" in res["summary"]) == (not significant)
    # subgroups from the labels CSV and the manifest; few-positive groups are marked, not dropped
    columns = {g["column"] for g in res["subgroups"]}
    assert {"view", "laterality"} <= columns and columns & {"site_id", "machine_id", "age_band"}
    assert all(g["few_positives"] for g in res["subgroups"])  # 12 test images: every group is small
    # where they disagree: images where one run is right and another wrong come first; maps drawn as PNG
    assert len(res["gallery"]) == 3
    splits = [g["split"] for g in res["gallery"]]
    assert splits == sorted(splits, reverse=True)
    for g in res["gallery"]:
        assert (len(set(g["right"].values())) == 2) == g["split"]
        assert (report / g["figure"]).is_file() and g["figure"] in res["figures"]
    assert res["pointing"] is not None and set(res["pointing"]["runs"]) == {"cnn", "vit"}
    assert {p["method"] for p in res["pointing"]["runs"].values()} == {"gradcam", "rollout"}
    for name in res["figures"]:
        with Image.open(report / name) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_report_carries_no_phi(synth_flow):
    root, _, report = synth_flow
    dicoms = list((root / "rsna" / "train_images").rglob("*.dcm"))
    # the marker is there to be leaked (not in rsna-style files)
    assert any(PHI_MARKER in p.read_bytes() for p in dicoms)
    files = [p for p in report.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for p in files:
        assert PHI_MARKER not in p.read_bytes(), p
        assert PHI_MARKER.decode().lower() not in p.read_bytes().decode("latin-1").lower(), p


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error')); }, true);
(function () { var orig = console.error;
  console.error = function () { window.__errors.push(Array.from(arguments).join(' ')); orig.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var imgs = Array.from(document.images).map(function (i) { return [i.getAttribute('src'), i.complete, i.naturalWidth]; });
  var pre = document.createElement('pre'); pre.id = 'medvit-probe';
  pre.textContent = JSON.stringify({images: imgs, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""  # noqa: E501


def _browse(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--allow-file-access-from-files", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _probe(browser: str, report: Path, html: str) -> dict:
    """Load `html` (placed in the report folder) with a script that records every image's
    naturalWidth, window errors (failed resources included) and console.error calls."""
    import re

    page = report / ".probe.html"
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        done = _browse(browser, page, "--virtual-time-budget=10000", "--dump-dom")
    finally:
        page.unlink()
    found = re.search(r'<pre id="medvit-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe output; stderr: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_page_in_headless_chromium(synth_flow, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed: CI must run the report's browser test "
                        "(`make test` installs Debian's chromium when run as root)")
        pytest.skip("chromium not installed (apt-get install chromium); CI runs this test")
    _, _, report = synth_flow
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html and "https://" not in html  # offline, no scripts
    shot = tmp_path / "page.png"
    done = _browse(browser, report / "index.html", "--window-size=1280,4000", f"--screenshot={shot}")
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 4000) and np.unique(np.asarray(im.convert("L"))).size > 20  # not a blank page
    result = _probe(browser, report, html)
    srcs = [src for src, _, _ in result["images"]]
    assert {"roc.png", "reliability.png"} <= set(srcs) and any(s.startswith("gallery/") for s in srcs)
    assert all(complete and width > 0 for _, complete, width in result["images"]), result["images"]
    assert result["errors"] == []
    # the probe does catch a broken image and a console error
    broken = _probe(browser, report, html.replace('src="roc.png"', 'src="missing.png"')
                    .replace("</body>", "<script>console.error('boom')</script></body>"))
    assert ["missing.png", True, 0] in broken["images"] and "boom" in broken["errors"]


# ----------------------------------------------------------------------------- refusal, fallback, benchmark

def test_refuses_runs_from_other_folds_or_ingests(synth_flow, capsys):
    root, runs, _ = synth_flow
    other = _train(root / "data", root / "runs" / "cnn_fold1", "cnn_test", "data.fold=1", "train.epochs=1")
    assert main(["compare", str(runs[0]), str(other), "--out", str(root / "refused"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "different data" in err and "fold: cnn has 0, cnn_fold1 has 1" in err
    assert not (root / "refused" / "index.html").exists()

    from medvit.compare.runs import check_compatible, load_runs

    a, b = load_runs([str(runs[0]), str(runs[1])])
    b.ckpt = copy.deepcopy(b.ckpt)
    b.ckpt["data_identity"]["ingest"]["seed"] = 7
    b.ckpt["data_identity"]["dir"] = "/elsewhere"
    with pytest.raises(MedvitError, match=r"ingest\.seed: cnn has 0, vit has 7.*|dir: .*ingest\.seed"):
        check_compatible([a, b])
    b.ckpt["data_identity"]["ingest"]["seed"] = 0  # the same split in a moved folder is the same data
    check_compatible([a, b])


def test_refuses_when_the_data_was_reingested_since_training(synth_flow, tmp_path):
    root, runs, _ = synth_flow
    from medvit.compare.runs import check_compatible, load_runs

    loaded = load_runs([str(runs[0]), str(runs[1])])
    manifest = root / "data" / "manifest.csv"
    saved = manifest.read_text()
    try:
        m = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        m.loc[m["split"] == "test", "split"] = "train"  # as if re-ingested without a test split
        m.to_csv(manifest, index=False)
        with pytest.raises(MedvitError, match="changed since these runs were trained"):
            check_compatible(loaded)
    finally:
        manifest.write_text(saved)


def test_validation_fallback_with_three_runs_is_labelled_optimistic_and_holm_corrected(tmp_path):
    data = make_manifest(tmp_path / "data", 32, n_patients=12)  # an old cache: no split column
    runs = [_train(data, tmp_path / n, bb, "train.epochs=1", f"train.seed={s}")
            for n, bb, s in (("a", "cnn_test", 0), ("b", "cnn_test", 1), ("c", "vit_test", 0))]
    from medvit.compare.report import compare

    res = compare([str(r) for r in runs], tmp_path / "report", n_boot=50, device="cpu", gallery=1, log=lambda m: None)
    assert res["split"] == "validation (optimistic)" and "optimistic" in res["summary"]
    assert len(res["pairs"]) == 3 and res["correction"].startswith("Holm")
    for pair in res["pairs"]:
        assert pair["delong_p_holm"] >= pair["delong_p"] and "p_holm" in pair["sensitivity"]["mcnemar"]
    html = (tmp_path / "report" / "index.html").read_text()
    assert "validation (optimistic)" in html and "--test-share" in html
    assert res["subgroups"] and res["pointing"] is None  # view/laterality from the manifest; no masks


def test_benchmark_runs_compare_on_the_test_split(tmp_path):
    from medvit.data.benchmarks import write_cifar10

    rng = np.random.default_rng(0)

    (xtr, ytr), (xte, yte) = cifar_bars(rng, 60), cifar_bars(rng, 40)
    write_cifar10(tmp_path / "cifar", xtr, ytr, xte, yte)
    runs = []
    for name, bb in (("cnn", "cnn_test"), ("vit", "vit_test")):
        cfg = load_config(None, [
            "data.kind=cifar10", f"data.dir={tmp_path / 'cifar'}", "data.image_size=16", "data.batch_size=20",
            "data.workers=0", f"model.backbone={bb}", "train.epochs=1", "train.device=cpu"]
            + (["model.patch_size=4"] if bb == "vit_test" else []))
        fit(cfg, tmp_path / name)
        runs.append(str(tmp_path / name))
    assert main(["compare", *runs, "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert res["split"] == "test" and res["n"] == 40
    for r in res["runs"]:
        low, high = r["accuracy_ci"]
        assert low <= r["accuracy"] <= high and len(r["per_class_accuracy"]) == 10
        assert np.array(r["confusion_matrix"]).sum() == 40
        assert (tmp_path / "report" / r["confusion_figure"]).is_file()
    (pair,) = res["pairs"]
    mc = pair["mcnemar"]
    assert mc["a_right_b_wrong"] + mc["both_right"] == round(res["runs"][0]["accuracy"] * 40)
    assert mc["a_wrong_b_right"] + mc["both_right"] == round(res["runs"][1]["accuracy"] * 40)
    assert "accuracy" in res["summary"] and "McNemar" in res["summary"]


def test_gallery_says_when_grad_cam_is_zero_and_gives_every_map_its_range(tmp_path, monkeypatch):
    """A CNN whose only logit falls with every channel (all fc weights negative) has Grad-CAM 0 on
    every image: the panel says so instead of showing a bare image; every caption has the raw range."""
    from types import SimpleNamespace

    import torch

    import medvit.explain
    from medvit.compare.maps import disagreement_gallery
    from medvit.models import create_backbone

    torch.manual_seed(0)
    images = torch.rand(4, 1, 16, 16)

    class Images:
        def __getitem__(self, i):
            return images[i], 0

        def load(self, i):
            return images[i, 0].numpy()

    runs = []
    for name, sign in (("neg", -1.0), ("pos", 1.0)):
        model = create_backbone("cnn_test", num_classes=1, in_chans=1, img_size=16).eval()
        with torch.no_grad():
            model.fc.weight.fill_(sign)  # pooled ReLU maps >= 0: the logit only falls (neg) or rises (pos)
        frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(4)], "label": [0, 1, 0, 1],
                              "prob": [0.1, 0.2, 0.3, 0.4] if sign < 0 else [0.9, 0.8, 0.3, 0.6]})
        runs.append(SimpleNamespace(name=name, model=model, frame=frame, dataset=Images(), binary=True,
                                    threshold=0.5, device=torch.device("cpu")))
    captions = []
    real = medvit.explain.save_panel
    monkeypatch.setattr(medvit.explain, "save_panel",
                        lambda full, maps, path, **kw: (captions.append(list(maps)), real(full, maps, path, **kw))[1])
    items = disagreement_gallery(runs, tmp_path, k=2)
    assert len(items) == 2 and len(captions) == 2
    for item, (neg, pos) in zip(items, captions):
        assert item["map_ranges"]["neg"] == [0.0, 0.0] and item["map_notes"] == {
            "neg": "no positive evidence: Grad-CAM is zero"}
        lo, hi = item["map_ranges"]["pos"]
        assert 0.0 <= lo < hi  # a real map: its raw range
        assert neg.endswith("map range 0–0\nno positive evidence: Grad-CAM is zero")
        assert f"map range {lo:.3g}–{hi:.3g}" in pos and "no positive evidence" not in pos
        with Image.open(tmp_path / item["figure"]) as im:
            assert im.format == "PNG"


def test_report_captions_carry_every_map_range(synth_flow):
    _, _, report = synth_flow
    res = json.loads((report / "compare.json").read_text())
    html = (report / "index.html").read_text()
    for g in res["gallery"]:
        assert set(g["map_ranges"]) == {"cnn", "vit"}
        for name, (lo, hi) in g["map_ranges"].items():
            assert lo <= hi and f"map range {lo:.3g}–{hi:.3g}" in html
            assert (g["map_notes"].get(name) == "no positive evidence: Grad-CAM is zero") == (name == "cnn" and hi == 0)
