"""RUN_DIR figures of a pretraining run: the loss curve, and MAE's original / masked /
reconstructed images at a few epochs (from RUN_DIR/mae_figure/epoch_NNN.npz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medvit.io import atomic_path
from medvit.plots import _figure, _save, read_log

FIGURE_DIR = "mae_figure"


def save_arrays(run_dir: Path, epoch: int, original: np.ndarray, masked: np.ndarray, recon: np.ndarray) -> Path:
    """One epoch's figure rows, written atomically."""
    path = Path(run_dir) / FIGURE_DIR / f"epoch_{epoch:04d}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, original=original[:, 0], masked=masked, recon=recon)
    return path


def plot_loss(run_dir: Path, title: str) -> Path | None:
    """RUN_DIR/loss_curve.png: the loss per logged step and the mean per epoch."""
    run_dir = Path(run_dir)
    steps, epochs = run_dir / "metrics_step.csv", run_dir / "metrics_epoch.csv"
    if not steps.is_file() and not epochs.is_file():
        return None
    fig, (ax,) = _figure(size=(6.0, 4.0))
    if steps.is_file():  # every train.log_every steps
        s = read_log(steps)  # medvit.plots' one log reader: a bad file is named
        ax.plot(s["step"], s["loss"], lw=0.8, alpha=0.6, label="step")
    if epochs.is_file():
        e = read_log(epochs)
        if len(e):
            ax.plot(e["step"], e["train_loss"], marker="o", ms=4, label="epoch mean")
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, run_dir / "loss_curve.png")


def plot_reconstructions(run_dir: Path) -> Path | None:
    """RUN_DIR/mae_reconstruction.png: a row per saved epoch, (original, masked, reconstruction)
    per image; None when no epoch was saved."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / FIGURE_DIR).glob("epoch_*.npz"))
    if not files:
        return None
    if len(files) > 6:  # a few epochs: evenly spaced, the last included
        files = [files[int(round(i))] for i in np.linspace(0, len(files) - 1, 6)]
    rows = [dict(np.load(f)) for f in files]
    n = rows[0]["original"].shape[0]
    h, w = rows[0]["original"].shape[1:]
    fig, _ = _figure(ncols=1, size=(1.0, 1.0))
    fig.clear()
    fig.set_size_inches(3 * n * 1.6 * w / max(h, w) + 0.5, len(rows) * 1.7 + 0.3)
    axes = fig.subplots(len(rows), 3 * n, squeeze=False)
    for r, (f, row) in enumerate(zip(files, rows)):
        for i in range(n):
            for j, key in enumerate(("original", "masked", "recon")):
                ax = axes[r, 3 * i + j]
                ax.imshow(row[key][i], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(key, fontsize=7)
                if i == 0 and j == 0:
                    ax.set_ylabel(f.stem.replace("_", " "), fontsize=7)
    return _save(fig, run_dir / "mae_reconstruction.png")
