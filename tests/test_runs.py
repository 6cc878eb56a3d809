"""The one run loader (medvit.runs): a run folder or checkpoint resolved once, used by every command;
parameters and training time computed in one place."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fake_cache import make_manifest
from medvit.config import load_config
from medvit.train import fit
from medvit.train.checkpoint import count_parameters, load_checkpoint, save_checkpoint

SIZE = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny CNN run stopped mid-epoch (max_steps), so last.pt is later than the last epoch row."""
    root = tmp_path_factory.mktemp("runs")
    data = make_manifest(root / "data", SIZE, n_patients=6)
    cfg = load_config(None, [f"data.dir={data}", f"data.image_size={SIZE}", "data.batch_size=4", "data.workers=0",
                             "model.backbone=cnn_test", "train.epochs=2", "train.max_steps=7", "train.log_every=1"])
    fit(cfg, root / "run")
    return root / "run"


def test_folder_and_file_resolve_to_the_same_run(run):
    from medvit.runs import load_run

    by_dir = load_run(run, "last", "cpu")
    by_file = load_run(run / "checkpoints" / "last.pt", "best", "cpu")
    assert by_dir.run_dir == by_file.run_dir == run
    assert by_dir.checkpoint == by_file.checkpoint == run / "checkpoints" / "last.pt"
    assert by_dir.model is by_dir.model  # built once
    assert not by_dir.model.training and by_dir.kind == "cnn" and by_dir.binary
    assert by_dir.image_size == (SIZE, SIZE) and by_dir.in_chans == 1


def test_parameters_counted_once_without_buffers(run):
    """Issue 14: the studies counted floating state-dict tensors (BatchNorm statistics included)."""
    from medvit.models import create_backbone
    from medvit.runs import load_run

    loaded = load_run(run, "last", "cpu")
    assert loaded.ckpt["params"] == count_parameters(loaded.model) == loaded.params
    vgg = create_backbone("vgg_cifar", num_classes=10, in_chans=3, img_size=32)
    floats = sum(v.numel() for v in vgg.state_dict().values() if v.is_floating_point())
    assert count_parameters(vgg) == 5_852_234 and floats == 5_853_130  # VGGCifar's docstring vs the old count


def test_training_time_is_the_last_checkpoint_counter(run, tmp_path):
    """One training time: last.pt's counter (the run stopped mid-epoch: later than the CSV's last row),
    read the same whichever checkpoint was loaded."""
    import pandas as pd

    from medvit.runs import load_run

    last = load_checkpoint(run / "checkpoints" / "last.pt")
    elapsed = float(last["counters"]["elapsed"])
    assert load_run(run, "last", "cpu").training_seconds == pytest.approx(elapsed)
    assert load_run(run, "best", "cpu").training_seconds == pytest.approx(elapsed)
    epochs = pd.read_csv(run / "metrics_epoch.csv")
    assert last["counters"]["step"] == 7 and elapsed >= float(epochs["elapsed"].iloc[-1])


def test_evaluate_takes_a_loaded_run_and_records_the_canvas(run, tmp_path):
    from medvit.evaluate import evaluate
    from medvit.runs import load_run

    loaded = load_run(run, "last", "cpu")
    report = evaluate(loaded, n_boot=0, plots=False, out=tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["image_size"] == f"{SIZE}x{SIZE}" and saved["canvas"] == report["canvas"]
    assert saved["checkpoint"] == str(run / "checkpoints" / "last.pt")


def test_old_checkpoint_canvas_falls_back(run, tmp_path):
    """Checkpoints from before canvases carry `ingest_size` (a side) or nothing."""
    from medvit.runs import load_run

    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    ck.pop("canvas", None)
    ck["ingest_size"] = 40
    assert load_run(save_checkpoint(ck, tmp_path / "a.pt"), device="cpu").ingest_size == (40, 40)
    ck["canvas"] = "64x32"
    assert load_run(save_checkpoint(ck, tmp_path / "b.pt"), device="cpu").ingest_size == (64, 32)
    loaded = torch.load(tmp_path / "b.pt", weights_only=True)
    assert loaded["canvas"] == "64x32"
