"""Grad-CAM for CNN backbones (Selvaraju et al. 2017), with hooks medvit holds itself.

    weights_k = mean over (h, w) of d score / d A_k      (A: the target layer's output, (B, K, h, w))
    cam       = ReLU(sum_k weights_k * A_k), upsampled bilinearly to the input, min-max scaled per image

The target layer's output is captured by one forward hook that `medvit.models.hooks.forward_hooks`
always removes (public API only, as `medvit.explain.attention` does; the pytorch-grad-cam pattern),
and the gradient is taken with `torch.autograd.grad` with respect to that output, so no backward
hook is registered and no parameter `.grad` is left behind. Written here rather than through
MONAI's GradCAM, which registers hooks without keeping their handles (so they could only be
removed by editing torch's private hook tables). `tests/test_explain.py` checks the maps against
MONAI's on the same model and a known answer.

High = supports the target (MONAI's default normaliser maps high to 0: not used).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medvit.errors import ConfigError
from medvit.models.hooks import eval_no_grad, forward_hooks


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of (B, ...) to [0, 1], high stays high; a flat map becomes 0."""
    flat = maps.reshape(maps.shape[0], -1).float()
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.reshape(maps.shape)


@contextlib.contextmanager
def captured_output(layer: nn.Module) -> Iterator[dict]:
    """{"out": the layer's output} of the forwards run inside the block; the hook is removed on
    exit, also when the forward raises."""
    store: dict = {}
    with forward_hooks([(layer, lambda module, args, out: store.update(out=out))]):
        yield store


def gradcam_layer(model: nn.Module) -> str:
    layer = getattr(model, "gradcam_layer", None)
    if not layer:
        name = getattr(model, "medvit_name", type(model).__name__)
        raise ConfigError(f"model {name!r} has no gradcam_layer: Grad-CAM needs a CNN backbone; "
                          "use method 'attention' or 'rollout' for ViTs")
    return layer


def _scores(logits: torch.Tensor, target_class: int | None) -> torch.Tensor:
    """The logit explained per image: `target_class`, else the predicted class (one logit: that logit)."""
    n_out = logits.shape[1]
    if target_class is None:
        targets = logits.argmax(1) if n_out > 1 else torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    elif not 0 <= int(target_class) < n_out:
        raise ConfigError(f"target_class {target_class} is out of range for a model with {n_out} output(s)")
    else:
        targets = torch.full((len(logits),), int(target_class), dtype=torch.long, device=logits.device)
    return logits.gather(1, targets[:, None])[:, 0]


def gradcam(model: nn.Module, images: torch.Tensor, target_class: int | None = None, *,
            scale: bool = True) -> torch.Tensor:
    """(B, H, W) Grad-CAM in [0, 1] (high = supports the target), at the input's size, on the CPU;
    `scale=False`: before the min-max scaling (all zero where nothing supports the target).

    Target: `target_class`, else each image's predicted class; a binary model (one logit) is
    explained through that logit. The model runs in eval mode (its mode is restored after)."""
    layer = model.get_submodule(gradcam_layer(model))
    device = next(model.parameters()).device
    # requires_grad on the input: a graph exists even if the weights are frozen
    x = images.to(device).float().clone().requires_grad_(True)
    with eval_no_grad(model, grad=True), captured_output(layer) as store:
        logits = model(x)
        acts = store["out"]  # (B, K, h, w)
        scores = _scores(logits, target_class)
        # images are independent in eval mode: d(sum of scores)/dA_b = d score_b / dA_b
        (grads,) = torch.autograd.grad(scores.sum(), acts)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True)).detach()  # (B, 1, h, w)
    cam = F.interpolate(cam.float(), size=tuple(images.shape[2:]), mode="bilinear", align_corners=False)
    return (unit_range(cam[:, 0]) if scale else cam[:, 0]).cpu()
