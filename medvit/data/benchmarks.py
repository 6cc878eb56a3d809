"""CIFAR-10 (python pickles) and MNIST (IDX) read from disk — never downloaded — plus tiny writers
of the same formats for tests and demos, label noise and stratified subsets (seed study 000).

The readers are a few lines of numpy so that no torchvision (and no network access) is needed.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medvit.data.datasets import resize_square, to_tensor
from medvit.data.transforms import apply_transform, item_seed
from medvit.errors import MedvitError
from medvit.io import atomic_path

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_FILES = {  # split -> (images, labels)
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_MAGIC = {1: 2049, 3: 2051}  # unsigned-byte IDX: 0x0000 08 <ndim>


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------- CIFAR-10

def _cifar_dir(root: str | Path) -> Path:
    root = Path(root)
    for d in (root / CIFAR_DIR, root):
        if (d / "test_batch").is_file():
            return d
    raise MedvitError(f"{root}: no CIFAR-10 python files ({CIFAR_DIR}/data_batch_1..5, test_batch); "
                      "download 'CIFAR-10 python version' and extract it there")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # the official format is a pickle; read trusted files only
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except FileNotFoundError as e:
        raise MedvitError(f"{path}: CIFAR-10 batch file missing") from e
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise MedvitError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise MedvitError(f"{path}: expected data N×3072 and N labels, got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(root: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and int64 labels; `root` holds cifar-10-batches-py/ or is it."""
    d = _cifar_dir(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [_read_cifar_batch(d / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_cifar10(root: str | Path, train_images: np.ndarray, train_labels, test_images: np.ndarray,
                  test_labels) -> Path:
    """Write (N, 32, 32, 3) uint8 arrays in the CIFAR-10 python format; returns the batches folder."""
    for images in (train_images, test_images):
        if np.ndim(images) != 4 or np.shape(images)[1:] != (32, 32, 3):
            raise MedvitError(f"write_cifar10: images must be (N, 32, 32, 3), got {np.shape(images)}")
    d = Path(root) / CIFAR_DIR
    d.mkdir(parents=True, exist_ok=True)

    def dump(name: str, images: np.ndarray, labels) -> None:
        data = np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), 3072)
        batch = {b"batch_label": name.encode(), b"labels": [int(x) for x in labels], b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))]}
        _atomic_write(d / name, pickle.dumps(batch, protocol=2))

    for i, idx in enumerate(np.array_split(np.arange(len(train_images)), 5), start=1):
        dump(f"data_batch_{i}", train_images[idx], np.asarray(train_labels)[idx])
    dump("test_batch", test_images, test_labels)
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    _atomic_write(d / "batches.meta", pickle.dumps(meta, protocol=2))
    return d


# ---------------------------------------------------------------- MNIST

def _mnist_file(root: Path, name: str) -> Path:
    for d in (root, root / "MNIST" / "raw", root / "raw"):
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise MedvitError(f"{root}: MNIST file {name} (or {name}.gz) not found; "
                      "put the four IDX files of MNIST there")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (big-endian header: magic, then one uint32 per dimension)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise MedvitError(f"{path}: cannot read ({e})") from e
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise MedvitError(f"{path}: too short for an IDX header")
    magic, *dims = np.frombuffer(raw, dtype=">u4", count=1 + ndim).tolist()
    if magic != IDX_MAGIC[ndim]:
        raise MedvitError(f"{path}: bad IDX magic number {magic} (expected {IDX_MAGIC[ndim]} for a "
                          f"{ndim}-D unsigned-byte array); is this the right MNIST file?")
    if len(raw) - header != int(np.prod(dims)):
        raise MedvitError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(root: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and int64 labels from the IDX files (optionally .gz) under `root`."""
    root = Path(root)
    img_name, lab_name = MNIST_FILES[bool(train)]
    img_path, lab_path = _mnist_file(root, img_name), _mnist_file(root, lab_name)
    images, labels = _read_idx(img_path, 3), _read_idx(lab_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise MedvitError(f"{img_path}: {len(images)} images but {lab_path} has {len(labels)} labels")
    return images, labels


def write_mnist(root: str | Path, train_images: np.ndarray, train_labels, test_images: np.ndarray,
                test_labels, gz: bool = False) -> Path:
    """Write (N, H, W) uint8 images and labels as the four MNIST IDX files (gzipped if `gz`)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def dump(name: str, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.uint8)
        data = np.array([IDX_MAGIC[array.ndim], *array.shape], dtype=">u4").tobytes() + array.tobytes()
        _atomic_write(root / (name + ".gz" if gz else name), gzip.compress(data) if gz else data)

    for train, (images, labels) in ((True, (train_images, train_labels)), (False, (test_images, test_labels))):
        dump(MNIST_FILES[train][0], images)
        dump(MNIST_FILES[train][1], labels)
    return root


# ---------------------------------------------------------------- datasets

class ArrayDataset(Dataset):
    """uint8 images (N, H, W) or (N, H, W, C) -> ((C, S, S) float tensor in [0, 1], label).

    `normalize=(mean, std)` (per channel or scalar) is applied after the optional augmentation.
    """

    def __init__(self, images: np.ndarray, labels, image_size: int = 32, ids: list[str] | None = None,
                 num_classes: int | None = None, normalize: tuple | None = None, transform=None,
                 seed: int = 0) -> None:
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise MedvitError(f"ArrayDataset: need (N,H,W[,C]) images and N labels, got {images.shape}, {len(labels)}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = int(image_size)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        self.num_classes = int(num_classes if num_classes is not None else self.labels.max() + 1)
        self.in_chans = 1 if images.ndim == 3 else int(images.shape[3])
        self.normalize = None if normalize is None else tuple(np.asarray(v, dtype=np.float32) for v in normalize)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = resize_square(self.images[index].astype(np.float32) / np.float32(255), self.image_size)
        image = apply_transform(self.transform, image, item_seed(self.seed, self.epoch, index))
        if self.normalize is not None:
            image = (image - self.normalize[0]) / self.normalize[1]
        return to_tensor(image), int(self.labels[index])


def label_noise(labels, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy of `labels` with round(fraction * N) of them, chosen at random, replaced by a random
    *other* class (seed study 000's label noise); deterministic in `seed`."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    if not 0.0 <= fraction <= 1.0:
        raise MedvitError(f"label noise fraction must be in [0, 1], got {fraction}")
    if fraction == 0.0:
        return labels
    if num_classes < 2:
        raise MedvitError("label noise needs at least 2 classes")
    rng = np.random.default_rng([int(seed), 7919])
    chosen = rng.choice(len(labels), size=round(fraction * len(labels)), replace=False)
    labels[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    return labels


def stratified_subset(labels, size: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified subset of `size` samples (sorted).

    Written by hand rather than with sklearn's train_test_split so that, for one seed, a smaller
    subset is always contained in a larger one (nested training sets for learning curves): each
    sample gets its quantile within its class under one seeded shuffle, and the `size` lowest
    quantiles are kept, so every class count is within one of proportional.
    """
    labels = np.asarray(labels)
    if not 0 < size <= len(labels):
        raise MedvitError(f"train_size {size} must be in [1, {len(labels)}]")
    order = np.random.default_rng([int(seed), 104729]).permutation(len(labels))
    quantile = np.empty(len(labels))
    for c in np.unique(labels):
        members = order[labels[order] == c]  # class c in shuffled order
        quantile[members] = (np.arange(len(members)) + 0.5) / len(members)
    keep = np.lexsort((np.argsort(order), quantile))[:size]  # ties broken by shuffled position
    return np.sort(keep)


def _to_gray(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 -> (N, H, W) luminance, in one cv2 call over the stacked images."""
    n, h, w, _ = images.shape
    return cv2.cvtColor(images.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w)


def benchmark_splits(name: str, root: str | Path, image_size: int = 32, noise: float = 0.0, seed: int = 0,
                     train_size: int | None = None, grayscale: bool = False, train_transform=None,
                     normalize: tuple | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) datasets of CIFAR-10 or MNIST: an optional stratified training subset, then label
    noise on the training labels only; ids are '<name>-<split>-<original index>'."""
    loaders = {"cifar10": load_cifar10, "mnist": load_mnist}
    if name not in loaders:
        raise MedvitError(f"unknown benchmark {name!r}: valid: {', '.join(loaders)}")
    (x_tr, y_tr), (x_te, y_te) = loaders[name](root, True), loaders[name](root, False)
    if grayscale and x_tr.ndim == 4:
        x_tr, x_te = _to_gray(x_tr), _to_gray(x_te)
    keep = np.arange(len(x_tr)) if train_size is None else stratified_subset(y_tr, train_size, seed)
    num_classes = 10
    y_noisy = label_noise(y_tr[keep], noise, num_classes, seed)
    train = ArrayDataset(x_tr[keep], y_noisy, image_size, [f"{name}-train-{i}" for i in keep],
                         num_classes, normalize, train_transform, seed)
    test = ArrayDataset(x_te, y_te, image_size, [f"{name}-test-{i}" for i in range(len(x_te))],
                        num_classes, normalize, None, seed)
    train.clean_labels = y_tr[keep]  # the labels before noise, for measuring memorisation
    return train, test


def benchmark_test_set(name: str, root: str | Path, image_size: int = 32) -> ArrayDataset:
    """The benchmark's official test split (CIFAR-10 test_batch, MNIST t10k), as `benchmark_splits`
    builds it: what `evaluate` and `compare` score for cifar10 / mnist runs."""
    loaders = {"cifar10": load_cifar10, "mnist": load_mnist}
    if name not in loaders:
        raise MedvitError(f"unknown benchmark {name!r}: valid: {', '.join(loaders)}")
    x_te, y_te = loaders[name](root, False)
    return ArrayDataset(x_te, y_te, image_size, [f"{name}-test-{i}" for i in range(len(x_te))], 10)
