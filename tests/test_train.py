"""The one trainer: runs, logs, checkpoints, stopping rules, exact resume (also after kill -9), DDP."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medvit.config import load_config
from medvit.errors import MedvitError
from medvit.train import fit
from medvit.train.checkpoint import build_model_from_checkpoint, load_checkpoint

from conftest import kill_once_logged
from fake_cache import make_manifest

SIZE = 32



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("mammo"), SIZE)


def cfg_for(data_dir: Path, *extra: str):
    return load_config(None, [
        f"data.dir={data_dir}", f"data.image_size={SIZE}", "data.batch_size=8", "data.workers=0",
        "model.backbone=cnn_test", "optim.lr=3e-3", "train.epochs=3", "train.log_every=1",
        "schedule.warmup_epochs=0.5", *extra])


def weights(run: Path, which: str = "last") -> dict:
    return load_checkpoint(run / "checkpoints" / f"{which}.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def epoch_table(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics_epoch.csv").drop(columns=["elapsed"])


def test_run_directory_contents(data_dir, tmp_path):
    run = tmp_path / "run"
    summary = fit(cfg_for(data_dir), run)
    assert summary["stop_reason"] == "epochs=3"
    for name in ("config.yaml", "metrics_step.csv", "metrics_epoch.csv", "train.log",
                 "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert load_config(run / "config.yaml") == cfg_for(data_dir)
    epochs = pd.read_csv(run / "metrics_epoch.csv")
    assert list(epochs["epoch"]) == [0, 1, 2]
    assert epochs[["train_loss", "val_loss", "val_accuracy", "val_auc"]].notna().all().all()
    ck = load_checkpoint(run / "checkpoints" / "best.pt")  # weights_only=True inside
    model = build_model_from_checkpoint(ck)
    assert model(torch.zeros(2, 1, SIZE, SIZE)).shape == (2, 1)  # binary: one logit, BCE
    assert not list((run / "checkpoints").glob(".*tmp"))


def test_stop_by_max_steps_then_resume_matches_uninterrupted(data_dir, tmp_path):
    full = tmp_path / "full"
    fit(cfg_for(data_dir), full)
    part = tmp_path / "part"
    fit(cfg_for(data_dir, "train.max_steps=5"), part)  # stops inside epoch 1
    ck = load_checkpoint(part / "checkpoints" / "last.pt")
    assert ck["counters"]["step"] == 5 and 0 < ck["counters"]["batch"]
    cfg = load_config(part / "config.yaml", ["train.max_steps=0"])
    fit(cfg, part, resume=True)
    assert_same_weights(weights(full), weights(part))
    pd.testing.assert_frame_equal(epoch_table(full), epoch_table(part))


def test_kill_9_and_resume_matches_uninterrupted(data_dir, tmp_path):
    full = tmp_path / "full"
    fit(cfg_for(data_dir, "train.ckpt_every=1"), full)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medvit", "train", "--out", str(run), f"data.dir={data_dir}",
           f"data.image_size={SIZE}", "data.batch_size=8", "data.workers=0", "model.backbone=cnn_test",
           "optim.lr=3e-3", "train.epochs=3", "train.log_every=1", "schedule.warmup_epochs=0.5",
           "train.ckpt_every=1"]
    # CPU float sums depend on the thread count: the subprocesses use the in-process count.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    kill_once_logged(cmd, run, env)  # kill -9 early in the run, once two steps are logged
    last = run / "checkpoints" / "last.pt"
    counters = load_checkpoint(last)["counters"]
    assert counters["stop_reason"] == "" and counters["step"] >= 1  # really interrupted, mid-run
    rc = subprocess.run([sys.executable, "-m", "medvit", "train", "--resume", str(run)],
                        capture_output=True, text=True, timeout=300, env=env)
    assert rc.returncode == 0, rc.stderr
    assert_same_weights(weights(full), weights(run))
    pd.testing.assert_frame_equal(epoch_table(full), epoch_table(run))
    steps_full = pd.read_csv(full / "metrics_step.csv")
    steps_run = pd.read_csv(run / "metrics_step.csv")
    pd.testing.assert_frame_equal(steps_full.drop(columns="images_per_s"), steps_run.drop(columns="images_per_s"))


def test_flat_train_error_stops(data_dir, tmp_path):
    run = tmp_path / "flat"
    summary = fit(cfg_for(data_dir, "optim.lr=0", "train.epochs=20", "train.flat_epochs=2"), run)
    assert summary["stop_reason"] == "train error unchanged for 2 epochs"
    assert summary["epoch"] == 3
    assert "train error unchanged" in (run / "train.log").read_text()
    steps_per_epoch = summary["step"] // summary["epoch"]
    late = fit(cfg_for(data_dir, "optim.lr=0", "train.epochs=20", "train.flat_epochs=2",
                       f"train.flat_min_steps={5 * steps_per_epoch}", "train.val_every=0",
                       "train.ckpt_min_interval=60"), tmp_path / "late")
    # not before step 5 epochs
    assert late["stop_reason"] == "train error unchanged for 2 epochs" and late["epoch"] == 5
    assert not (tmp_path / "late" / "checkpoints" / "best.pt").exists()  # never validated
    assert "val_loss" not in (tmp_path / "late" / "train.log").read_text()


def test_max_wall_stops(data_dir, tmp_path):
    summary = fit(cfg_for(data_dir, "train.epochs=1000", "train.max_wall=1"), tmp_path / "wall")
    assert summary["stop_reason"] == "max_wall=1s"


def test_width_scaled_sgd_and_step_schedule(data_dir, tmp_path):
    from medvit.train.loop import Trainer

    t = Trainer(cfg_for(data_dir, "model.backbone=basic_cnn", "model.kwargs={width: 4}", "optim.name=sgd",
                        "optim.lr=0.5", "optim.width_scaled_lr=true", "schedule.name=step",
                        "schedule.warmup_epochs=0"), tmp_path / "sgd")
    assert isinstance(t.optimizer, torch.optim.SGD)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 4)  # eta = eta_eff * h


def test_step_schedule_every_n_epochs_or_at_milestones():
    from medvit.config import load_config
    from medvit.train.setup import lr_factor

    every = load_config(None, ["schedule.name=step", "schedule.step_epochs=2", "schedule.warmup_epochs=0"])
    assert [lr_factor(every, e * 10, 10, 100) for e in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    at = load_config(None, ["schedule.name=step", "schedule.milestones=[1,3]", "schedule.warmup_epochs=0"])
    assert [lr_factor(at, e * 10 + 5, 10, 100) for e in range(5)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])


def test_ema_and_label_smoothing_run(data_dir, tmp_path):
    run = tmp_path / "ema"
    fit(cfg_for(data_dir, "train.epochs=1", "train.ema=0.9", "train.label_smoothing=0.1"), run)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["ema"] is not None
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"] if ck["model"][k].is_floating_point())


def test_same_trainer_runs_cifar_format(tmp_path):
    from medvit.data.benchmarks import write_cifar10

    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    images = rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8)
    write_cifar10(tmp_path / "cifar", images, labels, images[:20], labels[:20])
    run = tmp_path / "cifar-run"
    summary = fit(load_config(None, [f"data.dir={tmp_path / 'cifar'}", "data.kind=cifar10", "data.image_size=32",
                                     "data.batch_size=16", "data.workers=0", "model.backbone=basic_cnn",
                                     "train.epochs=1", "train.monitor=val_accuracy"]), run)
    assert summary["epoch"] == 1
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert build_model_from_checkpoint(ck)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)  # CE, 10 logits


def test_ddp_two_cpu_ranks_disjoint_and_one_checkpoint(data_dir, tmp_path):
    """2 gloo ranks until max_wall: both must stop at the same step (each has its own clock; a
    rank stopping alone hangs the other in its next all-reduce), on disjoint negatives, with
    a positive in every batch of every rank, and only rank 0 writing."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "medvit", "train", "--out", str(run), f"data.dir={data_dir}", f"data.image_size={SIZE}",
           "data.batch_size=4", "data.workers=0", "model.backbone=cnn_test", "train.epochs=1000",
           "train.max_wall=6", "train.sample_log=true", "train.device=cpu", "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    counters = load_checkpoint(run / "checkpoints" / "last.pt")["counters"]
    assert counters["stop_reason"] == "max_wall=6s" and counters["epoch"] >= 1
    seen = {rank: pd.read_csv(run / "samples" / f"rank{rank}.csv", names=["epoch", "step", "id"], dtype=str)
            for rank in (0, 1)}
    assert seen[0].step.astype(int).max() == seen[1].step.astype(int).max() == counters["step"]
    manifest = pd.read_csv(data_dir / "manifest.csv", dtype=str)
    train = manifest[manifest.fold != "0"]
    negatives, positives = (set(train.loc[train.label == "0", "image_id"]),
                            set(train.loc[train.label == "1", "image_id"]))
    first = {rank: seen[rank][seen[rank].epoch == "0"] for rank in (0, 1)}
    neg0, neg1 = set(first[0].id) & negatives, set(first[1].id) & negatives
    assert neg0 and neg1 and not (neg0 & neg1)  # each negative trained on by one rank only
    assert neg0 | neg1 == negatives  # and every negative used in the epoch
    for rank in (0, 1):
        assert seen[rank].groupby("step").id.apply(lambda ids: bool(set(ids) & positives)).all()
    steps = pd.read_csv(run / "metrics_step.csv")  # one row per step (log_every=1), from rank 0 only
    assert list(steps["step"]) == list(range(1, counters["step"] + 1))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_seed_vit_keeps_its_patch_and_benchmarks_their_size(tmp_path):
    """Without --patch / --image-size a seed ViT gets its document's patch (4) and CIFAR its 32 px."""
    from medvit.train import setup

    cfg = setup.resolve_sizes(load_config(None, ["data.kind=cifar10", "model.backbone=vit_cifar"]), None)
    assert cfg.data.image_size == 32 and cfg.model.patch_size is None
    spec = setup.model_spec(cfg, num_classes=10, in_chans=3, binary=False)
    model = setup.build_model(cfg, spec)
    assert tuple(model.patch_embed.grid_size) == (8, 8)  # 32 / 4
    assert setup.resolve_sizes(load_config(None, ["data.kind=mnist"]), None).data.image_size == 28
    assert setup.resolve_sizes(load_config(None, []), 256).data.image_size == 256  # mammo: the ingest size
    cfg = load_config(None, ["model.backbone=vit", "model.patch_size=8", "data.image_size=64"])
    assert setup.build_model(cfg, setup.model_spec(cfg, 2, 1, True)).patch_embed.grid_size == (8, 8)


def test_evaluate_uses_last_when_the_run_stopped_before_validating(data_dir, tmp_path, capsys):
    from medvit.train.checkpoint import resolve_checkpoint

    run = tmp_path / "short"
    fit(cfg_for(data_dir, "train.max_steps=2"), run)
    assert not (run / "checkpoints" / "best.pt").exists()
    assert resolve_checkpoint(run, "best") == run / "checkpoints" / "last.pt"
    assert "before its first validation" in capsys.readouterr().err
    # issue 11: the file path of a missing best.pt was read as a run dir ("best.pt/checkpoints/best.pt")
    given = run / "checkpoints" / "best.pt"
    with pytest.raises(MedvitError) as err:
        resolve_checkpoint(given, "best")
    assert str(err.value).startswith(f"{given}: checkpoint not found") and "has last.pt" in str(err.value)
    assert "best.pt/checkpoints" not in str(err.value)


def test_options_that_do_not_apply_fail_instead_of_being_ignored(data_dir, tmp_path):
    from medvit.data.benchmarks import write_cifar10
    from medvit.errors import ConfigError

    with pytest.raises(ConfigError, match="label_noise"):
        fit(cfg_for(data_dir, "data.label_noise=0.2"), tmp_path / "a")
    x = np.zeros((20, 32, 32, 3), np.uint8)
    write_cifar10(tmp_path / "cifar", x, np.arange(20) % 10, x[:10], np.arange(10))
    with pytest.raises(ConfigError, match="augment"):
        fit(load_config(None, [f"data.dir={tmp_path / 'cifar'}", "data.kind=cifar10", "data.workers=0",
                               "model.backbone=basic_cnn", "data.augment={hflip: 0.5}"]), tmp_path / "b")


def test_unknown_backbone_fails_before_the_data_is_read(tmp_path):
    from medvit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown backbone 'resnet5'"):
        fit(load_config(None, [f"data.dir={tmp_path / 'nothing-here'}", "model.backbone=resnet5"]), tmp_path / "r")
