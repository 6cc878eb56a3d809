"""Mammography dataset over the ingest output: DATA_DIR/manifest.csv + DATA_DIR/images/<image_id>.npy.

Every medvit dataset yields `(image (C, H, W) float32 tensor, label int)` and exposes `.labels`
(int64, read without loading images), `.ids`, `.num_classes`, `.in_chans` and `set_epoch(e)`,
so one trainer serves mammograms, CIFAR-10 and MNIST.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medvit.canvas import parse_size
from medvit.data.transforms import apply_transform, item_seed
from medvit.dicom import DEFAULT_SIZE
from medvit.errors import MedvitError
from medvit.manifest import MANIFEST, read_manifest  # noqa: F401 (the one reader lives beside the writer)



def unit_float(image: np.ndarray) -> np.ndarray:
    """An image as float32 in [0, 1]: integers over their dtype's maximum, floats clipped.
    The one conversion used by training, predict and the overlays."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def resize_to(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (H, W[, C]) to the canvas `size` (a side, or (H', W')): INTER_AREA to shrink,
    bilinear to enlarge."""
    th, tw = parse_size(size)
    h, w = image.shape[:2]
    if (h, w) == (th, tw):
        return image
    interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
    out = cv2.resize(image, (tw, th), interpolation=interp)
    return out if out.ndim == image.ndim else out[..., None]  # cv2 drops a trailing channel of 1


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) float32 -> (C, H, W) tensor."""
    if image.ndim == 2:
        image = image[None]
    else:
        image = image.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))


class MammoDataset(Dataset):
    """Cached mammograms listed in `frame`: items are ((1, H, W) in [0, 1], label or -1), H x W
    the model input canvas `image_size` (a side or (H, W))."""

    in_chans = 1

    def __init__(self, data_dir: str | Path, frame: pd.DataFrame, image_size: int | tuple[int, int] = DEFAULT_SIZE,
                 transform=None, seed: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.frame = frame.reset_index(drop=True)
        self.image_size = parse_size(image_size, "image_size")
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.labels = self.frame["label"].fillna(-1).to_numpy().astype(np.int64)
        self.ids = self.frame["image_id"].astype(str).tolist()
        self.num_classes = max(2, int(self.labels.max(initial=0)) + 1)

    def __len__(self) -> int:
        return len(self.frame)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations are drawn from (seed, epoch, index)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> np.ndarray:
        """The cached image as (H, W) float32 in [0, 1]."""
        path = self.data_dir / str(self.frame.at[index, "cache"])
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MedvitError(f"{path}: cannot read the cached image ({e}); re-run `medvit ingest`") from e
        if raw.ndim != 2:
            raise MedvitError(f"{path}: expected a 2-D image, got shape {raw.shape}")
        return unit_float(raw)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = resize_to(self.load(index), self.image_size)  # resize first: augmenting fewer pixels
        image = apply_transform(self.transform, image, item_seed(self.seed, self.epoch, index))
        return to_tensor(image), int(self.labels[index])


def mammo_splits(data_dir: str | Path, fold: int, image_size: int | tuple[int, int] = DEFAULT_SIZE,
                 train_transform=None, val_transform=None, seed: int = 0) -> tuple[MammoDataset, MammoDataset]:
    """Train on every labelled, successfully ingested image outside `fold`; validate on `fold`.
    Rows of the test split (`ingest --test-share`) are never used, whatever their fold."""
    frame = read_manifest(data_dir)
    usable = frame[(frame["status"] == "ok") & frame["label"].notna() & (frame["fold"] >= 0)
                   & (frame["split"] != "test")]
    folds = sorted(usable["fold"].unique().tolist())
    if usable.empty:
        n_ok = int((frame["status"] == "ok").sum())
        raise MedvitError(f"{Path(data_dir) / MANIFEST}: no labelled, successfully ingested images "
                          f"({len(frame)} rows, {n_ok} ok, {len(frame) - n_ok} errors); check the labels CSV "
                          "and the manifest's error column")
    if fold not in folds:
        raise MedvitError(f"{Path(data_dir) / MANIFEST}: no labelled images in fold {fold}; "
                          f"folds present: {folds if folds else 'none'}")
    train = usable[usable["fold"] != fold]
    if train.empty:
        errors = int(((frame["fold"] != fold) & (frame["status"] != "ok")).sum())
        raise MedvitError(f"{Path(data_dir) / MANIFEST}: no labelled, successfully ingested image outside "
                          f"fold {fold} to train on ({errors} error rows there; see the error column)")
    val = usable[usable["fold"] == fold]
    return (MammoDataset(data_dir, train, image_size, train_transform, seed),
            MammoDataset(data_dir, val, image_size, val_transform, seed))


def test_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The labelled, successfully ingested rows of the held-out test split (empty without one)."""
    return frame[(frame["split"] == "test") & (frame["status"] == "ok") & frame["label"].notna()]


def mammo_test_set(data_dir: str | Path, image_size: int | tuple[int, int] = DEFAULT_SIZE, transform=None,
                   seed: int = 0) -> MammoDataset | None:
    """The test split of `ingest --test-share` as a dataset, or None when the manifest has none."""
    rows = test_rows(read_manifest(data_dir))
    return None if rows.empty else MammoDataset(data_dir, rows, image_size, transform, seed)
