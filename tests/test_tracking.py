"""Experiment tracking in MLflow (`--track`), against real local stores (SQLite; a real `mlflow
server` in the slow set): synth (PHI-marked headers) -> ingest -> tracked train, evaluate, resume,
compare; a reduced study on the local Ray with a restart and a resume; then everything read back
with MLflow's own client: params, metrics by step, tags, artifacts, parent/child links, no
duplicate run, no PHI. Without --track nothing changes and mlflow is never imported."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medvit.cli import build_parser, main, parse_args
from medvit.tracking import RECORD, Tracking, from_args, read_record, resolve_uri

from fake_cache import cifar_bars, make_manifest

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")  # inside mlflow

PHI = "MEDVITPHI"  # every fake identifying header field `medvit synth` writes contains it
TINY = ["data.image_size=32", "data.batch_size=8", "data.workers=0", "train.log_every=1", "train.device=cpu",
        "schedule.warmup_epochs=0.5"]


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def record(folder: Path) -> dict:
    rec = read_record(folder)
    assert rec is not None, f"no {RECORD} in {folder}"
    return rec


def all_runs(uri: str) -> list:
    c = client(uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000)


def artifact_paths(c, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in c.list_artifacts(run_id, path):
        out |= artifact_paths(c, run_id, a.path) if a.is_dir else {a.path}
    return out


# ----------------------------------------------------------------------------- command line

def test_flags_uri_resolution_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parser = build_parser()
    args = parse_args(parser, ["train", "--backbone", "cnn_test"])
    assert from_args(args) is None  # neither flag nor variable: no tracking
    # a bare --track followed by an override: the override goes back where it belongs
    args = parse_args(parser, ["train", "--track", "data.kind=mnist", "--track-checkpoints", "optim.lr=0.1"])
    t = from_args(args)
    assert t == Tracking(uri="", checkpoints=True) and args.overrides == ["data.kind=mnist", "optim.lr=0.1"]
    args = parse_args(parser, ["train", "--track", "http://127.0.0.1:5000"])
    assert from_args(args).uri == "http://127.0.0.1:5000"
    args = parse_args(parser, ["compare", "--track", "runs/a", "runs/b"])
    assert from_args(args).uri == "" and args.runs == ["runs/a", "runs/b"]
    args = parse_args(parser, ["study", "--track", "patch-size"])
    assert from_args(args).uri == "" and args.name == "patch-size"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert from_args(parse_args(parser, ["train"])).uri == "http://tracker:5000"  # the variable alone turns it on
    assert from_args(parse_args(parser, ["train", "--track", "sqlite:///x.db"])).uri == "sqlite:///x.db"
    # the default store: SQLite in the output's parent folder; relative SQLite paths made absolute
    assert resolve_uri("", tmp_path / "runs" / "a") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///db/m.db", "x") == f"sqlite:///{tmp_path / 'db' / 'm.db'}"
    assert resolve_uri("http://h:5000", "x") == "http://h:5000"


def test_missing_mlflow_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    rc = main(["train", "--data", str(tmp_path), "--backbone", "cnn_test", "--track"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "pip install 'medvit[tracking]'" in err and not (tmp_path / "runs").exists()


def test_without_track_nothing_changes_and_mlflow_is_not_imported(tmp_path):
    """--help, a train and an evaluate without --track (and without the variable) in a fresh
    process: mlflow never imported, no mlflow.json, no database."""
    data = make_manifest(tmp_path / "data", 32, n_patients=6)
    code = (
        "import sys\n"
        "from medvit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"assert main(['train', '--data', {str(data)!r}, '--backbone', 'cnn_test', '--epochs', '1', '--out', "
        f"{str(tmp_path / 'runs' / 'a')!r}, *{TINY!r}]) == 0\n"
        f"assert main(['evaluate', {str(tmp_path / 'runs' / 'a')!r}, '--n-boot', '0', '--device', 'cpu']) == 0\n"
        "print('MLFLOW', [m for m in sys.modules if m.split('.')[0] == 'mlflow'])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MLFLOW []" in r.stdout
    assert not list(tmp_path.rglob(RECORD)) and not list(tmp_path.rglob("mlflow.db"))


# ----------------------------------------------------------------------------- train, evaluate, resume, compare

@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """synth (8 patients, PHI markers in the headers) -> ingest --test-share -> tracked CNN (`--track`,
    checkpoints) + evaluate; ViT through $MLFLOW_TRACKING_URI; a run stopped at step 2 and resumed;
    compare --track."""
    root = tmp_path_factory.mktemp("tracked")
    assert main(["synth", str(root / "rsna"), "--patients", "8", "--seed", "0", "--cancer-rate", "0.5",
                 "--workers", "1"]) == 0
    assert main(["ingest", str(root / "rsna"), "--out", str(root / "data"), "--size", "32", "--workers", "1",
                 "--folds", "3", "--test-share", "0.25", "--no-progress"]) == 0
    runs = root / "runs"
    train = ["train", "--data", str(root / "data"), "--epochs", "2", *TINY]
    assert main([*train, "--backbone", "cnn_test", "--out", str(runs / "cnn"), "--track", "--track-checkpoints"]) == 0
    assert main(["evaluate", str(runs / "cnn"), "--n-boot", "50", "--device", "cpu"]) == 0
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        assert main([*train, "--backbone", "vit_test", "--patch", "8", "--out", str(runs / "vit")]) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    part = runs / "part"
    assert main([*train, "--backbone", "cnn_test", "--out", str(part), "--track", uri, "train.max_steps=2"]) == 0
    first = record(part)["run_id"]
    assert main(["train", "--resume", str(part), "--track", uri, "train.max_steps=0"]) == 0
    report = root / "report"
    assert main(["compare", str(runs / "cnn"), str(runs / "vit"), "--out", str(report), "--n-boot", "50",
                 "--device", "cpu", "--gallery", "1", "--track"]) == 0
    return {"root": root, "runs": runs, "uri": uri, "report": report, "part_first_id": first}


def test_train_run_has_config_params_step_metrics_tags_and_artifacts(flow):
    runs, c = flow["runs"], client(flow["uri"])
    rec = record(runs / "cnn")
    assert rec["tracking_uri"] == flow["uri"]  # --track alone: SQLite beside the run folder
    run = c.get_run(rec["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "cnn"
    p = run.data.params
    assert p["model.backbone"] == "cnn_test" and p["train.epochs"] == "2" and p["data.batch_size"] == "8"
    assert p["data.dir"] == str(flow["root"] / "data")
    t = run.data.tags
    assert t["backbone"] == "cnn_test" and t["canvas"] == "32x32" and t["data_kind"] == "mammo"
    assert t["medvit_command"] == "train" and t["objective"] == "supervised" and "patch" not in t
    assert t["medvit_version"] and len(t["data_fingerprint"]) == 40 and t["stop_reason"] == "epochs=2"
    assert len(t["mlflow.source.git.commit"]) == 40  # medvit's commit: the tests run from a checkout
    steps = pd.read_csv(runs / "cnn" / "metrics_step.csv")
    history = c.get_metric_history(rec["run_id"], "loss")
    assert [m.step for m in history] == list(steps["step"])  # every logged step, at its step
    assert np.allclose([m.value for m in history], steps["loss"], rtol=1e-5)
    epochs = pd.read_csv(runs / "cnn" / "metrics_epoch.csv")
    val = c.get_metric_history(rec["run_id"], "val_loss")
    assert [m.step for m in val] == list(epochs["step"]) and np.allclose([m.value for m in val], epochs["val_loss"],
                                                                         rtol=1e-5)
    files = artifact_paths(c, rec["run_id"])
    assert {"config.yaml", "metrics_step.csv", "metrics_epoch.csv", "train.log",
            "checkpoints/best.pt", "checkpoints/last.pt"} <= files
    assert (runs / "mlartifacts").is_dir()  # artifacts beside the database, not in ./mlruns
    vit = c.get_run(record(runs / "vit")["run_id"])  # tracked through $MLFLOW_TRACKING_URI, no checkpoints
    assert vit.data.tags["backbone"] == "vit_test" and vit.data.tags["patch"] == "8"
    assert not any(f.startswith("checkpoints") for f in artifact_paths(c, vit.info.run_id))


def test_pretrain_is_tracked_with_its_figures(flow, tmp_path):
    """`medvit pretrain --track`: the objective's tags, the loss by step and the figures drawn after fit."""
    out = tmp_path / "pre"
    assert main(["pretrain", "--data", str(flow["root"] / "data"), "--backbone", "vit_test", "--patch", "8",
                 "--method", "mae", "--epochs", "1", "--out", str(out), "--track", *TINY]) == 0
    rec = record(out)
    assert rec["tracking_uri"].startswith("sqlite:///") and rec["tracking_uri"].endswith(f"{tmp_path}/mlflow.db")
    c = client(rec["tracking_uri"])
    run = c.get_run(rec["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["medvit_command"] == "pretrain" and run.data.tags["objective"] == "mae"
    assert run.data.params["pretrain.method"] == "mae"
    steps = pd.read_csv(out / "metrics_step.csv")
    assert [m.step for m in c.get_metric_history(rec["run_id"], "loss")] == list(steps["step"])
    assert {"loss_curve.png", "mae_reconstruction.png"} <= artifact_paths(c, rec["run_id"])


def test_evaluate_metrics_land_on_the_same_run(flow):
    runs, c = flow["runs"], client(flow["uri"])
    rec = record(runs / "cnn")
    metrics = json.loads((runs / "cnn" / "eval" / "metrics.json").read_text())
    run = c.get_run(rec["run_id"])
    m = run.data.metrics
    assert metrics["split"] == "test" and run.data.tags["scored_on"] == "test"
    assert m["test_auc"] == pytest.approx(metrics["auc"])
    assert (m["test_auc_ci_lo"], m["test_auc_ci_hi"]) == pytest.approx(tuple(metrics["auc_ci"]))
    assert m["test_n"] == metrics["n"] and m["test_accuracy"] == pytest.approx(metrics["accuracy"])
    from medvit.train.checkpoint import load_checkpoint

    step = load_checkpoint(runs / "cnn" / "checkpoints" / "best.pt")["counters"]["step"]
    assert [h.step for h in c.get_metric_history(rec["run_id"], "test_auc")] == [step]  # the scored checkpoint's
    assert {"eval/metrics.json", "eval/roc.png"} <= artifact_paths(c, rec["run_id"])
    assert run.info.status == "FINISHED"  # evaluate leaves the status as training left it


def test_evaluate_never_creates_a_run(flow, tmp_path, capsys):
    """A run folder whose MLflow run is gone: one warning line, nothing new in the store. Files
    made after training (pretrain's figures) go to the run's own MLflow run."""
    from medvit.tracking import log_evaluation, log_files

    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / RECORD).write_text(json.dumps({**record(flow["runs"] / "cnn"), "run_id": "0" * 32}))
    before = len(all_runs(flow["uri"]))
    log_evaluation(gone, {"auc": 0.5, "split": "test", "checkpoint": "best.pt"})
    assert "evaluate metrics not logged to MLflow" in capsys.readouterr().err
    assert len(all_runs(flow["uri"])) == before
    cnn = flow["runs"] / "cnn"
    log_files(cnn, [cnn / "eval" / "pr.png"], "figures")
    assert "figures/pr.png" in artifact_paths(client(flow["uri"]), record(cnn)["run_id"])
    assert len(all_runs(flow["uri"])) == before


def test_resume_continues_the_same_run(flow):
    part, c = flow["runs"] / "part", client(flow["uri"])
    rec = record(part)
    assert rec["run_id"] == flow["part_first_id"]
    assert [r.info.run_name for r in all_runs(flow["uri"])].count("part") == 1  # no duplicate
    run = c.get_run(rec["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "epochs=2"
    assert run.data.params["train.max_steps"] == "2" and run.data.tags["resumed.train.max_steps"] == "0"
    steps = pd.read_csv(part / "metrics_step.csv")["step"]
    assert sorted({m.step for m in c.get_metric_history(rec["run_id"], "loss")}) == list(steps)
    assert steps.iloc[-1] > 2  # the resumed steps were logged to the first run


def test_compare_run_links_the_compared_runs(flow):
    c, report = client(flow["uri"]), flow["report"]
    rec = record(report)
    assert rec["tracking_uri"] == flow["uri"]  # --track alone: the store the compared runs share
    run = c.get_run(rec["run_id"])
    ids = [record(flow["runs"] / n)["run_id"] for n in ("cnn", "vit")]
    assert run.data.tags["compared_run_ids"] == ",".join(ids)
    assert run.data.tags["compared.cnn"] == ids[0] and run.data.tags["compared.vit"] == ids[1]
    assert run.data.tags["scored_on"] == "test" and run.data.tags["medvit_command"] == "compare"
    res = json.loads((report / "compare.json").read_text())
    assert run.data.metrics["cnn.auc"] == pytest.approx(res["runs"][0]["auc"])
    files = artifact_paths(c, rec["run_id"])
    assert any(f.endswith(".png") for f in files)
    # exactly the page, compare.json and this compare's figures: nothing else of the output folder
    assert files == {"index.html", "compare.json", *res["figures"]}


def test_no_phi_in_params_tags_metrics_or_artifacts(flow):
    dicoms = list((flow["root"] / "rsna").rglob("*.dcm"))
    assert any(PHI.encode() in p.read_bytes() for p in dicoms)  # the marker is there to be leaked
    runs = all_runs(flow["uri"])
    assert sorted(r.info.run_name for r in runs) == ["cnn", "compare-report", "part", "vit"]  # no duplicate
    for r in runs:
        texts = [*r.data.params.items(), *r.data.tags.items(), *r.data.metrics, r.info.run_name]
        assert not [t for t in map(str, texts) if PHI in t.upper()], r.info.run_name
    files = [flow["runs"] / "mlflow.db", *(p for p in (flow["runs"] / "mlartifacts").rglob("*") if p.is_file())]
    assert len(files) > 20
    for f in files:  # the whole store: every param, tag, metric and artifact byte
        assert PHI not in f.read_bytes().decode("latin-1").upper(), f


# ----------------------------------------------------------------------------- study on Ray

@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    from medvit.data.benchmarks import write_cifar10

    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, *cifar_bars(rng, 60), *cifar_bars(rng, 30))
    return root


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_study_parent_and_children_restart_and_resume_reuse_runs(ray_local, cifar_dir, tmp_path, capsys):
    out = tmp_path / "studies" / "ps"
    argv = ["study", "patch-size", "--out", str(out), "--track", f"data.dir={cifar_dir}", "train.device=cpu",
            "data.val_size=20", "data.batch_size=20", "train.epochs=1", "study.arms.vit.model.backbone=vit_test",
            "--points", "4,8"]
    assert main(argv) == 0
    uri = f"sqlite:///{tmp_path / 'studies' / 'mlflow.db'}"
    c = client(uri)
    parent = record(out)
    assert parent["tracking_uri"] == uri
    df = pd.read_csv(out / "results.csv")
    assert (df["status"] == "ok").all() and len(df) == 2
    children = {r: record(Path(d)) for r, d in zip(df["run_id"], df["run_dir"])}

    def check(n_runs: int = 3) -> None:
        assert len(all_runs(uri)) == n_runs  # one parent + one child per grid run, never more
        p = c.get_run(parent["run_id"])
        assert p.info.status == "FINISHED" and p.data.tags["study"] == "patch-size"
        assert p.data.params["study.points"] == "[4, 8]" and p.data.metrics["runs_ok"] == 2
        assert {"results.csv", "table.md", "patch_size.png"} <= artifact_paths(c, parent["run_id"])
        for (run_id, rec), point in zip(children.items(), (4, 8)):
            ch = c.get_run(rec["run_id"])
            assert ch.data.tags["mlflow.parentRunId"] == parent["run_id"] and ch.info.run_name == run_id
            assert ch.data.params["arm"] == "vit" and ch.data.params["point"] == str(point)
            assert ch.data.params["seed"] == "0" and ch.data.params["model.patch_size"] == str(point)
            assert "test_accuracy" in ch.data.metrics and ch.data.tags["scored_on"] == "test"
            assert ch.info.status == "FINISHED"

    check()
    capsys.readouterr()
    assert main(argv) == 0  # a restart skips every run: same parent, no new child
    assert "2 runs: 2 already done (skipped), 0 to run" in capsys.readouterr().out
    assert record(out) == parent
    check()
    run_dir = Path(df["run_dir"].iloc[0])  # interrupted after training, before scoring: resumed in its run
    (run_dir / "result.json").unlink()
    (run_dir / "trained.json").unlink()
    assert main(argv) == 0
    assert "2 runs: 1 already done (skipped), 1 to run" in capsys.readouterr().out
    assert bool(pd.read_csv(out / "results.csv")["resumed"].iloc[0])
    assert {r: record(Path(d)) for r, d in zip(df["run_id"], df["run_dir"])} == children
    check()
    first = children[df["run_id"].iloc[0]]["run_id"]
    assert len(c.get_metric_history(first, "test_accuracy")) == 2  # scored again, on the same run


# ----------------------------------------------------------------------------- a real server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # `mlflow server` takes 15-20 s to start on a loaded 2-core machine
def test_train_to_a_real_mlflow_server(tmp_path):
    import urllib.request

    from medvit.config import load_config
    from medvit.train import fit

    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "served"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.25)
        data = make_manifest(tmp_path / "data", 32, n_patients=6)
        cfg = load_config(None, [f"data.dir={data}", "model.backbone=cnn_test", "train.epochs=1", *TINY])
        fit(cfg, tmp_path / "runs" / "a", track=Tracking(uri=uri, checkpoints=True))
        rec = record(tmp_path / "runs" / "a")
        c = client(uri)
        run = c.get_run(rec["run_id"])
        assert rec["tracking_uri"] == uri and run.info.status == "FINISHED"
        assert run.data.params["model.backbone"] == "cnn_test" and "val_loss" in run.data.metrics
        assert {"config.yaml", "checkpoints/last.pt"} <= artifact_paths(c, rec["run_id"])
        assert list((tmp_path / "served").rglob("last.pt"))  # stored by the server, not beside the run
        assert not (tmp_path / "runs" / "mlflow.db").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
