"""Manifest reading, fold splits, the mammography dataset and the augmentation pipeline."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from medvit.data.datasets import MammoDataset, mammo_splits, read_manifest
from medvit.data.transforms import apply_transform, build_transform, item_seed
from medvit.errors import ConfigError, MedvitError

SIZE = 64  # stored image size in these tests (ingest stores 512)


def make_data_dir(root, n=12, folds=3, size=SIZE):
    """A tiny ingest output: images/<id>.npy (uint16 ramps) + manifest.csv with ok/error/unlabelled rows."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        image_id = f"{1000 + i}"
        img = np.zeros((size, size), np.uint16)
        img[:, : size // 2] = np.linspace(0, 65535, size // 2, dtype=np.uint16)[None, :]  # tissue on the left
        img[0, 0] = 65535
        np.save(root / "images" / f"{image_id}.npy", img)
        rows.append(dict(image_id=image_id, patient_id=f"0{i // 2}", laterality="LR"[i % 2], view="CC",
                         label=i % 2, fold=i % folds, status="ok", error="", path=f"p/{image_id}.dcm",
                         cache=f"images/{image_id}.npy", rows=size, columns=size))
    rows.append(dict(image_id="9998", patient_id="077", laterality="L", view="MLO", label=1, fold=0,
                     status="error", error="not_dicom", path="p/9998.dcm", cache="", rows=0, columns=0))
    rows.append(dict(image_id="9999", patient_id="078", laterality="L", view="MLO", label=None, fold=-1,
                     status="ok", error="", path="p/9999.dcm", cache="images/1000.npy", rows=size, columns=size))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture
def data_dir(tmp_path):
    return make_data_dir(tmp_path / "d")


def test_read_manifest_keeps_ids_as_strings(data_dir):
    frame = read_manifest(data_dir)
    assert frame["patient_id"].iloc[0] == "00"  # leading zero survives
    assert all(isinstance(v, str) for v in frame["image_id"]) and frame["image_id"].iloc[0] == "1000"
    assert np.isnan(frame["label"].iloc[-1]) and frame["fold"].iloc[-1] == -1


def test_read_manifest_errors_name_the_file(tmp_path, data_dir):
    with pytest.raises(MedvitError, match="manifest.csv.*not found"):
        read_manifest(tmp_path / "nowhere")
    frame = pd.read_csv(data_dir / "manifest.csv").drop(columns=["fold", "cache"])
    frame.to_csv(data_dir / "manifest.csv", index=False)
    with pytest.raises(MedvitError, match=r"manifest.csv: manifest lacks column\(s\) fold, cache"):
        read_manifest(data_dir)


def test_fold_split_is_disjoint_and_validates_on_fold(data_dir):
    seen = set()
    for k in range(3):
        train, val = mammo_splits(data_dir, k)
        assert set(train.ids).isdisjoint(val.ids)
        assert (val.frame["fold"] == k).all() and (train.frame["fold"] != k).all()
        assert len(train) + len(val) == 12  # error row and unlabelled row excluded
        assert "9998" not in train.ids + val.ids and "9999" not in train.ids + val.ids
        seen.update(val.ids)
    assert len(seen) == 12  # every labelled image validated exactly once over the folds


def test_missing_fold_lists_folds_present(data_dir):
    with pytest.raises(MedvitError, match=r"fold 7.*folds present: \[0, 1, 2\]"):
        mammo_splits(data_dir, 7)
    frame = pd.read_csv(data_dir / "manifest.csv")
    frame.assign(status="error").to_csv(data_dir / "manifest.csv", index=False)
    with pytest.raises(MedvitError, match=r"no labelled, successfully ingested images \(14 rows, 0 ok, 14 errors\)"):
        mammo_splits(data_dir, 0)


def test_item_shape_dtype_scaling_and_labels(data_dir):
    train, _ = mammo_splits(data_dir, 0, image_size=SIZE)
    x, y = train[0]
    assert x.shape == (1, SIZE, SIZE) and x.dtype == torch.float32
    assert x.max().item() == 1.0 and x.min().item() == 0.0
    assert y == int(train.frame["label"].iloc[0])
    assert train.labels.dtype == np.int64 and list(train.labels) == train.frame["label"].astype(int).tolist()
    assert train.in_chans == 1 and train.num_classes == 2


def test_unlabelled_item_has_label_minus_one(data_dir):
    frame = read_manifest(data_dir)
    ds = MammoDataset(data_dir, frame[frame["image_id"] == "9999"], image_size=SIZE)
    assert ds[0][1] == -1 and ds.labels.tolist() == [-1]


def test_resize_to_image_size(data_dir):
    train, _ = mammo_splits(data_dir, 0, image_size=32)
    x, _ = train[1]
    assert x.shape == (1, 32, 32)
    ref = torch.from_numpy(np.load(data_dir / train.frame["cache"].iloc[1]).astype(np.float32) / 65535)
    area = torch.nn.functional.avg_pool2d(ref[None, None], 2)[0]  # INTER_AREA by 2 == 2x2 mean
    assert torch.allclose(x, area, atol=1e-5)


def test_unreadable_cache_names_file(data_dir):
    train, _ = mammo_splits(data_dir, 0, image_size=SIZE)
    path = data_dir / train.frame["cache"].iloc[0]
    path.write_bytes(b"not numpy")
    with pytest.raises(MedvitError, match=str(path.name)):
        train[0]


# ---------------------------------------------------------------- transforms

AUG = {"vflip": 0.5, "affine": {"p": 1.0, "rotate": 15}, "brightness_contrast": {"p": 1.0}, "gamma": {"p": 1.0}}


def test_transform_off_at_validation_and_when_empty():
    assert build_transform(AUG, train=False) is None
    assert build_transform({}, train=True) is None and build_transform(None, train=True) is None
    assert build_transform(AUG, train=True) is not None


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"augment\.vfilp.*'vflip'"):
        build_transform({"vfilp": 0.5}, train=True)
    with pytest.raises(ConfigError, match=r"augment\.affine\.rotation.*'rotate'"):
        build_transform({"affine": {"rotation": 5}}, train=True)
    with pytest.raises(ConfigError, match="vflip"):
        build_transform({"vflip": 2}, train=False)  # validated at validation too


def test_transform_output_in_unit_range_and_seeded():
    t = build_transform({**AUG, "brightness_contrast": {"brightness": 0.5, "contrast": 0.5, "p": 1.0}}, train=True)
    img = np.random.default_rng(0).random((48, 48), dtype=np.float32)
    outs = [apply_transform(t, img.copy(), s) for s in (1, 2, 1)]
    for o in outs:
        assert o.shape == (48, 48) and o.dtype == np.float32 and o.min() >= 0 and o.max() <= 1
    assert np.array_equal(outs[0], outs[2]) and not np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], img)


def test_hflip_is_off_by_default():
    t = build_transform({"vflip": 0.0, "affine": False, "brightness_contrast": False, "gamma": False,
                         "hflip": 0.0}, train=True)
    assert t is None  # nothing left on
    t = build_transform({"affine": False, "brightness_contrast": False, "gamma": False}, train=True)
    assert [type(s).__name__ for s in t.transforms] == ["VerticalFlip"]


def test_item_augmentation_depends_only_on_seed_epoch_index(data_dir):
    """Same (seed, epoch, index) -> same tensor, whatever was drawn before (resume, workers)."""
    t = build_transform(AUG, train=True)
    train, _ = mammo_splits(data_dir, 0, image_size=SIZE, train_transform=t, seed=5)
    train.set_epoch(3)
    first = train[2][0]
    for i in (0, 1, 4):  # draw other items in between
        train[i]
    assert torch.equal(train[2][0], first)
    other, _ = mammo_splits(data_dir, 0, image_size=SIZE, train_transform=build_transform(AUG, train=True), seed=5)
    other.set_epoch(3)
    assert torch.equal(other[2][0], first)  # a fresh process/dataset reproduces it
    other.set_epoch(4)
    assert not torch.equal(other[2][0], first)
    assert item_seed(5, 3, 2) != item_seed(5, 3, 1) != item_seed(6, 3, 1)


def test_helpers_live_where_a_newcomer_looks(tmp_path, monkeypatch):
    """Issue 11: one manifest reader (ingest_size reads through read_manifest), one constant for
    the 512 default, quiet_pydicom beside the DICOM reader, model_input beside the models."""
    import inspect
    import logging

    import medvit.data.datasets as datasets
    import medvit.ingest_workers as workers
    from fake_cache import make_manifest
    from medvit.commands.ingest import register
    from medvit.dicom import DEFAULT_SIZE
    from medvit.dicom.normalize import preprocess
    from medvit.dicom.read import quiet_pydicom
    from medvit.ingest import ingest_size
    from medvit.models import create_backbone
    from medvit.models.inputs import model_input

    data = make_manifest(tmp_path / "d", 24, n_patients=2)
    frame = pd.read_csv(data / "manifest.csv")
    frame.assign(settings="size=24;v=4").to_csv(data / "manifest.csv", index=False)
    import medvit.ingest
    import medvit.manifest

    assert datasets.read_manifest is medvit.manifest.read_manifest  # the one reader, beside the writer
    calls = []
    real = medvit.manifest.read_manifest
    monkeypatch.setattr(medvit.ingest, "read_manifest", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert ingest_size(data) == (24, 24) and calls
    # reading the ingest size costs no torch import (predict and train call it before any model)
    code = ("import sys, medvit.ingest as i; assert i.ingest_size(sys.argv[1]) == (24, 24); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(data)], check=True)
    assert ingest_size(tmp_path / "nowhere") == (DEFAULT_SIZE, DEFAULT_SIZE) == (512, 512)
    for fn in (preprocess, create_backbone, datasets.MammoDataset.__init__, datasets.mammo_splits):
        params = inspect.signature(fn).parameters
        assert DEFAULT_SIZE in {params[k].default for k in ("size", "img_size", "image_size") if k in params}
    assert not hasattr(workers, "quiet_pydicom")
    logger = logging.getLogger("pydicom")
    with quiet_pydicom():
        assert logger.level == logging.CRITICAL
    assert model_input(np.zeros((8, 8), np.uint16), 4).shape == (1, 4, 4)
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    assert sub.choices["ingest"].parse_args(["src"]).size == DEFAULT_SIZE
