"""CIFAR-10 / MNIST readers and writers, label noise, stratified subsets, ArrayDataset items."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from medvit.data.benchmarks import (MNIST_FILES, ArrayDataset, benchmark_splits, label_noise, load_cifar10, load_mnist,
                                    stratified_subset, write_cifar10, write_mnist)
from medvit.data.transforms import build_transform
from medvit.errors import MedvitError

rng = np.random.default_rng(0)


def fake(n, shape):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % 10


def test_cifar_round_trip(tmp_path):
    (xtr, ytr), (xte, yte) = fake(23, (32, 32, 3)), fake(7, (32, 32, 3))
    d = write_cifar10(tmp_path, xtr, ytr, xte, yte)
    assert sorted(p.name for p in d.iterdir()) == ["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3",
                                                   "data_batch_4", "data_batch_5", "test_batch"]
    for root in (tmp_path, d):  # the parent or the batches folder itself
        x, y = load_cifar10(root, train=True)
        assert x.dtype == np.uint8 and np.array_equal(x, xtr) and np.array_equal(y, ytr)
    x, y = load_cifar10(tmp_path, train=False)
    assert np.array_equal(x, xte) and y.dtype == np.int64 and np.array_equal(y, yte)


def test_cifar_channel_order_matches_the_format(tmp_path):
    """The format stores 1024 R, then 1024 G, then 1024 B bytes, each row-major."""
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 0, 1, 2] = 200  # row 0, column 1, blue
    write_cifar10(tmp_path, img, [3], img, [3])
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        data = pickle.load(f, encoding="bytes")[b"data"]
    assert data[0, 2 * 1024 + 1] == 200 and data[0].sum() == 200


def test_cifar_errors_name_the_file(tmp_path):
    with pytest.raises(MedvitError, match="no CIFAR-10 python files"):
        load_cifar10(tmp_path, train=True)
    write_cifar10(tmp_path, *fake(10, (32, 32, 3)), *fake(2, (32, 32, 3)))
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"garbage")
    with pytest.raises(MedvitError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_cifar10(tmp_path, train=True)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    (xtr, ytr), (xte, yte) = fake(15, (28, 28)), fake(4, (28, 28))
    write_mnist(tmp_path, xtr, ytr, xte, yte, gz=gz)
    assert (tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).is_file()
    x, y = load_mnist(tmp_path, train=True)
    assert x.shape == (15, 28, 28) and np.array_equal(x, xtr) and np.array_equal(y, ytr)
    x, y = load_mnist(tmp_path, train=False)
    assert np.array_equal(x, xte) and np.array_equal(y, yte)


def test_mnist_header_is_the_real_idx_layout(tmp_path):
    write_mnist(tmp_path, *fake(3, (28, 28)), *fake(1, (28, 28)), gz=True)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz") as f:
        head = f.read(16)
    assert head == bytes.fromhex("00000803" "00000003" "0000001c" "0000001c")


def test_mnist_bad_magic_and_missing_file(tmp_path):
    write_mnist(tmp_path, *fake(3, (28, 28)), *fake(1, (28, 28)))
    lab = tmp_path / "train-labels-idx1-ubyte"
    lab.write_bytes(bytes.fromhex("00000803") + lab.read_bytes()[4:])  # image magic on a label file
    with pytest.raises(MedvitError, match="train-labels-idx1-ubyte: bad IDX magic number 2051"):
        load_mnist(tmp_path, train=True)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(MedvitError, match="t10k-images-idx3-ubyte.*not found"):
        load_mnist(tmp_path, train=False)


def test_mnist_truncated_file(tmp_path):
    write_mnist(tmp_path, *fake(3, (28, 28)), *fake(1, (28, 28)))
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-10])
    with pytest.raises(MedvitError, match="train-images-idx3-ubyte: truncated or padded IDX file: header says"):
        load_mnist(tmp_path, train=True)


def test_label_noise_fraction_other_class_and_determinism():
    labels = np.arange(1000) % 10
    noisy = label_noise(labels, 0.2, 10, seed=1)
    changed = noisy != labels
    assert changed.sum() == 200  # exactly the fraction, and each changed label is another class
    assert noisy.min() >= 0 and noisy.max() <= 9
    assert np.array_equal(label_noise(labels, 0.2, 10, seed=1), noisy)
    assert not np.array_equal(label_noise(labels, 0.2, 10, seed=2), noisy)
    assert np.array_equal(label_noise(labels, 0.0, 10, seed=1), labels)
    assert len(set(noisy[changed].tolist())) == 10  # replacements spread over the classes


def test_stratified_subset_is_proportional_nested_and_seeded():
    labels = np.array([0] * 500 + [1] * 300 + [2] * 200)
    small, big = stratified_subset(labels, 50, seed=0), stratified_subset(labels, 200, seed=0)
    assert len(small) == 50 and len(np.unique(small)) == 50
    for idx, size in ((small, 50), (big, 200)):
        counts = np.bincount(labels[idx], minlength=3)
        assert np.all(np.abs(counts - size * np.array([0.5, 0.3, 0.2])) <= 1)
    assert set(small) <= set(big)  # nested: learning-curve training sets grow
    assert np.array_equal(stratified_subset(labels, 50, seed=0), small)
    assert not np.array_equal(stratified_subset(labels, 50, seed=1), small)


def test_benchmark_splits_mnist_resized_with_noise_and_subset(tmp_path):
    (xtr, ytr), (xte, yte) = fake(40, (28, 28)), fake(10, (28, 28))
    write_mnist(tmp_path, xtr, ytr, xte, yte)
    train, val, test = benchmark_splits("mnist", tmp_path, image_size=32, noise=0.25, seed=0, train_size=20)
    assert len(train) == 20 and len(val) == 0 and len(test) == 10 and train.in_chans == 1 and train.num_classes == 10
    x, y = train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert 0 < (train.labels != train.clean_labels).sum() < 20  # noise (on the whole file) on training labels
    assert np.array_equal(test.labels, yte)
    kept = [int(i.rsplit("-", 1)[1]) for i in train.ids]
    assert np.array_equal(train.clean_labels, ytr[kept]) and train.ids[0].startswith("mnist-train-")
    assert np.bincount(train.labels.clip(0), minlength=10).sum() == 20


def test_benchmark_splits_cifar_grayscale_and_values(tmp_path):
    (xtr, ytr), (xte, yte) = fake(12, (32, 32, 3)), fake(3, (32, 32, 3))
    write_cifar10(tmp_path, xtr, ytr, xte, yte)
    train, _, test = benchmark_splits("cifar10", tmp_path)
    x, y = test[1]
    assert x.shape == (3, 32, 32) and y == yte[1]
    assert torch.allclose(x, torch.from_numpy(xte[1].transpose(2, 0, 1) / 255.0).float())
    gray, _, _ = benchmark_splits("cifar10", tmp_path, grayscale=True)
    assert gray.in_chans == 1 and gray[0][0].shape == (1, 32, 32)
    with pytest.raises(MedvitError, match="unknown benchmark 'svhn'"):
        benchmark_splits("svhn", tmp_path)


def test_array_dataset_normalise_and_seeded_augmentation():
    images, labels = fake(6, (28, 28))
    aug = build_transform({"vflip": 0.5, "affine": {"p": 1.0}}, train=True)
    ds = ArrayDataset(images, labels, 32, normalize=(0.5, 0.25), transform=aug, seed=3)
    ds.set_epoch(1)
    a = ds[4][0]
    ds[0], ds[5]
    assert torch.equal(ds[4][0], a) and a.shape == (1, 32, 32)
    assert a.min() < 0  # normalised: (0 - 0.5) / 0.25 = -2 where padding/black
    ds.set_epoch(2)
    assert not torch.equal(ds[4][0], a)


def test_validation_split_classes_noise_channels_and_nesting(tmp_path):
    """The validation split is carved from the training file (class-balanced, disjoint from every
    training subset), noise is fixed per seed on the whole file (a sample keeps its noisy label in
    every nested subset), test labels stay clean; two-class subsets are relabelled 0/1."""
    (xtr, ytr), (xte, yte) = fake(200, (28, 28)), fake(30, (28, 28))
    write_mnist(tmp_path, xtr, ytr, xte, yte, gz=True)
    small, val, test = benchmark_splits("mnist", tmp_path, noise=0.2, seed=3, train_size=40, val_size=0.1)
    big, val2, _ = benchmark_splits("mnist", tmp_path, noise=0.2, seed=3, train_size=120, val_size=0.1)
    val_clean = ytr[[int(i.rsplit("-", 1)[1]) for i in val.ids]]
    assert len(val) == 20 and np.bincount(val_clean, minlength=10).tolist() == [2] * 10
    assert val.ids == val2.ids and not set(val.ids) & set(big.ids)
    assert set(small.ids) <= set(big.ids)  # nested
    noisy_big = dict(zip(big.ids, big.labels))
    assert all(noisy_big[i] == lab for i, lab in zip(small.ids, small.labels))  # same noisy label in both
    assert np.array_equal(test.labels, yte)
    pair, _, pair_test = benchmark_splits("mnist", tmp_path, classes=[5, 8], channels=3, val_size=4)
    originals = ytr[[int(i.rsplit("-", 1)[1]) for i in pair.ids]]
    assert set(originals) == {5, 8} and np.array_equal(pair.labels, (originals == 8).astype(int))
    assert pair.num_classes == 2 and pair.in_chans == 3 and pair[0][0].shape == (3, 32, 32)
    assert torch.equal(pair[0][0][0], pair[0][0][2]) and set(pair_test.labels) == {0, 1}
    with pytest.raises(MedvitError, match="data.classes"):
        benchmark_splits("mnist", tmp_path, classes=[5])


def test_batches_by_index_equal_items(tmp_path):
    """The batch-by-index path (what the trainer's DataLoader uses) returns exactly the items."""
    from torch.utils.data import DataLoader

    images, labels = fake(9, (28, 28))
    ds = ArrayDataset(images, labels, 32, normalize=(0.5, 0.25))
    loader = DataLoader(ds, batch_sampler=[[4, 0, 7], [1]], collate_fn=ds.collate_fn)
    (x, y), (x2, y2) = list(loader)
    assert torch.equal(x, torch.stack([ds[i][0] for i in (4, 0, 7)])) and y.tolist() == labels[[4, 0, 7]].tolist()
    assert x2.shape == (1, 1, 32, 32) and y.dtype == torch.int64


def _full_size_mnist_labels(path, n=10000):
    data = np.array([2049, n], dtype=">u4").tobytes() + (np.arange(n) % 10).astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data))


def test_full_size_files_are_checked_against_published_md5(tmp_path):
    """A full-size file (10000 test labels) is checked against data_manifests/mnist.yaml: this one
    is not the published file, so the error names the file, the md5 expected and the one found."""
    write_mnist(tmp_path, *fake(3, (28, 28)), *fake(1, (28, 28)), gz=True)
    _full_size_mnist_labels(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(MedvitError, match=r"t10k-labels-idx1-ubyte.gz: corrupt mnist file: md5 of its content is "
                                          r"[0-9a-f]{32}, the published value is 27ae3e4e09519cfbb04c329615203637"):
        load_mnist(tmp_path, train=False)


def test_md5_check_can_be_turned_off_with_a_warning_naming_the_file(tmp_path):
    """A re-encoded set of the published size (here: 10000 test images and labels that are not the
    published bytes) fails by default and is read with data.verify_md5: false, with a warning."""
    from medvit.config import load_config
    from medvit.train.setup import build_data

    write_mnist(tmp_path, *fake(20, (28, 28)), *fake(1, (28, 28)), gz=True)
    _full_size_mnist_labels(tmp_path / "t10k-labels-idx1-ubyte.gz")
    images = np.zeros((10000, 28, 28), dtype=np.uint8)  # all-zero: cheap to write, gzip shrinks it
    images[:, 10:18, 10:18] = 255
    header = np.array([2051, 10000, 28, 28], dtype=">u4").tobytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes(), compresslevel=1))
    with pytest.raises(MedvitError, match="t10k-images-idx3-ubyte.gz: corrupt mnist file"):
        benchmark_splits("mnist", tmp_path, image_size=28)
    with pytest.warns(UserWarning) as seen:
        x, y = load_mnist(tmp_path, train=False, verify_md5=False)
    assert x.shape == (10000, 28, 28) and y[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    names = {Path(str(w.message).split(": md5 check off (data.verify_md5: false)")[0]).name for w in seen}
    assert names == {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}  # each full-size file, named
    cfg = load_config(None, [f"data.dir={tmp_path}", "data.kind=mnist", "data.verify_md5=false", "data.val_size=0",
                             "data.image_size=28"])
    with pytest.warns(UserWarning, match="md5 check off") as seen:
        data = build_data(cfg)  # the trainer's data path reads the flag
    assert len(data.test) == 10000 and len(data.train) == 20 and len(seen) == 2
    assert load_config(None, []).data.verify_md5 is True  # on by default
    from medvit.train import fit

    cfg = load_config(None, [f"data.dir={tmp_path}", "data.kind=mnist", "data.verify_md5=false", "data.val_size=0",
                             "model.backbone=basic_cnn", "train.max_steps=1", "data.workers=0", "data.batch_size=4"])
    fit(cfg, tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "t10k-images-idx3-ubyte.gz: md5 check off" in log  # the run's own log names the unchecked file


def test_truncated_gzip_and_cifar_batch_name_the_file(tmp_path):
    write_mnist(tmp_path / "m", *fake(3, (28, 28)), *fake(1, (28, 28)), gz=True)
    gz = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-12])
    with pytest.raises(MedvitError, match="train-images-idx3-ubyte.gz: cannot read .*complete gzip"):
        load_mnist(tmp_path / "m", train=True)
    write_cifar10(tmp_path / "c", *fake(10, (32, 32, 3)), *fake(2, (32, 32, 3)))
    batch = tmp_path / "c" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(MedvitError, match="test_batch: not a CIFAR-10 python batch: truncated"):
        load_cifar10(tmp_path / "c", train=False)


def test_published_checksums_cover_every_file():
    from medvit.data.benchmarks import published_md5

    assert set(published_md5("mnist")) == {n for pair in MNIST_FILES.values() for n in pair}
    assert set(published_md5("cifar10")) >= {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"}
