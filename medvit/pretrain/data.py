"""Unlabelled views of ingested mammograms for self-supervised pretraining.

Every successfully ingested image of one or more ingest folders is used, labelled or not; the
`ingest --test-share` split is left out unless `pretrain.include_test` (it must stay unseen by
anything a test score is reported for). An item is one view (MAE) or a tuple of views
(DINO, SimCLR) of one image: a random resized crop inside the breast's bounding box, flips,
brightness / contrast / gamma (one channel: no colour jitter). Every random choice comes from
(seed, epoch, index, view), so a resumed run or any worker layout sees the same views.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medvit.data.datasets import MammoDataset, read_manifest, to_tensor
from medvit.errors import MedvitError
from medvit.manifest import MANIFEST

BREAST_LEVEL = 0.02  # pixels above this (of [0, 1]) count as breast when finding the crop box


def unlabelled_rows(data_dir: str | Path, include_test: bool) -> pd.DataFrame:
    """The ok rows of DATA_DIR's manifest, labelled or not; without the test split unless asked."""
    frame = read_manifest(data_dir)
    rows = frame[frame["status"] == "ok"]
    if not include_test:
        rows = rows[rows["split"] != "test"]
    if rows.empty:
        raise MedvitError(f"{Path(data_dir) / MANIFEST}: no successfully ingested image to pretrain on "
                          f"({len(frame)} rows; test split {'included' if include_test else 'left out'})")
    return rows


def breast_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the pixels above BREAST_LEVEL; the whole image when there are none."""
    mask = image > BREAST_LEVEL
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return 0, image.shape[0], 0, image.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def random_crop(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float],
                out_hw: tuple[int, int]) -> np.ndarray:
    """A crop of `scale` x the breast box's area, aspect near the output's, resized to out_hw."""
    y0, y1, x0, x1 = breast_box(image)
    bh, bw = y1 - y0, x1 - x0
    h_out, w_out = out_hw
    area = rng.uniform(*scale) * bh * bw
    aspect = (h_out / w_out) * math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))  # height / width
    ch = int(round(min(bh, max(2, math.sqrt(area * aspect)))))
    cw = int(round(min(bw, max(2, math.sqrt(area / aspect)))))
    y = y0 + int(rng.integers(0, bh - ch + 1))
    x = x0 + int(rng.integers(0, bw - cw + 1))
    crop = image[y:y + ch, x:x + cw]
    interp = cv2.INTER_AREA if ch * cw > h_out * w_out else cv2.INTER_LINEAR
    return cv2.resize(crop, (w_out, h_out), interpolation=interp)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips, brightness / contrast, gamma; one channel, values kept in [0, 1]."""
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.5:
        image = image[::-1, :]
    if rng.random() < 0.8:
        contrast, brightness = 1 + rng.uniform(-0.3, 0.3), rng.uniform(-0.15, 0.15)
        image = (image - 0.5) * contrast + 0.5 + brightness
    image = np.clip(image, 0.0, 1.0)
    if rng.random() < 0.5:
        image = image ** math.exp(rng.uniform(-0.4, 0.4))
    return np.ascontiguousarray(image, dtype=np.float32)


class UnlabelledViews(Dataset):
    """Images of one or more ingest folders as self-supervised views (labels: all 0, unused).

    `views`: [(n, (h, w), crop scale), ...], e.g. two global views of the model canvas, plus
    small local crops for DINO's multi-crop. One view gives a tensor, several a tuple."""

    in_chans = 1
    num_classes = 1  # no classes: the trainer then uses a plain shuffled sampler

    def __init__(self, parts: list[MammoDataset], views: list[tuple[int, tuple[int, int], tuple[float, float]]],
                 seed: int = 0) -> None:
        self.parts, self.views, self.seed, self.epoch = parts, views, int(seed), 0
        self.index = [(k, i) for k, part in enumerate(parts) for i in range(len(part))]
        many = len(parts) > 1
        self.ids = [f"{k}:{parts[k].ids[i]}" if many else parts[k].ids[i] for k, i in self.index]
        self.labels = np.zeros(len(self.index), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def image(self, index: int) -> np.ndarray:
        """The cached image, (H, W) float32 in [0, 1]."""
        k, i = self.index[index]
        return self.parts[k].load(i)

    def __getitem__(self, index: int):
        image = self.image(index)
        out, v = [], 0
        for n, size, scale in self.views:
            for _ in range(n):
                rng = np.random.default_rng([self.seed, self.epoch, index, v])
                out.append(to_tensor(photometric(random_crop(image, rng, scale, size), rng)))
                v += 1
        return (out[0] if len(out) == 1 else tuple(out)), 0


def unlabelled_data(cfg, views) -> "DataBundle":  # noqa: F821 (setup's class, imported lazily)
    """The trainer's DataBundle for pretraining: train = every usable image, val = none."""
    from medvit.train.setup import DataBundle

    p = cfg.pretrain
    if cfg.data.kind != "mammo":
        raise MedvitError(f"medvit pretrain reads ingest folders (data.kind=mammo), not {cfg.data.kind}")
    parts = [MammoDataset(d, unlabelled_rows(d, p.include_test), seed=cfg.train.seed)
             for d in [cfg.data.dir, *p.extra_dirs]]
    train = UnlabelledViews(parts, views, cfg.train.seed)
    if len(train) < cfg.data.batch_size:
        raise MedvitError(f"{cfg.data.dir}: {len(train)} images to pretrain on, fewer than one batch "
                          f"(--batch-size {cfg.data.batch_size}); lower the batch size or add --data folders")
    return DataBundle(train, UnlabelledViews([], views), 1, 1, None)


def fixed_images(data: UnlabelledViews, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first n images resized to the canvas, unaugmented: (n, 1, h, w), for the figures."""
    out = [cv2.resize(data.image(i), (size[1], size[0]), interpolation=cv2.INTER_AREA)
           for i in range(min(n, len(data)))]
    return torch.stack([to_tensor(x) for x in out])


def patient_subset(dataset: MammoDataset, fraction: float, seed: int) -> MammoDataset:
    """The images of `fraction` of the dataset's patients: stratified (patients with a positive
    image and the others, each group shuffled by `seed`, its first ceil(fraction * n) kept, at
    least one), so for one seed a smaller fraction is always a subset of a larger one (nested)."""
    if not 0 < fraction <= 1:
        raise MedvitError(f"data.label_fraction {fraction}: a share of the training patients in (0, 1]")
    frame = dataset.frame
    positive = frame.groupby("patient_id")["label"].max().fillna(0) > 0
    keep: list = []
    for k, group in enumerate((positive[positive].index, positive[~positive].index)):
        order = np.random.default_rng([int(seed), k]).permutation(np.asarray(sorted(group), dtype=object))
        keep += list(order[:max(1, math.ceil(fraction * len(order)))] if len(order) else [])
    rows = frame[frame["patient_id"].isin(keep)]
    return MammoDataset(dataset.data_dir, rows, dataset.image_size, dataset.transform, dataset.seed)
