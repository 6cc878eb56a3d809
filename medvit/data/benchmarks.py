"""CIFAR-10 (python pickles) and MNIST (IDX) read from disk — never downloaded — plus tiny writers
of the same formats for tests and demos, label noise and stratified subsets (seed study 000).

The readers are a few lines of numpy so that no torchvision (and no network access) is needed.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import pickle
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medvit.canvas import parse_size
from medvit.data.datasets import resize_to, to_tensor
from medvit.data.transforms import apply_transform, item_seed
from medvit.errors import MedvitError
from medvit.io import write_bytes

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_FILES = {  # split -> (images, labels)
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_MAGIC = {1: 2049, 3: 2051}  # unsigned-byte IDX: 0x0000 08 <ndim>
MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
FULL_SIZES = {"mnist": {True: 60000, False: 10000}, "cifar10": 10000}  # items per published file


@functools.lru_cache(maxsize=None)
def published_md5(dataset: str) -> dict[str, str]:
    """file name -> md5 of its (uncompressed) content, from data_manifests/<dataset>.yaml."""
    import yaml

    path = MANIFESTS / f"{dataset}.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {f["name"]: f["md5"] for f in data.get("files", [])}


def verify_md5(path: Path, raw: bytes, dataset: str, name: str, check: bool = True) -> None:
    """Fail naming the file, the published md5 and the one found. Called for full-size files only:
    the tiny files tests write in the same formats have no published checksum. `check=False`
    (data.verify_md5: false, for re-encoded sets of the published size) warns naming the file instead."""
    expected = published_md5(dataset).get(name)
    if expected is None:
        return
    if not check:
        warnings.warn(f"{path}: md5 check off (data.verify_md5: false): this full-size {dataset} file is used "
                      f"without comparing it with the published md5 (data_manifests/{dataset}.yaml)",
                      UserWarning, stacklevel=2)
        return
    found = hashlib.md5(raw).hexdigest()
    if found != expected:
        raise MedvitError(f"{path}: corrupt {dataset} file: md5 of its content is {found}, the published "
                          f"value is {expected} (data_manifests/{dataset}.yaml); download it again")


# ---------------------------------------------------------------- CIFAR-10

def _cifar_dir(root: str | Path) -> Path:
    root = Path(root)
    for d in (root / CIFAR_DIR, root):
        if (d / "test_batch").is_file():
            return d
    raise MedvitError(f"{root}: no CIFAR-10 python files ({CIFAR_DIR}/data_batch_1..5, test_batch); "
                      "download 'CIFAR-10 python version' and extract it there")


def _read_cifar_batch(path: Path, check_md5: bool = True) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise MedvitError(f"{path}: CIFAR-10 batch file missing") from e
    try:
        d = pickle.loads(raw, encoding="bytes")  # the official format is a pickle; read trusted files only
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, pickle.UnpicklingError) and "truncated" not in str(e):
            raise MedvitError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
        raise MedvitError(f"{path}: not a CIFAR-10 python batch: truncated (the pickle ends after {len(raw)} bytes; "
                          "a published batch is a complete pickle of 10000 images); download it again") from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise MedvitError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise MedvitError(f"{path}: expected data N×3072 and N labels, got {data.shape} and {len(labels)}")
    if len(data) == FULL_SIZES["cifar10"]:
        verify_md5(path, raw, "cifar10", path.name, check_md5)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(root: str | Path, train: bool, verify_md5: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and int64 labels; `root` holds cifar-10-batches-py/ or is it.
    Full-size batches are checked against the published md5s (data_manifests/cifar10.yaml) unless
    `verify_md5` is False (then a warning names each full-size file)."""
    d = _cifar_dir(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [_read_cifar_batch(d / n, verify_md5) for n in names]
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
        write_bytes(d / name, pickle.dumps(batch, protocol=2))

    for i, idx in enumerate(np.array_split(np.arange(len(train_images)), 5), start=1):
        dump(f"data_batch_{i}", train_images[idx], np.asarray(train_labels)[idx])
    dump("test_batch", test_images, test_labels)
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    write_bytes(d / "batches.meta", pickle.dumps(meta, protocol=2))
    return d


# ---------------------------------------------------------------- MNIST

def _mnist_file(root: Path, name: str) -> Path:
    for d in (root, root / "MNIST" / "raw", root / "raw"):
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise MedvitError(f"{root}: MNIST file {name} (or {name}.gz) not found; "
                      "put the four IDX files of MNIST there")


def _read_idx(path: Path, ndim: int, check_md5: bool = True) -> np.ndarray:
    """An unsigned-byte IDX array (big-endian header: magic, then one uint32 per dimension)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises EOFError on a truncated archive
        raise MedvitError(f"{path}: cannot read ({type(e).__name__}: {e}); a complete gzip/IDX file was "
                          "expected; download it again") from e
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise MedvitError(f"{path}: too short for an IDX header")
    magic, *dims = np.frombuffer(raw, dtype=">u4", count=1 + ndim).tolist()
    if magic != IDX_MAGIC[ndim]:
        raise MedvitError(f"{path}: bad IDX magic number {magic} (expected {IDX_MAGIC[ndim]} for a "
                          f"{ndim}-D unsigned-byte array); is this the right MNIST file?")
    if len(raw) - header != int(np.prod(dims)):
        raise MedvitError(f"{path}: truncated or padded IDX file: header says {dims} ({int(np.prod(dims))} "
                          f"bytes of data), file holds {len(raw) - header}; download it again")
    if dims[0] in FULL_SIZES["mnist"].values():
        verify_md5(path, raw, "mnist", path.name.removesuffix(".gz"), check_md5)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(root: str | Path, train: bool, verify_md5: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and int64 labels from the IDX files (optionally .gz) under `root`;
    full-size files are md5-checked as in `load_cifar10`."""
    root = Path(root)
    img_name, lab_name = MNIST_FILES[bool(train)]
    img_path, lab_path = _mnist_file(root, img_name), _mnist_file(root, lab_name)
    images, labels = _read_idx(img_path, 3, verify_md5), _read_idx(lab_path, 1, verify_md5).astype(np.int64)
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
        write_bytes(root / (name + ".gz" if gz else name), gzip.compress(data) if gz else data)

    for train, (images, labels) in ((True, (train_images, train_labels)), (False, (test_images, test_labels))):
        dump(MNIST_FILES[train][0], images)
        dump(MNIST_FILES[train][1], labels)
    return root


# ---------------------------------------------------------------- datasets

class ArrayDataset(Dataset):
    """uint8 images (N, H, W) or (N, H, W, C) -> ((C, S, S) float tensor in [0, 1], label).

    `normalize=(mean, std)` (per channel or scalar) is applied after the optional augmentation.
    Without a transform every item is a pure function of its index, so the images are resized
    once into one (N, C, S, S) tensor and batches are fetched by index (`__getitems__` with
    `collate_fn`): no per-item Python work, which would otherwise dominate a tiny seed model's
    step. `channels=3` repeats a grey image into three channels.
    """

    def __init__(self, images: np.ndarray, labels, image_size: int = 32, ids: list[str] | None = None,
                 num_classes: int | None = None, normalize: tuple | None = None, transform=None,
                 seed: int = 0, channels: int | None = None) -> None:
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise MedvitError(f"ArrayDataset: need (N,H,W[,C]) images and N labels, got {images.shape}, {len(labels)}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        h, w = parse_size(image_size, "data.image_size")
        if h != w:
            raise MedvitError(f"data.image_size {h}x{w}: CIFAR-10 and MNIST images are square; give one side "
                              "(e.g. 32); H x W canvases are for ingested mammograms")
        self.image_size = h
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        self.num_classes = int(num_classes if num_classes is not None else self.labels.max() + 1)
        own = 1 if images.ndim == 3 else int(images.shape[3])
        self.repeat = 1
        if channels not in (None, own):
            if own != 1 or channels != 3:
                raise MedvitError(f"ArrayDataset: cannot make {channels} channels from {own}")
            self.repeat = 3
        self.in_chans = own * self.repeat
        self.normalize = None if normalize is None else tuple(np.asarray(v, dtype=np.float32) for v in normalize)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self._batched = None  # (N, C, S, S) float tensor, built on first batched access

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = resize_to(self.images[index].astype(np.float32) / np.float32(255), self.image_size)
        image = apply_transform(self.transform, image, item_seed(self.seed, self.epoch, index))
        if self.normalize is not None:
            image = (image - self.normalize[0]) / self.normalize[1]
        tensor = to_tensor(image)
        return (tensor.repeat(self.repeat, 1, 1) if self.repeat > 1 else tensor), int(self.labels[index])

    def as_tensor(self) -> torch.Tensor:
        """Every item's image stacked, (N, C, S, S); the items are exactly __getitem__'s."""
        if self._batched is None:
            if self.transform is not None:
                raise MedvitError("ArrayDataset.as_tensor: items are augmented (random per epoch)")
            self._batched = torch.stack([self[i][0] for i in range(len(self))]) if len(self) else \
                torch.zeros(0, self.in_chans, self.image_size, self.image_size)
        return self._batched

    def __getitems__(self, indices: list[int]):
        """A whole batch by index (torch's DataLoader calls this instead of __getitem__)."""
        if self.transform is not None:
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        return BatchedItems(self.as_tensor()[idx], torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)]))

    @staticmethod
    def collate_fn(items):
        """Pass a batch from __getitems__ through; per-item lists (augmented) get the default collate."""
        if isinstance(items, BatchedItems):
            return items.images, items.labels
        from torch.utils.data import default_collate

        return default_collate(items)


class BatchedItems:
    """A batch fetched by index: (B, C, S, S) images and (B,) labels."""

    __slots__ = ("images", "labels")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels


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


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str, train: bool, stamp: tuple, verify_md5: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The decoded files, kept per process: a sweep worker runs many runs on the same files.
    `stamp` (sizes and mtimes) makes a changed file miss the cache. Arrays are read-only. The
    warnings of the read (unchecked md5s) are kept too, so every run that uses the files says so."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        x, y = {"cifar10": load_cifar10, "mnist": load_mnist}[name](root, train, verify_md5)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    x.flags.writeable = y.flags.writeable = False
    return x, y, tuple(str(w.message) for w in seen)


def _load(name: str, root: str | Path, train: bool, verify_md5: bool = True) -> tuple[np.ndarray, np.ndarray]:
    root = Path(root)
    dirs = [d for d in (root, root / CIFAR_DIR, root / "MNIST" / "raw", root / "raw") if d.is_dir()]
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                  for d in dirs for p in sorted(d.iterdir()) if p.is_file())
    x, y, notes = _load_cached(name, str(root.resolve()), bool(train), stamp, bool(verify_md5))
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return x, y


def _split_sizes(n: int, val_size: float) -> int:
    """val_size: a fraction of the training file (< 1) or a count (>= 1); 0 = no validation split."""
    if val_size < 0:
        raise MedvitError(f"data.val_size {val_size}: must be >= 0 (a fraction < 1 or a count)")
    k = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if k >= n:
        raise MedvitError(f"data.val_size {val_size}: leaves no training images out of {n}")
    return k


def benchmark_splits(name: str, root: str | Path, image_size: int = 32, noise: float = 0.0, seed: int = 0,
                     train_size: int | None = None, grayscale: bool = False, train_transform=None,
                     normalize: tuple | None = None, val_size: float = 0.0, classes: list | None = None,
                     channels: int | None = None, verify_md5: bool = True
                     ) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """(train, val, test) datasets of CIFAR-10 or MNIST; ids are '<name>-<split>-<original index>'.

    In order: keep only `classes` (relabelled 0..k-1 in the order given, e.g. [5, 8]); label
    noise on the whole training file, fixed per seed (so every subset of one seed sees the same
    noisy labels; test labels untouched); a class-stratified validation split of `val_size` carved
    from the training file (for picking checkpoints; the test split is for the end only); a nested,
    class-stratified `train_size` subset of the rest (learning curves). `channels`: 1 (grey), 3
    (grey repeated for MNIST) or None (the file's own). `verify_md5=False` uses full-size files
    whose md5 differs from the published one (a warning names each file)."""
    if name not in ("cifar10", "mnist"):
        raise MedvitError(f"unknown benchmark {name!r}: valid: cifar10, mnist")
    (x_tr, y_tr), (x_te, y_te) = _load(name, root, True, verify_md5), _load(name, root, False, verify_md5)
    if channels not in (None, 1, 3):
        raise MedvitError(f"data.channels {channels}: valid: 1, 3 (or null for the data's own)")
    if (grayscale or channels == 1) and x_tr.ndim == 4:
        x_tr, x_te = _to_gray(x_tr), _to_gray(x_te)
    num_classes = 10
    idx_tr, idx_te = np.arange(len(x_tr)), np.arange(len(x_te))
    if classes:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes) or not all(0 <= c < 10 for c in classes) or len(classes) < 2:
            raise MedvitError(f"data.classes {classes}: need at least two distinct classes out of 0-9")
        remap = np.full(10, -1)
        remap[classes] = np.arange(len(classes))
        idx_tr, idx_te = idx_tr[np.isin(y_tr, classes)], idx_te[np.isin(y_te, classes)]
        y_tr, y_te = remap[y_tr], remap[y_te]
        num_classes = len(classes)
    y_noisy = y_tr.copy()
    y_noisy[idx_tr] = label_noise(y_tr[idx_tr], noise, num_classes, seed)
    n_val = _split_sizes(len(idx_tr), val_size)
    val_idx = idx_tr[stratified_subset(y_tr[idx_tr], n_val, seed + 1_000_003)] if n_val else idx_tr[:0]
    rest = np.setdiff1d(idx_tr, val_idx)
    keep = rest if train_size is None else rest[stratified_subset(y_tr[rest], train_size, seed)]

    def make(x, y, idx, split, transform):
        ds = ArrayDataset(x[idx], y[idx], image_size, [f"{name}-{split}-{i}" for i in idx], num_classes,
                          normalize, transform, seed, channels if channels == 3 else None)
        return ds

    train = make(x_tr, y_noisy, keep, "train", train_transform)
    train.clean_labels = y_tr[keep]  # the labels before noise, for measuring memorisation
    val = make(x_tr, y_noisy, val_idx, "train", None)  # carved from the (noisy) training file
    test = make(x_te, y_te, idx_te, "test", None)
    return train, val, test
