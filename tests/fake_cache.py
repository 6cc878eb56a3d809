"""Tiny test data: an ingest-style folder (manifest.csv + images/*.npy) for trainer, evaluate and
explain tests, and learnable CIFAR-format images for benchmark runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_manifest(root: Path, size: int, n_patients: int = 12, blob: int = 3, seed: int = 0) -> Path:
    """4 images per patient (L/R x CC/MLO); the left breast of every even patient is positive and
    its images carry a bright square blob of half-width `blob` at a random place."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        for lat in "LR":
            for view in ("CC", "MLO"):
                image_id = f"{p}{lat}{view}"
                label = int(lat == "L" and p % 2 == 0)
                img = rng.normal(0.3, 0.05, (size, size))
                if label:
                    y, x = rng.integers(blob + 3, size - blob - 3, 2)
                    img[y - blob:y + blob, x - blob:x + blob] += 0.6
                np.save(root / "images" / f"{image_id}.npy", (np.clip(img, 0, 1) * 65535).astype(np.uint16))
                rows.append({"image_id": image_id, "patient_id": f"p{p}", "laterality": lat, "view": view,
                             "label": label, "fold": p % 3, "status": "ok", "error": "",
                             "path": f"{p}/{image_id}.dcm", "cache": f"images/{image_id}.npy",
                             "rows": size, "columns": size})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def cifar_bars(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n CIFAR-format images (n, 32, 32, 3) uint8 and labels 0..9: class k is a bright square at a
    place that depends on k, over dark noise (learnable in a few steps)."""
    labels = np.arange(n) % 10
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for i, k in enumerate(labels):
        x[i, 2 * k:2 * k + 8, 8:20] = 250
    return x, labels
