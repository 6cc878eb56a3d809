"""`medvit study`: every study in reduced form on tiny files in the real CIFAR-10 (pickles) / MNIST
(gzipped IDX) formats and an ingest-style mammography folder, through the real local Ray executor
(started once for the module); fits recover known exponents; restarts skip finished runs and
resume interrupted ones; a failing run is a row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medvit.studies import run_study
from medvit.studies.fits import fit_power_law, peak_width
from fake_cache import make_manifest

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 2000, path


# ------------------------------------------------------------------------------ fits (no Ray)

def test_power_law_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    p = np.array([128, 256, 512, 1024, 2048, 4096])
    truth = 2.0 * p ** -0.53
    exact = fit_power_law(p, truth[None, :])
    assert exact["alpha"] == pytest.approx(-0.53, abs=1e-9) and exact["seeds"] == 1
    noisy = truth * np.exp(rng.normal(0, 0.05, (5, len(p))))  # five seeds
    f = fit_power_law(p, noisy)
    lo, hi = f["alpha_ci"]
    assert f["alpha"] == pytest.approx(-0.53, abs=0.03) and lo < -0.53 < hi and hi - lo < 0.15
    assert "per-seed slopes of 5 seeds" in f["ci_method"]
    slopes = [np.polyfit(np.log(p), np.log(row), 1)[0] for row in noisy]  # the t-interval by hand
    half = 2.776 * np.std(slopes, ddof=1) / np.sqrt(5)  # t_{0.975, 4}
    assert hi - lo == pytest.approx(2 * half, rel=1e-3)
    many = truth * np.exp(rng.normal(0, 0.05, (12, len(p))))  # 12 seeds: a bootstrap over seeds
    g = fit_power_law(p, many)
    assert "bootstrap over 12 seeds" in g["ci_method"] and g["alpha_ci"][0] < -0.53 < g["alpha_ci"][1]
    one = fit_power_law(p, noisy[:1])  # one seed: the regression's t-interval
    assert one["ci_method"].startswith("t-interval") and one["alpha_ci"][0] < one["alpha"] < one["alpha_ci"][1]
    steeper = fit_power_law(p, (3 * p ** -1.0)[None, :] * np.exp(rng.normal(0, 0.02, (4, len(p)))))
    assert steeper["alpha"] == pytest.approx(-1.0, abs=0.03)
    with_gap = noisy.copy()
    with_gap[2, 1] = np.nan  # a failed run: the seed drops out of the bootstrap, the point stays
    assert fit_power_law(p, with_gap)["alpha"] == pytest.approx(-0.53, abs=0.03)


def test_peak_width_is_the_interpolation_peak_not_the_underfit_end():
    widths = [1, 2, 3, 4, 8, 16]
    assert peak_width(widths, [0.6, 0.3, 0.45, 0.35, 0.2, 0.15]) == {
        "peak_width": 3.0, "peak_test_error": 0.45, "interior": True, "max_width": 1.0}
    monotone = peak_width(widths, [0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert monotone["interior"] is False and monotone["peak_width"] is None and monotone["max_width"] == 1.0


def test_every_study_config_expands_to_its_documented_grid(tmp_path):
    """The shipped YAMLs hold the seeds' set-ups (full size); spot-check the grids and settings."""
    from medvit.studies.grid import STUDIES, expand, load_study

    sizes = {}
    for name in STUDIES:
        settings, base = load_study(name)
        runs = expand(name, settings, base, tmp_path)
        sizes[name] = len(runs)
        assert len({r.run_id for r in runs}) == len(runs)
        for r in runs:  # every run has a finite budget: a run that never fits its labels still stops
            t = r.config["train"]
            assert t["epochs"] < 10_000 or t["max_steps"] > 0 or t["max_wall"] > 0, (name, r.arm)
    assert sizes == {"vit-vs-cnn": 2, "patch-size": 3, "double-descent": (10 + 10) * 3 * 3,
                     "learning-curve": 2 * 8 * 4, "heads-layers": (5 + 3 + 2) * 8 * 4, "mammo-patch": 3,
                     "label-efficiency": 0}  # its arms come from --pretrained runs (tests/test_pretrain.py)
    s, base = load_study("learning-curve")
    cnn, vit = [r for r in expand("learning-curve", s, base, tmp_path) if r.point == 16384 and r.seed == 3]
    assert cnn.config["model"] == {**cnn.config["model"], "backbone": "basic_cnn", "kwargs": {"width": 10}}
    assert cnn.config["optim"]["name"] == "sgd" and cnn.config["optim"]["width_scaled_lr"]
    assert vit.config["model"]["kwargs"] == {"width": 128, "heads": 1, "depth": 1}
    assert vit.config["optim"]["name"] == "adamw" and vit.config["optim"]["lr"] == 1e-3
    assert cnn.config["train"]["flat_epochs"] == 20 and cnn.config["data"]["image_size"] == 32
    vc = expand("vit-vs-cnn", *load_study("vit-vs-cnn"), tmp_path)
    assert [r.config["model"]["backbone"] for r in vc] == ["vit_cifar", "vgg_cifar"]
    assert vc[0].config["train"]["epochs"] == 180 and vc[0].config["data"]["batch_size"] == 128
    s, base = load_study("double-descent", overrides=["study.arms.vit=null", "study.noise=[0.2]"])
    assert {r.arm for r in expand("double-descent", s, base, tmp_path)} == {"cnn"}


# ------------------------------------------------------------------------------ data + Ray

def _images(rng, n, shape, k_of):
    """Class k: a bright bar at a position that depends on k (learnable in a few steps)."""
    labels = np.arange(n) % 10
    x = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    for i, k in enumerate(labels):
        x[i, 2 * k:2 * k + 6, 6:20] = 250
    return x, labels


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    from medvit.data.benchmarks import write_mnist

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, *_images(rng, 120, (28, 28), None), *_images(rng, 40, (28, 28), None), gz=True)
    return root


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    from medvit.data.benchmarks import write_cifar10

    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, *_images(rng, 100, (32, 32, 3), None), *_images(rng, 30, (32, 32, 3), None))
    return root


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One small local Ray for the module: run_study uses it and leaves it running."""
    import ray  # a hard dependency: a broken install must fail, not skip
    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


SEED000_TINY = ["train.max_steps=8", "train.device=cpu", "study.arms.cnn.model.kwargs.width=2",
                "study.arms.vit.model.kwargs.width=8", "data.val_size=10"]


def test_learning_curve_fit_table_plot_restart_and_resume(mnist_dir, tmp_path, capsys):
    out = tmp_path / "lc"
    over = [f"data.dir={mnist_dir}", "study.points=[20,60]", "study.seeds=1", *SEED000_TINY]
    summary = run_study("learning-curve", out, overrides=over)
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4 and (df["status"] == "ok").all() and set(df["arm"]) == {"cnn", "vit"}
    assert (df["stop_reason"] == "max_steps=8").all() and (df["steps"] == 8).all()
    assert df["test_error"].between(0, 1).all() and (df["n_test"] == 40).all() and (df["device"] == "cpu").all()
    cfg = json.loads(df["config"].iloc[0])
    assert cfg["data"]["train_size"] == 20 and cfg["data"]["batch_size"] == 20  # batch capped at p_train
    fit = json.loads((out / "fit.json").read_text())
    for arm in ("cnn", "vit"):
        f = fit[arm]
        assert set(f) >= {"alpha", "alpha_ci", "points", "test_error"} and f["points"] == [20.0, 60.0]
        rows = df[df["arm"] == arm].sort_values("point")
        assert np.allclose(f["test_error"], rows["test_error"])  # fit.json agrees with results.csv
        expected = np.log(np.clip(rows["test_error"].to_numpy(), 1e-4, None))
        assert f["alpha"] == pytest.approx((expected[1] - expected[0]) / np.log(3))
    table = (out / "table.md").read_text()
    assert "| cnn | 20 |" in table and "α" in table
    assert_png(out / "learning_curve.png")
    assert summary["plots"] == ["learning_curve.png"]

    # a restart skips every finished run and changes nothing
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    capsys.readouterr()
    run_study("learning-curve", out, overrides=over)
    assert "4 runs: 4 already done (skipped), 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == stamp
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), df)

    # an interrupted run (stopped at step 4 of 8: a checkpoint, no result) resumes with the trainer's
    # resume, and only it runs: its first four epoch rows (wall times included) are kept, not redone
    import shutil

    import torch

    from medvit.config import load_config
    from medvit.train import fit

    run_dir = Path(df["run_dir"].iloc[0])
    cfg = load_config(str(run_dir / "config.yaml"), ["train.max_steps=4"])
    shutil.rmtree(run_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker: CPU sums depend on the thread count
    try:
        fit(cfg, run_dir)
    finally:
        torch.set_num_threads(threads)
    head = (run_dir / "metrics_epoch.csv").read_text()
    assert len(head.splitlines()) == 1 + 4
    run_study("learning-curve", out, overrides=over)
    assert "4 runs: 3 already done (skipped), 1 to run" in capsys.readouterr().out
    again = pd.read_csv(out / "results.csv")
    assert bool(again["resumed"].iloc[0]) and again["steps"].iloc[0] == 8
    assert again["test_error"].iloc[0] == pytest.approx(df["test_error"].iloc[0])
    log = (run_dir / "metrics_epoch.csv").read_text()
    assert log.startswith(head) and len(log.splitlines()) == 1 + 8

    # everything is re-drawn from the CSV alone
    table, fit = (out / "table.md").read_text(), json.loads((out / "fit.json").read_text())
    for name in ("table.md", "fit.json", "learning_curve.png"):
        (out / name).unlink()
    from medvit.cli import main

    assert main(["study", "learning-curve", "--out", str(out), "--redraw"]) == 0
    assert (out / "table.md").read_text() == table and json.loads((out / "fit.json").read_text()) == fit
    assert_png(out / "learning_curve.png")


def test_double_descent_noise_peaks_and_a_failing_run_is_a_row(mnist_dir, tmp_path):
    out = tmp_path / "dd"
    # heads=3 does not divide width 4: that run fails, the study goes on
    over = [f"data.dir={mnist_dir}", "study.seeds=1", "study.noise=[0.0,0.2]", "data.train_size=40",
            "study.arms.cnn.points=[1,2,4]", "study.arms.vit.points=[4,6]", "study.arms.vit.model.kwargs.heads=3",
            "study.arms.vit.model.kwargs.depth=1", *SEED000_TINY]
    run_study("double-descent", out, overrides=over)
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 3 * 2 + 2 * 2
    failed = df[df["status"] == "failed"]
    assert set(zip(failed["arm"], failed["point"])) == {("vit", 4)} and len(failed) == 2
    assert failed["error"].str.len().gt(10).all() and failed["test_error"].isna().all()
    ok = df[df["status"] == "ok"]
    assert len(ok) == 8 and ok["train_error"].notna().all()
    fit = json.loads((out / "fit.json").read_text())
    for arm in ("cnn", "vit"):
        assert set(fit[arm]["peak_width"]) == {"0", "0.2"}
    for noise in ("0", "0.2"):
        rows = ok[(ok["arm"] == "cnn") & (ok["noise"] == float(noise))].sort_values("point")
        assert fit["cnn"]["widths"][noise] == [1.0, 2.0, 4.0]
        assert np.allclose(fit["cnn"]["test_error"][noise], rows["test_error"])
        assert fit["cnn"]["peak_width"][noise] == peak_width(rows["point"], rows["test_error"])["peak_width"]
    table = (out / "table.md").read_text()
    assert "## Failed runs" in table and "vit-width4-noise0-seed0" in table and "| cnn | 20% | 2 |" in table
    for arm in ("cnn", "vit"):
        assert_png(out / f"double_descent_{arm}.png")
    import yaml

    saved = yaml.safe_load(next(out.glob("runs/cnn-width1-noise0.2-*/config.yaml")).read_text())
    assert saved["data"]["label_noise"] == 0.2 and saved["model"]["kwargs"]["width"] == 1
    assert saved["optim"]["name"] == "sgd"


def test_vit_vs_cnn_and_patch_size_on_cifar_format(cifar_dir, tmp_path):
    tiny = [f"data.dir={cifar_dir}", "train.device=cpu", "data.val_size=20", "data.batch_size=20", "train.epochs=2"]
    out = tmp_path / "vc"
    run_study("vit-vs-cnn", out, overrides=tiny + ["study.arms.vit.model.backbone=vit_test",
                                                   "study.arms.vit.model.patch_size=8",
                                                   "study.arms.cnn.model.backbone=cnn_test"])
    df = pd.read_csv(out / "results.csv")
    assert list(df["arm"]) == ["vit", "cnn"] and (df["status"] == "ok").all() and (df["checkpoint"] == "best.pt").all()
    assert (df["epochs"] == 2).all() and df["val_accuracy"].notna().all() and (df["n_test"] == 30).all()
    table = (out / "table.md").read_text()
    assert "## Test loss and accuracy" in table and "| Model | Accuracy | Loss |" in table
    assert f"| vit | {df['test_accuracy'].iloc[0]:.3f} | {df['test_loss'].iloc[0]:.3f} |" in table
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["arm"]) == {"vit", "cnn"} and len(curves) == 4 and curves["val_loss"].notna().all()
    assert_png(out / "curves.png")
    assert not (out / "fit.json").exists()

    out = tmp_path / "ps"
    run_study("patch-size", out, overrides=tiny + ["study.arms.vit.model.backbone=vit_test", "study.points=[4,8]",
                                                   "train.epochs=1"])
    df = pd.read_csv(out / "results.csv")
    assert list(df["point"]) == [4, 8] and (df["status"] == "ok").all() and (df["checkpoint"] == "last.pt").all()
    table = (out / "table.md").read_text()
    assert ("| Patch Size | Training Time (m:s) | Train Accuracy | Test Accuracy | Train Loss | Test Loss | Seeds |"
            in table)
    row = df.iloc[1]
    assert "| 8 | 0:0" in table
    assert f"{row['test_accuracy']:.3f} | {row['train_loss']:.3f} | {row['test_loss']:.3f}" in table
    assert_png(out / "patch_size.png")
    assert_png(out / "curves.png")


def test_heads_layers_variants_and_combined_against_the_cnn(mnist_dir, tmp_path):
    out = tmp_path / "hl"
    run_study("heads-layers", out, overrides=[
        f"data.dir={mnist_dir}", "study.seeds=1", "study.points=[2]", "study.layers=[2]",
        "study.combined=[[2,1],[1,2],[2,2]]", "study.p_train=[20,40]", *SEED000_TINY, "train.max_steps=4"])
    df = pd.read_csv(out / "results.csv")
    arms = ["vit_H2_L1", "vit_H1_L2", "cnn", "vit_H2_L2"]
    assert list(dict.fromkeys(df["arm"])) == arms and len(df) == 8 and (df["status"] == "ok").all()
    # variants shared by two sweeps run once and are drawn in both figures (figure 15: H, L against the CNN)
    from medvit.studies.report import _heads_layers_groups

    assert _heads_layers_groups(df) == {"heads": ["vit_H2_L1"], "layers": ["vit_H1_L2"],
                                        "combined": ["vit_H2_L1", "vit_H1_L2", "cnn", "vit_H2_L2"]}
    fit = json.loads((out / "fit.json").read_text())
    assert set(fit) == set(arms) and all(fit[a]["alpha"] is not None for a in arms)
    for name in ("heads", "layers", "combined"):
        assert_png(out / f"{name}.png")
    assert "| vit_H2_L2 |" in (out / "table.md").read_text()


def test_mammo_patch_auc_with_ci_per_patch(tmp_path):
    data = make_manifest(tmp_path / "data", 32, n_patients=12)  # folds 0, 1, 2
    manifest = pd.read_csv(data / "manifest.csv")  # fold 2 becomes the test split of `ingest --test-share`
    manifest["split"] = np.where(manifest["fold"] == 2, "test", "train")
    manifest.loc[manifest["split"] == "test", "fold"] = -1
    manifest.to_csv(data / "manifest.csv", index=False)
    out = tmp_path / "mp"
    run_study("mammo-patch", out, overrides=[
        f"data.dir={data}", "data.image_size=32", "data.workers=0", "train.epochs=1",
        "train.device=cpu", "study.arms.vit.model.backbone=vit_test", "study.points=[16,8]", "study.n_boot=50"])
    df = pd.read_csv(out / "results.csv")
    assert list(df["point"]) == [16, 8] and (df["status"] == "ok").all()
    assert (df["n_test"] == 16).all() and (df["scored_on"] == "test").all()  # 4 held-out patients x 4 images
    assert (df["test_auc_lo"] <= df["test_auc"]).all() and (df["test_auc"] <= df["test_auc_hi"]).all()
    table = (out / "table.md").read_text()
    r = df.iloc[0]
    assert "| 16 | " in table and f"{r['test_auc']:.3f} [{r['test_auc_lo']:.3f}, {r['test_auc_hi']:.3f}]" in table
    assert_png(out / "patch_size.png")


def test_cli_lists_studies_and_takes_flags_and_overrides_intermixed(capsys, tmp_path):
    from medvit.cli import build_parser, main
    from medvit.commands.study import overrides_from

    assert main(["study", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["vit-vs-cnn", "patch-size", "double-descent", "learning-curve",
                                              "heads-layers", "mammo-patch", "label-efficiency"]
    args, extra = build_parser().parse_known_args(
        ["study", "learning-curve", "--seeds", "2", "train.max_steps=5", "--points", "128,256", "--dataset",
         "cifar10", "--max-wall", "30", "--epochs", "3", "--data", str(tmp_path)])
    args.overrides = list(args.overrides) + extra
    assert overrides_from(args) == ["data.kind=cifar10", f"data.dir={tmp_path.resolve()}", "study.seeds=2",
                                    "train.epochs=3", "train.max_wall=30.0", "study.points=[128, 256]",
                                    "train.max_steps=5"]
    assert main(["study", "nope"]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err


def test_seed_documents_are_named_by_title_not_by_a_folder():
    import re

    import medvit.models.seeds
    import medvit.studies

    for module in (medvit.studies, medvit.models.seeds):
        doc = " ".join(module.__doc__.split())
        assert "Comparative analysis of structure and performance" in doc, module.__name__
        assert not re.search(r"(^|[\s(`])(\.\.)?/?\w+/seeds/|(^|[\s(`])/\w+/", doc), module.__name__  # no folder path


@pytest.mark.parametrize("failure", ["no_token", "rejected"])
def test_joining_a_token_cluster_without_the_token_is_one_clear_error(monkeypatch, failure, tmp_path, capsys):
    """Ray 2.60's two failures without the head's token (observed against `ray start --head`):
    AuthenticationError when RAY_AUTH_MODE=token finds no token; ConnectionError after retries
    (InvalidAuthToken logged) when the driver sends none. Both name the address and the fix."""
    import ray
    from ray.exceptions import AuthenticationError

    from medvit.cli import main
    from medvit.data.benchmarks import write_mnist
    from medvit.errors import MedvitError
    from medvit.studies.runner import ray_session

    def init(address=None, **kw):
        assert address == "head.example:6379"
        if failure == "no_token":
            raise AuthenticationError("Token authentication is enabled but no authentication token was found")
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as a fresh driver: the module's Ray is not used
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: pytest.fail("nothing was started: nothing to shut down"))
    with pytest.raises(MedvitError) as err:
        with ray_session("head.example:6379"):
            pytest.fail("no session without the token")
    message = str(err.value)
    assert "head.example:6379" in message and "\n" not in message
    assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN" in message and "~/.ray/auth_token" in message
    assert ("InvalidAuthToken" in message) == (failure == "rejected")
    # the CLI: one line on stderr, exit code 2
    rng = np.random.default_rng(0)
    write_mnist(tmp_path / "mnist", *_images(rng, 40, (28, 28), None), *_images(rng, 10, (28, 28), None))
    assert main(["study", "learning-curve", "--data", str(tmp_path / "mnist"), "--out", str(tmp_path / "lc"),
                 "--points", "16", "--seeds", "1", "--address", "head.example:6379"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medvit study: error:") and "head.example:6379" in lines[0]
