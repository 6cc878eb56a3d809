"""Overlay PNGs: the mammogram in grey with a map blended on it, one colormap and one fixed
[0, 1] scale for every method, so a ViT's rollout and a CNN's Grad-CAM read the same way.

Figures are built with matplotlib's object API (Figure + Agg canvas), never pyplot's global
state, and written to a temp file then renamed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from medvit.io import atomic_path

COLORMAP = "inferno"  # perceptually uniform; the same for attention, rollout and Grad-CAM
SCALE = Normalize(vmin=0.0, vmax=1.0)  # maps from `explain` are in [0, 1]


def to_unit_image(image: np.ndarray) -> np.ndarray:
    """A 2-D image as float in [0, 1]: integers over their dtype's maximum, floats clipped."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"overlay: expected a 2-D image, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _check_map(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"overlay: expected a 2-D map, got shape {heatmap.shape}")
    return np.clip(heatmap, 0.0, 1.0)


def _draw(ax, image: np.ndarray, heatmap: np.ndarray | None, title: str, alpha: float) -> None:
    h, w = image.shape
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
    if heatmap is not None:  # stretched over the image: a (gh, gw) grid or a full-size map
        ax.imshow(heatmap, cmap=COLORMAP, norm=SCALE, alpha=alpha, interpolation="bilinear",
                  extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: str | Path, *, title: str = "",
                 alpha: float = 0.45) -> Path:
    """PNG of `image` (S, S) uint16 or float [0, 1] with `heatmap` (h, w) in [0, 1] on top,
    with a colour bar. Titles should carry ids only (no PHI)."""
    gray, heat = to_unit_image(image), _check_map(heatmap)
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, gray, heat, title, alpha)
    fig.colorbar(ScalarMappable(norm=SCALE, cmap=COLORMAP), ax=ax, shrink=0.85, label="importance")
    return _save(fig, path)


def save_panel(image: np.ndarray, heatmaps: dict[str, np.ndarray], path: str | Path, *,
               title: str = "", alpha: float = 0.45) -> Path:
    """Side by side: the image alone, then one overlay per entry of `heatmaps` (label -> map),
    e.g. a ViT's rollout next to a CNN's Grad-CAM on the same image; one shared colour bar."""
    if not heatmaps:
        raise ValueError("save_panel: no heatmaps given")
    gray = to_unit_image(image)
    n = 1 + len(heatmaps)
    fig = Figure(figsize=(3.6 * n + 0.8, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    _draw(axes[0], gray, None, "image", alpha)
    for ax, (label, heat) in zip(axes[1:], heatmaps.items()):
        _draw(ax, gray, _check_map(heat), label, alpha)
    fig.colorbar(ScalarMappable(norm=SCALE, cmap=COLORMAP), ax=list(axes), shrink=0.85, label="importance")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
