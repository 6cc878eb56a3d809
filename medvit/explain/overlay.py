"""Overlay PNGs: the mammogram in grey with a map blended on it, one colormap and one fixed
[0, 1] scale for every method, so a ViT's rollout and a CNN's Grad-CAM read the same way.

Single overlays are drawn with numpy + OpenCV (fast enough for one per predicted file); panels
use matplotlib's object API (Figure + Agg canvas), never pyplot's global state. Files are written
to a temp name, then renamed.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from medvit.io import write_png
from medvit.plots import save_figure

COLORMAP = "inferno"  # perceptually uniform; the same for attention, rollout and Grad-CAM
SCALE = Normalize(vmin=0.0, vmax=1.0)  # maps from `explain` are in [0, 1]


def to_unit_image(image: np.ndarray) -> np.ndarray:
    """A 2-D image as float in [0, 1]: integers over their dtype's maximum, floats clipped."""
    from medvit.data.datasets import unit_float

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"overlay: expected a 2-D image, got shape {image.shape}")
    return unit_float(image)


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


def _colormap_lut() -> np.ndarray:
    """COLORMAP as a (256, 3) uint8 table (matplotlib's colours, no figure needed)."""
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def render_overlay(image: np.ndarray, heatmap: np.ndarray, *, title: str = "", alpha: float = 0.45,
                   side: int = 512) -> np.ndarray:
    """RGB uint8 picture: the image in grey (shown at least `side` px tall) with the map stretched
    over it and blended (alpha), a title band on top and a 0..1 colour bar on the right.

    Drawn with numpy + OpenCV rather than a matplotlib Figure (43 ms against 300 ms at 512 px
    here), which matters when `predict --overlays` draws one per file. The colours are matplotlib's COLORMAP,
    as in panels."""
    gray, heat = to_unit_image(image), _check_map(heatmap)
    scale = max(1.0, side / gray.shape[0])
    h, w = round(gray.shape[0] * scale), round(gray.shape[1] * scale)
    gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA if scale == 1 else cv2.INTER_LINEAR)
    heat = np.clip(cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    lut = _colormap_lut()
    grey3 = np.repeat(gray[..., None] * 255.0, 3, axis=2)
    body = ((1 - alpha) * grey3 + alpha * lut[(heat * 255).round().astype(np.uint8)]).round().astype(np.uint8)
    top, bar_w, right = 28, 16, 64
    canvas = np.full((h + top, w + right, 3), 255, np.uint8)
    canvas[top:, :w] = body
    y0, y1 = top + h // 12, top + h - h // 12  # the bar spans the middle 5/6 of the image
    ramp = np.linspace(1.0, 0.0, y1 - y0)
    canvas[y0:y1, w + 10:w + 10 + bar_w] = lut[(ramp * 255).round().astype(np.uint8)][:, None, :]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for value in (0.0, 0.5, 1.0):
        y = round(y1 - value * (y1 - y0 - 1))
        cv2.putText(canvas, f"{value:g}", (w + 12 + bar_w, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "importance", (w + 2, y0 - 14), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (6, top - 9), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: str | Path, *, title: str = "",
                 alpha: float = 0.45) -> Path:
    """PNG of `image` (S, S) uint16 or float [0, 1] with `heatmap` (h, w) in [0, 1] on top,
    with a colour bar (`render_overlay`). Titles should carry ids only (no PHI)."""
    rgb = render_overlay(image, heatmap, title=title, alpha=alpha)
    return write_png(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


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
    return save_figure(fig, path)
