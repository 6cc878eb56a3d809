"""`medvit pretrain`: MAE / DINO / SimCLR on the one trainer, fine-tuning with `train --init`,
exact resume after kill -9, the test split left out."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medvit.cli import main
from medvit.config import load_config
from medvit.train import fit
from medvit.train.checkpoint import load_checkpoint

from conftest import kill_once_logged
from fake_cache import make_manifest

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; bit-exact resume needs one thread count


def make_unlabelled(root: Path, n: int = 32, seed: int = 0, test_every: int = 0) -> Path:
    """An ingest-style folder without labels: breast-like half-ellipses of varied size, brightness
    and texture on a zero background (some of them in the test split when test_every > 0)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rows = []
    for i in range(n):
        a, b = rng.uniform(0.5, 0.95), rng.uniform(0.4, 0.9)
        breast = (xx / a) ** 2 + ((yy - 0.5) / (b / 2)) ** 2 < 1
        tex = sum(rng.uniform(0.2, 0.6) * np.exp(-((yy - rng.uniform()) ** 2 + (xx - rng.uniform()) ** 2)
                                                 / rng.uniform(0.002, 0.03)) for _ in range(rng.integers(1, 6)))
        img = breast * np.clip(rng.uniform(0.2, 0.5) + tex + rng.normal(0, 0.03, (SIZE, SIZE)), 0, 1)
        np.save(root / "images" / f"u{i}.npy", (img * 65535).astype(np.uint16))
        split = "test" if test_every and i % test_every == 0 else ""
        rows.append({"image_id": f"u{i}", "patient_id": f"p{i // 2}", "laterality": "L", "view": "CC",
                     "label": None, "fold": -1, "status": "ok", "error": "", "path": f"u{i}.dcm",
                     "cache": f"images/u{i}.npy", "rows": SIZE, "columns": SIZE, "split": split})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    return make_unlabelled(tmp_path_factory.mktemp("unlabelled"), test_every=8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("labelled"), SIZE)


# settings under which each method's loss falls within a few tiny epochs
METHODS = {
    "mae": ("vit_test", ["model.patch_size=8", "optim.lr=1e-3"]),
    "dino": ("cnn_test", ["optim.lr=3e-3", "pretrain.teacher_momentum=0.9", "pretrain.out_dim=64"]),
    "simclr": ("cnn_test", ["optim.lr=3e-3"]),
}


def pretrain_args(data: Path, method: str, *extra: str) -> list[str]:
    backbone, options = METHODS[method]
    return [f"data.dir={data}", f"data.image_size={SIZE}", "data.batch_size=8", "data.workers=0",
            f"model.backbone={backbone}", f"pretrain.method={method}", "train.epochs=5",
            "train.log_every=1", "schedule.warmup_epochs=0.5", *options, *extra]


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_loss_falls(unlabelled, tmp_path, method):
    run = tmp_path / method
    summary = fit(load_config(None, pretrain_args(unlabelled, method)), run)
    assert summary["stop_reason"] == "epochs=5"
    loss = pd.read_csv(run / "metrics_epoch.csv")["train_loss"].to_numpy()
    assert loss[-2:].mean() < loss[0], loss
    ck = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ck["pretrain"]["method"] == method and ck["pretrain"]["images"] == 28  # 4 of 32 are test
    assert not any(k.startswith(("head.", "fc.")) for k in ck["model"])  # the encoder, no classifier


def test_test_split_left_out_unless_included(unlabelled):
    from medvit.pretrain.data import unlabelled_data

    views = [(1, (SIZE, SIZE), (0.3, 1.0))]
    cfg = load_config(None, [f"data.dir={unlabelled}", "pretrain.method=mae"])
    ids = unlabelled_data(cfg, views).train.ids
    assert len(ids) == 28 and "u0" not in ids and "u8" not in ids
    cfg.pretrain.include_test = True
    assert len(unlabelled_data(cfg, views).train.ids) == 32


def test_views_are_reproducible_and_inside_the_breast(unlabelled):
    from medvit.pretrain.data import unlabelled_data

    cfg = load_config(None, [f"data.dir={unlabelled}", "pretrain.method=dino"])
    data = unlabelled_data(cfg, [(2, (SIZE, SIZE), (0.3, 1.0))]).train
    (a1, a2), _ = data[3]
    (b1, _), _ = data[3]
    assert torch.equal(a1, b1) and not torch.equal(a1, a2)  # same (seed, epoch, index, view): same view
    assert a1.shape == (1, SIZE, SIZE) and float(a1.mean()) > 0.1  # a crop of breast, not of background


def test_command_writes_figures_and_init_fine_tunes(unlabelled, labelled, tmp_path):
    pre = tmp_path / "mae"
    assert main(["pretrain", "--data", str(unlabelled), "--backbone", "vit_test", "--patch", "8",
                 "--method", "mae", "--epochs", "2", "--batch-size", "8", "--image-size", str(SIZE),
                 "--out", str(pre), "data.workers=0"]) == 0
    for name in ("checkpoints/last.pt", "metrics_epoch.csv", "loss_curve.png", "mae_reconstruction.png",
                 "config.yaml", "train.log"):
        assert (pre / name).is_file(), name
    encoder = load_checkpoint(pre / "checkpoints" / "last.pt")["model"]

    common = ["--data", str(labelled), "--backbone", "vit_test", "--patch", "8", "--image-size", str(SIZE),
              "--epochs", "1", "data.workers=0", "data.batch_size=8"]
    probe, scratch = tmp_path / "probe", tmp_path / "scratch"
    assert main(["train", "--init", str(pre), "--out", str(probe), "train.freeze_backbone=true", *common]) == 0
    assert main(["train", "--out", str(scratch), *common]) == 0
    ck = load_checkpoint(probe / "checkpoints" / "last.pt")
    assert ck["init"]["method"] == "mae" and ck["init"]["images"] == 28
    assert ck["init"]["run"] == str(pre.resolve())
    tuned, fresh = ck["model"], load_checkpoint(scratch / "checkpoints" / "last.pt")["model"]
    for key, value in encoder.items():  # linear probe: the encoder is exactly the pretrained one
        assert torch.equal(tuned[key], value), key
    assert not torch.equal(tuned["blocks.0.attn.qkv.weight"], fresh["blocks.0.attn.qkv.weight"])
    assert "head.weight" in tuned and "head.weight" not in encoder
    # compare on the pretrained and the scratch run: the page says where each run's weights came from
    import json

    report = tmp_path / "report"
    assert main(["compare", str(probe), str(scratch), "--out", str(report), "--n-boot", "20", "--gallery", "0",
                 "--device", "cpu"]) == 0
    runs = {r["name"]: r["provenance"] for r in json.loads((report / "compare.json").read_text())["runs"]}
    assert runs["probe"]["start"] == "pretrained" and runs["probe"]["method"] == "mae"
    assert runs["probe"]["images"] == 28 and runs["probe"]["run"] == "mae" and not runs["probe"]["include_test"]
    assert runs["scratch"]["start"] == "scratch"
    page = (report / "index.html").read_text()
    assert "fine-tuned from mae pretraining run mae on 28 unlabelled images" in page and "trained from scratch" in page


def test_linear_probe_keeps_the_backbone_in_eval_mode():
    """A linear probe trains the head on the features it is scored on: the frozen backbone's BatchNorm
    uses its loaded statistics and its dropout is off during training too."""
    from medvit.models import create_backbone
    from medvit.models.registry import _classifier_prefix
    from medvit.train.setup import train_mode

    model = create_backbone("cnn_test", num_classes=1, img_size=SIZE)
    head = _classifier_prefix(model)
    train_mode(model, load_config(None, ["train.freeze_backbone=true"]))
    states = {name: m.training for name, m in model.named_modules() if name}
    assert states[head] and not any(v for name, v in states.items() if not name.startswith(head))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the case is exercised
    train_mode(model, load_config(None, []))
    assert all(m.training for m in model.modules())


def test_layer_decay_scales_the_lr_by_depth():
    from medvit.models import create_backbone
    from medvit.train.setup import build_optimizer

    cfg = load_config(None, ["optim.layer_decay=0.5", "optim.lr=1e-3"])
    opt = build_optimizer(cfg, create_backbone("vit_test", img_size=SIZE, patch_size=8))
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs == [1e-3 * 0.5 ** k for k in (3, 2, 1, 0)]  # embeddings, 2 blocks, head (depth 2)


def test_mae_takes_a_rectangular_grid_from_the_model():
    from medvit.models import create_backbone
    from medvit.pretrain.base import strip_classifier
    from medvit.pretrain.mae import MAENet, reconstruct

    vit = create_backbone("vit_test", img_size=(32, 16), patch_size=8)
    strip_classifier(vit)
    net = MAENet(vit, 0.75, 32, 1, 2, True)
    assert net.grid == (4, 2)
    x = torch.rand(2, 1, 32, 16)
    loss, pred, mask = net.predict(x)
    assert loss.ndim == 0 and pred.shape == (2, 8, 64) and mask.sum(1).tolist() == [6, 6]
    masked, recon = reconstruct(net, x, pred, mask)
    assert masked.shape == recon.shape == (2, 32, 16)


@pytest.mark.parametrize("method", list(METHODS))
def test_kill_9_and_resume_matches_uninterrupted(unlabelled, tmp_path, method):
    """Every method: encoder, its decoder / heads (DINO: teacher and centre too), masks and views drawn
    after a kill -9 and resume end exactly as an uninterrupted run."""
    args = pretrain_args(unlabelled, method, "train.epochs=3", "train.ckpt_every=1")
    full = tmp_path / "full"
    fit(load_config(None, args), full)
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "medvit", "pretrain", "--out", str(run), *args]
    kill_once_logged(cmd, run, env)  # kill -9 once two steps are logged
    counters = load_checkpoint(run / "checkpoints" / "last.pt")["counters"]
    assert counters["stop_reason"] == "" and counters["step"] >= 1
    rc = subprocess.run([sys.executable, "-m", "medvit", "pretrain", "--resume", str(run)],
                        capture_output=True, text=True, timeout=300, env=env)
    assert rc.returncode == 0, rc.stderr
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (full, run))
    states = [(a["model"], b["model"]), (a["objective"]["net"], b["objective"]["net"])]  # encoder, decoder/heads
    if method == "dino":
        states.append((a["objective"]["teacher"], b["objective"]["teacher"]))
        assert torch.equal(a["objective"]["center"], b["objective"]["center"])
    for state_a, state_b in states:
        assert state_a.keys() == state_b.keys() and len(state_a) > 0
        for k, v in state_a.items():
            assert torch.equal(v, state_b[k]), k
    pd.testing.assert_frame_equal(pd.read_csv(full / "metrics_epoch.csv").drop(columns="elapsed"),
                                  pd.read_csv(run / "metrics_epoch.csv").drop(columns="elapsed"))


def test_label_efficiency_study_pairs_pretrained_and_scratch(labelled, tmp_path):
    """Reduced: one SimCLR encoder, fractions 0.5 and 1 of the training patients, one seed, on Ray."""
    import ray

    from medvit.studies import run_study

    data = tmp_path / "data"  # the module's labelled folder, with fold 2 as the --test-share split
    manifest = pd.read_csv(labelled / "manifest.csv")
    manifest["split"] = np.where(manifest["fold"] == 2, "test", "train")
    manifest.loc[manifest["split"] == "test", "fold"] = -1
    (data / "images").mkdir(parents=True)
    for name in manifest["cache"]:
        (data / name).write_bytes((labelled / name).read_bytes())
    manifest.to_csv(data / "manifest.csv", index=False)
    pre = tmp_path / "simclr"
    fit(load_config(None, pretrain_args(data, "simclr", "train.epochs=1")), pre)

    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}})
    try:
        out = tmp_path / "le"
        run_study("label-efficiency", out, overrides=[
            f"data.dir={data}", "data.workers=0", "train.epochs=2", "train.device=cpu", "data.batch_size=4",
            f"study.pretrained=[{pre}]", "study.points=[0.5,1.0]", "study.n_boot=50"], log=lambda s: None)
    finally:
        ray.shutdown()
    df = pd.read_csv(out / "results.csv")
    assert (df["status"] == "ok").all(), df["error"].tolist()
    # one scratch arm per backbone, patch and canvas
    assert sorted(df["arm"].unique()) == ["scratch-cnn_test-32x32", "simclr-cnn_test-32x32"]
    assert sorted(df["point"].unique()) == [0.5, 1.0] and (df["scored_on"] == "test").all()
    assert (df["n_test"] == 16).all()  # the same 4 held-out patients x 4 images in every arm
    half = load_checkpoint(Path(df.loc[df["point"] == 0.5, "run_dir"].iloc[0]) / "checkpoints" / "last.pt")
    assert half["config"]["data"]["label_fraction"] == 0.5
    tuned = df[df["arm"] == "simclr-cnn_test-32x32"]
    assert all(load_checkpoint(Path(r) / "checkpoints" / "last.pt")["init"]["method"] == "simclr"
               for r in tuned["run_dir"])
    import json

    tests = json.loads((out / "fit.json").read_text())["delong"]
    assert [(t["fraction"], t["n_test"]) for t in tests] == [(0.5, 16), (1.0, 16)]
    assert all(0 <= t["p"] <= 1 for t in tests)
    table = (out / "table.md").read_text()
    assert "paired DeLong" in table and "| simclr-cnn_test-32x32 | 0.5 |" in table
    assert (out / "label_efficiency.png").stat().st_size > 1000


def test_dino_multi_crop_on_a_cnn_and_plain_dino_on_a_vit(unlabelled, tmp_path):
    from medvit.errors import ConfigError

    run = tmp_path / "multi"
    fit(load_config(None, pretrain_args(unlabelled, "dino", "train.epochs=1", "pretrain.local_crops=2")), run)
    teacher = load_checkpoint(run / "checkpoints" / "last.pt")["objective"]["teacher"]
    assert "head.prototypes" in teacher
    vit = ["model.backbone=vit_test", "model.patch_size=8", "train.epochs=1"]
    fit(load_config(None, pretrain_args(unlabelled, "dino", *vit)), tmp_path / "vit")
    assert (tmp_path / "vit" / "checkpoints" / "last.pt").is_file()
    with pytest.raises(ConfigError, match="multi-crop"):
        fit(load_config(None, pretrain_args(unlabelled, "dino", *vit, "pretrain.local_crops=2")), tmp_path / "no")
    with pytest.raises(ConfigError, match="needs a vit backbone"):
        fit(load_config(None, pretrain_args(unlabelled, "mae", "model.backbone=cnn_test")), tmp_path / "no2")


def test_resume_refuses_another_set_up_naming_the_file(unlabelled, tmp_path, capsys):
    """`pretrain --resume` of a supervised run, or with a decoder of another width, is one clear error."""
    run = tmp_path / "mae"
    fit(load_config(None, pretrain_args(unlabelled, "mae", "train.epochs=1")), run)
    assert main(["pretrain", "--resume", str(run), "pretrain.decoder_dim=64"]) == 2
    err = capsys.readouterr().err
    assert str(run / "checkpoints" / "last.pt") in err and "cannot resume the mae objective" in err
    supervised = tmp_path / "sup"
    supervised.mkdir()
    (supervised / "config.yaml").write_text("train: {epochs: 1}\n")
    assert main(["pretrain", "--resume", str(supervised)]) == 2
    assert "not a pretraining run" in capsys.readouterr().err
