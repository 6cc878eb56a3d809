"""What a model is fed: the one conversion of an image to a model input, and the input
normalisation of backbones that start from ImageNet weights.

- `model_input`: an (H, W) canvas image from `preprocess` (uint16) or the cache loader (float in [0, 1])
  -> (C, h, w) float tensor, exactly as MammoDataset builds a validation item. Used by predict,
  explain (and anything else that feeds single images).
- `pretrained_norm` / `attach_input_norm`: ImageNet weights expect their normalisation
  (timm's `pretrained_cfg` mean/std), not [0, 1] images. `create_backbone` reads it when it
  loads such weights (`pretrained=True` or `weights=FILE`), the trainer stores it in every
  checkpoint (`input_norm`), and `build_model_from_checkpoint` attaches it again: the model
  itself normalises its input in a forward pre-hook, so train, evaluate, explain, predict and
  any analysis apply the same function without knowing about it. Backbones trained from
  scratch carry none (identity).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

NORM_MEAN, NORM_STD = "medvit_input_mean", "medvit_input_std"  # non-persistent buffers (not in state dicts)


def model_input(image: np.ndarray, image_size: int | tuple[int, int], in_chans: int = 1) -> torch.Tensor:
    """(H, W) canvas image -> (C, h, w) float tensor at the model's canvas `image_size` (a side or
    (h, w)), as MammoDataset builds it at validation:
    resize_to -> to_tensor (grey repeated for C > 1)."""
    from medvit.data.datasets import resize_to, to_tensor, unit_float

    x = to_tensor(resize_to(unit_float(image), image_size))
    return x.expand(in_chans, -1, -1).contiguous() if in_chans > 1 else x


def pretrained_norm(model: nn.Module, in_chans: int) -> dict | None:
    """{"mean": [...], "std": [...]} (one value per input channel) from timm's pretrained config
    of `model` (`model.pretrained_cfg`), None when it has none. For fewer channels than the
    config's (1 for mammograms), timm's `adapt_input_conv` sums the RGB stem filters, which
    matches a grey input normalised by the mean of the RGB means and stds (exact when the
    three are equal), so those are used."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std:
        return None
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != in_chans:
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return {"mean": mean, "std": std, "source": f"timm pretrained_cfg ({cfg.get('architecture', '?')})"}


def _normalise(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    mean, std = getattr(module, NORM_MEAN), getattr(module, NORM_STD)
    return ((x - mean.to(x.dtype)) / std.to(x.dtype), *args[1:])


def attach_input_norm(model: nn.Module, norm: dict | None) -> nn.Module:
    """Make `model` normalise its input by `norm` (mean/std per channel) in a forward pre-hook,
    and record it as `model.medvit_input_norm` (the trainer saves it in checkpoints). None:
    nothing to do. The buffers are non-persistent: state dicts stay as they were."""
    model.medvit_input_norm = norm
    if not norm:
        return model
    shape = (1, len(norm["mean"]), 1, 1)
    model.register_buffer(NORM_MEAN, torch.tensor(norm["mean"], dtype=torch.float32).reshape(shape), persistent=False)
    model.register_buffer(NORM_STD, torch.tensor(norm["std"], dtype=torch.float32).reshape(shape), persistent=False)
    if not getattr(model, "_medvit_norm_hooked", False):
        model.register_forward_pre_hook(_normalise)  # for the model's lifetime: part of the model
        model._medvit_norm_hooked = True
    return model


def input_norm_of(model: Any) -> dict | None:
    """The normalisation a model built by medvit applies (through DDP / compile wrappers)."""
    for attr in ("module", "_orig_mod"):
        if not hasattr(model, "medvit_input_norm") and isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return getattr(model, "medvit_input_norm", None)
