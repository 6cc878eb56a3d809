"""Grad-CAM for CNN backbones through MONAI, with its hooks released afterwards.

`monai.visualize.GradCAM` registers a forward and a full backward hook on the target layer and
keeps no handles, so they would stay on the model for good (and turn off `inplace` on the
target layer if it had it). `released_hooks` snapshots every submodule's hook tables first and
restores them in a `finally`, also when the forward or backward raises.

MONAI's default post-processing (`default_normalizer`) maps each map's (min, max) to (1, 0):
high would mean *unimportant*. We pass a min-max normaliser that keeps the direction (checked by
a test with a known answer).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from medvit.errors import ConfigError

_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks_with_kwargs")


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of (B, ...) to [0, 1], high stays high; a flat map becomes 0."""
    flat = maps.reshape(maps.shape[0], -1).float()
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.reshape(maps.shape)


@contextlib.contextmanager
def released_hooks(model: nn.Module) -> Iterator[None]:
    """Remove, on exit, every hook added to any submodule inside the block (and restore the
    `inplace` flags and full-backward-hook markers MONAI changes)."""
    saved = []
    for m in model.modules():
        keys = {t: set(getattr(m, t, {}) or {}) for t in _HOOK_TABLES}
        saved.append((m, keys, m._is_full_backward_hook, m.__dict__.get("inplace")))
    try:
        yield
    finally:
        for m, keys, full, inplace in saved:
            for table in _HOOK_TABLES:
                hooks = getattr(m, table, None)
                for key in [k for k in (hooks or {}) if k not in keys[table]]:
                    del hooks[key]
            m._is_full_backward_hook = full
            if inplace is not None:
                m.inplace = inplace


def gradcam_layer(model: nn.Module) -> str:
    layer = getattr(model, "gradcam_layer", None)
    if not layer:
        name = getattr(model, "medvit_name", type(model).__name__)
        raise ConfigError(f"model {name!r} has no gradcam_layer: Grad-CAM needs a CNN backbone; "
                          "use method 'attention' or 'rollout' for ViTs")
    return layer


def _targets(model: nn.Module, images: torch.Tensor, target_class: int | None) -> torch.Tensor:
    """Class index per image: `target_class`, else the predicted class (one logit: that logit)."""
    with torch.no_grad():
        training = model.training
        model.eval()
        try:
            logits = model(images)
        finally:
            model.train(training)
    n_out = logits.shape[1]
    if target_class is None:
        return logits.argmax(1) if n_out > 1 else torch.zeros(len(images), dtype=torch.long)
    if not 0 <= int(target_class) < n_out:
        raise ConfigError(f"target_class {target_class} is out of range for a model with {n_out} output(s)")
    return torch.full((len(images),), int(target_class), dtype=torch.long)


def gradcam(model: nn.Module, images: torch.Tensor, target_class: int | None = None) -> torch.Tensor:
    """(B, H, W) Grad-CAM in [0, 1] (high = supports the target), at the input's size.

    Target: `target_class`, else each image's predicted class; a binary model (one logit) is
    explained through that logit. MONAI scores a batch with one class index, so images are
    grouped by target."""
    layer = gradcam_layer(model)
    from medvit._compat import import_torchvision

    import_torchvision()  # MONAI may import torchvision; go through medvit's guard first
    from monai.visualize import GradCAM

    device = next(model.parameters()).device
    images = images.to(device).float()
    out = torch.zeros(images.shape[0], *images.shape[2:])
    try:
        with released_hooks(model), torch.enable_grad():
            targets = _targets(model, images, target_class).cpu()
            cam = GradCAM(nn_module=model, target_layers=layer, postprocessing=unit_range)
            for cls in targets.unique().tolist():
                idx = targets == cls
                # requires_grad on the input: a graph exists even if the weights are frozen
                x = images[idx.to(device)].clone().requires_grad_(True)
                out[idx] = cam(x, class_idx=int(cls))[:, 0].detach().float().cpu()
    finally:
        model.zero_grad(set_to_none=True)  # MONAI's backward leaves a parameter-sized .grad behind
    return out
