"""Where each model looks: ViT attention maps and rollout, CNN Grad-CAM, overlays, pointing game.

`explain(model, images, method)` is the one entry point the commands use: it returns maps in
[0, 1] at the input size, whatever the method, so overlays and scores compare across models.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvit.errors import ConfigError, suggest
from medvit.explain.attention import (attention_maps, attention_rollout, cls_attention, grid_size, head_attention,
                                      qkv_hooks, stream_attention)
from medvit.explain.gradcam import captured_output, gradcam, unit_range
from medvit.explain.overlay import save_overlay, save_panel
from medvit.explain.pointing import lesion_mask_in_model_space, pointing_game

METHODS = ("auto", "attention", "rollout", "gradcam")
VIT_METHODS = ("attention", "rollout")

__all__ = [
    "METHODS", "attention_maps", "attention_rollout", "class_mean_maps", "cls_attention", "explain",
    "head_attention", "qkv_hooks", "stream_attention",
    "gradcam", "grid_size", "lesion_mask_in_model_space", "pointing_game", "pointing_on_frame", "captured_output",
    "resolve_method", "save_overlay", "save_panel",
]


def resolve_method(model: nn.Module, method: str = "auto") -> str:
    """The concrete method for `model`: auto -> rollout (ViT) or gradcam (CNN). A method the
    model cannot do is a ConfigError."""
    from medvit.models import backbone_kind

    if method not in METHODS:
        raise ConfigError(f"explain method {method!r} is unknown; {suggest(method, METHODS)}")
    kind = backbone_kind(model)
    name = getattr(model, "medvit_name", type(model).__name__)
    if method == "auto":
        return "rollout" if kind == "vit" else "gradcam"
    if kind == "vit" and method == "gradcam":
        raise ConfigError(f"Grad-CAM needs a CNN, but {name!r} is a ViT; use --method attention or rollout")
    if kind == "cnn" and method in VIT_METHODS:
        raise ConfigError(f"--method {method} needs a ViT, but {name!r} is a CNN; use --method gradcam")
    return method


def explain(model: nn.Module, images: torch.Tensor, method: str = "auto", *, scale: bool = True) -> np.ndarray:
    """(B, H, W) float32 maps in [0, 1] (each min-max scaled; `scale=False`: the raw values, e.g.
    to report a map's range), upsampled bilinearly to the input canvas H x W. attention =
    last-layer CLS attention averaged over heads; rollout = attention rollout; gradcam = Grad-CAM
    of the predicted class (binary: the logit)."""
    method = resolve_method(model, method)
    if method == "gradcam":
        maps = gradcam(model, images, scale=scale)
    elif method == "attention":
        maps = cls_attention(model, images)[:, -1].mean(1)  # (B, gh, gw)
    else:
        maps = attention_rollout(model, images)
    maps = F.interpolate(maps[:, None].float(), size=tuple(images.shape[-2:]), mode="bilinear",
                         align_corners=False)[:, 0]
    return (unit_range(maps) if scale else maps).numpy().astype(np.float32)


def class_mean_maps(model: nn.Module, loader: Iterable, method: str = "auto") -> dict[int, np.ndarray]:
    """Mean map per class over every (images, labels) batch of `loader` (seed 000, fig. 16b)."""
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for images, labels in loader:
        maps = explain(model, images, method)
        for m, label in zip(maps, torch.as_tensor(labels).tolist()):
            label = int(label)
            sums[label] = sums.get(label, 0.0) + m.astype(np.float64)
            counts[label] = counts.get(label, 0) + 1
    return {c: (sums[c] / counts[c]).astype(np.float32) for c in sorted(sums)}


def pointing_on_frame(model: nn.Module, data_dir, frame, mask_pngs: list, image_size: int | tuple[int, int],
                      method: str,
                      device, tolerance: float | None = None, batch: int = 8) -> dict:
    """Pointing game of `model` over manifest rows `frame` (their cached images, no augmentation)
    against their synth lesion masks `mask_pngs` (one per row): `pointing_game`'s dict, plus
    method and image_ids. Used by `explain --pointing` and `compare`."""
    from medvit.data.datasets import MammoDataset
    from medvit.explain.pointing import TOLERANCE

    frame = frame.reset_index(drop=True)
    dataset = MammoDataset(data_dir, frame, image_size)  # the validation path, no augmentation
    heatmaps, masks = [], []
    for start in range(0, len(dataset), batch):
        idx = range(start, min(start + batch, len(dataset)))
        x = torch.stack([dataset[i][0] for i in idx]).to(device)
        heatmaps.extend(explain(model, x, method))
        for i in idx:
            size = dataset.load(i).shape  # the ingest canvas (H, W): the mask follows the cached image's layout
            masks.append(lesion_mask_in_model_space(mask_pngs[i], frame.iloc[i].to_dict(), size))
    result = pointing_game(heatmaps, masks, tolerance=TOLERANCE if tolerance is None else tolerance)
    result.update(method=method, image_ids=frame["image_id"].astype(str).tolist())
    return result
