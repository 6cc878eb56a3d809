"""Backbones by name: one dict filled by `@register_backbone`, one `create_backbone`.

Modelled on timm's `_registry.py`. Every entrypoint has the signature
`fn(num_classes, in_chans, img_size, **options) -> nn.Module`; `create_backbone` checks the
options against it, builds the model, loads weights, and stamps the plain attributes the rest of
medvit reads instead of branching on names:

- `model.medvit_name`, `model.medvit_kind` ("vit" or "cnn"), `model.medvit_args` (the call,
  without weights, so a checkpoint can rebuild the network);
- CNNs: `model.gradcam_layer`, the dotted name of the last convolutional stage;
- ViTs: a timm `VisionTransformer` (`.patch_embed.grid_size`, `.blocks[i].attn.qkv` ...).
"""
from __future__ import annotations

import fnmatch
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from medvit.canvas import compact, parse_size
from medvit.dicom import DEFAULT_SIZE
from medvit.errors import ConfigError, suggest

log = logging.getLogger(__name__)

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_KINDS: dict[str, str | None] = {}
_FIXED = ("num_classes", "in_chans", "img_size")
_VIT_ATTN_ATTRS = ("qkv", "num_heads", "fused_attn", "scale")
# options a trainer may pass to any backbone; at these values they change nothing
_NEUTRAL = {"pretrained": False, "drop_rate": 0.0, "drop_path_rate": 0.0}


def register_backbone(fn: Callable | str | None = None, *, name: str | None = None,
                      kind: str | None = None) -> Callable:
    """Decorator adding an entrypoint: `@register_backbone`, `@register_backbone("name")`
    or `@register_backbone(kind="vit")`. The name defaults to the function's name."""
    if isinstance(fn, str):
        fn, name = None, fn
    if kind not in (None, "vit", "cnn"):
        raise ValueError(f"kind must be 'vit' or 'cnn', got {kind!r}")

    def add(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _BACKBONES:
            raise ValueError(f"backbone {key!r} is registered twice")
        _BACKBONES[key] = f
        _KINDS[key] = kind
        return f

    return add(fn) if fn is not None else add


def list_backbones(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell pattern such as 'vit*'."""
    names = sorted(_BACKBONES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}: {suggest(name, _BACKBONES)}")
    return _BACKBONES[name]


def _options(name: str, fn: Callable) -> list[str]:
    params = inspect.signature(fn).parameters
    return [p for p in params if p not in _FIXED]


def backbone_default(name: str, option: str) -> Any:
    """The entrypoint's default for `option` (e.g. patch_size), None if it has none."""
    param = inspect.signature(_entrypoint(name)).parameters.get(option)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _check_options(name: str, fn: Callable, kw: dict[str, Any]) -> None:
    accepted = _options(name, fn)
    for key in kw:
        if key not in accepted:
            hint = suggest(key, accepted) if accepted else "it takes no options"
            raise ConfigError(f"backbone {name!r} has no option {key!r}: {hint}")


def create_backbone(name: str, num_classes: int = 1, in_chans: int = 1,
                    img_size: int | tuple[int, int] = DEFAULT_SIZE, **kw: Any) -> nn.Module:
    """Build a registered backbone: input (B, in_chans, H, W) float, output (B, num_classes).
    `img_size` is a side or (H, W) (ViTs need it; CNNs take any size).

    Options besides those of the entrypoint: `weights=FILE` loads a timm/torchvision state dict
    or .safetensors from disk (stem conv adapted to `in_chans`, ViT positions resampled);
    `pretrained=True` fetches ImageNet weights through timm where the entrypoint offers them.
    With either, the model normalises its input as its pretrained config says
    (`medvit.models.inputs.attach_input_norm`; recorded as `model.medvit_input_norm`).
    """
    fn = _entrypoint(name)
    try:
        img_size = compact(parse_size(img_size, "img_size"))  # a side, or (H, W)
    except ValueError as err:
        raise ConfigError(f"backbone {name!r}: {err}") from None
    sizes = {"num_classes": num_classes, "in_chans": in_chans}
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"backbone {name!r}: {key} must be a positive integer, got {value!r}")
    weights = kw.pop("weights", None) or None  # "" from a config means none
    accepted = _options(name, fn)
    if kw.get("pretrained") and "pretrained" not in accepted:
        raise ConfigError(f"backbone {name!r} has no ImageNet weights (pretrained=True); "
                          "train it from scratch or pass weights=FILE")
    for key, neutral in _NEUTRAL.items():  # "off" is every backbone's default: always accepted
        if key in kw and key not in accepted and kw[key] == neutral:
            kw.pop(key)
    _check_options(name, fn, kw)
    model = fn(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kw)
    if weights is not None:
        load_weights(model, weights)
    if (weights is not None or kw.get("pretrained")) and not hasattr(model, "medvit_input_norm"):
        from medvit.models.inputs import attach_input_norm, pretrained_norm

        # ImageNet weights expect their normalisation (a medvit checkpoint brought its own)
        attach_input_norm(model, pretrained_norm(model, in_chans))
    model.medvit_name = name
    model.medvit_kind = _KINDS[name] or _guess_kind(model)
    model.medvit_args = dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kw)
    model.medvit_args.pop("pretrained", None)
    _check_interface(name, model)
    return model


def backbone_kind(model_or_name: nn.Module | str) -> str:
    """"vit" or "cnn" for a registered name or a model built by `create_backbone`
    (also through DDP's `.module` or torch.compile's `._orig_mod`)."""
    if isinstance(model_or_name, str):
        _entrypoint(model_or_name)
        if _KINDS[model_or_name]:
            return _KINDS[model_or_name]
        with torch.device("meta"):  # undeclared kind: build without memory and look
            return create_backbone(model_or_name).medvit_kind
    model = model_or_name
    for attr in ("module", "_orig_mod"):
        if not hasattr(model, "medvit_kind") and isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return getattr(model, "medvit_kind", None) or _guess_kind(model)


def _guess_kind(model: nn.Module) -> str:
    return "vit" if hasattr(model, "blocks") and hasattr(model, "patch_embed") else "cnn"


def _check_interface(name: str, model: nn.Module) -> None:
    """Fail at build time, not in explain, if a backbone lacks what medvit reads from it."""
    if model.medvit_kind == "cnn":
        layer = getattr(model, "gradcam_layer", None)
        if not layer:
            raise ConfigError(f"backbone {name!r}: CNNs must set model.gradcam_layer")
        try:
            model.get_submodule(layer)
        except AttributeError:
            msg = f"backbone {name!r}: gradcam_layer {layer!r} is not a module"
            raise ConfigError(msg) from None
        return
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    blocks = getattr(model, "blocks", None)
    if grid is None or not blocks:
        raise ConfigError(f"backbone {name!r}: a ViT needs .patch_embed.grid_size and .blocks")
    for i, blk in enumerate(blocks):
        missing = [a for a in _VIT_ATTN_ATTRS if not hasattr(getattr(blk, "attn", None), a)]
        if missing:
            raise ConfigError(f"backbone {name!r}: blocks[{i}].attn lacks {', '.join(missing)}")


# ---- weights from disk ---------------------------------------------------------------------

def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta): meta holds "input_norm" when the file is a medvit checkpoint."""
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickled code, wrong format: all the same to the user
        raise ConfigError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    meta = {}
    if isinstance(state, dict) and str(state.get("format", "")).startswith("medvit-checkpoint"):
        meta["input_norm"] = state.get("input_norm")  # a medvit run's own normalisation (None: none)
        meta["grid"] = _token_grid(state.get("model_spec") or {})
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, meta  # DDP-saved files


def _token_grid(spec: dict) -> tuple[int, int] | None:
    """The ViT token grid a medvit checkpoint was trained at (its canvas may be H x W), when its
    spec says the patch; None otherwise (a square grid is then assumed, as timm does)."""
    kw = spec.get("kwargs") or {}
    if not kw.get("patch_size") or not kw.get("img_size"):
        return None
    h, w = parse_size(kw["img_size"])
    return h // int(kw["patch_size"]), w // int(kw["patch_size"])


def _non_square_mismatch(state: dict[str, torch.Tensor], model: nn.Module) -> bool:
    """A pos_embed of another length than the model's H x W (non-square) grid, from a file that does
    not give its own grid: timm's resampling would assume a square and mix up the positions."""
    value, own = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if value is None or own is None or value.shape == own.shape or not hasattr(model, "patch_embed"):
        return False
    gh, gw = model.patch_embed.grid_size
    return gh != gw


def _classifier_prefix(model: nn.Module) -> str:
    """Dotted name of the layer producing the logits (its shape follows num_classes)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return next(n for n, m in model.named_modules() if m is head)


def _adapt(state: dict[str, torch.Tensor], model: nn.Module, path: Path,
           grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    from medvit._compat import import_timm

    import_timm()
    from timm.layers import resample_abs_pos_embed
    from timm.models import adapt_input_conv

    own = model.state_dict()
    head = _classifier_prefix(model) + "."
    out = {}
    for key, value in state.items():
        want = own[key].shape if key in own else value.shape
        if value.shape == want:
            out[key] = value
        elif value.ndim == 4 and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            out[key] = adapt_input_conv(want[1], value)  # RGB stem → in_chans (1: sum over RGB)
        elif key.endswith("pos_embed") and hasattr(model, "patch_embed"):
            out[key] = resample_abs_pos_embed(value, new_size=list(model.patch_embed.grid_size),
                                              old_size=list(grid) if grid else None,
                                              num_prefix_tokens=model.num_prefix_tokens)
        elif key.startswith(head):
            log.warning("%s: %s has shape %s, model has %s; keeping a fresh classifier",
                        path, key, tuple(value.shape), tuple(want))
        else:
            raise ConfigError(f"{path}: {key} has shape {tuple(value.shape)} but the model "
                              f"expects {tuple(want)}; the file is for another architecture")
    return out


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict from disk into `model` (in place): timm's per-architecture converter
    first where timm has one, then stem / position / classifier adaptation, then a strict
    check that every other tensor matched."""
    path = Path(path)
    state, meta = _read_state_dict(path)
    # timm keeps a checkpoint_filter_fn beside each architecture that converts other layouts
    # (original repos, old patch embeddings) to its own and resamples ViT positions.
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if meta.get("grid"):  # a medvit ViT of another (possibly H x W) canvas: resample from its grid
        state = _adapt(state, model, path, meta["grid"])
    elif _non_square_mismatch(state, model):
        raise ConfigError(f"{path}: its position embeddings are for another token grid and the file does not "
                          "say which (an H x W grid cannot be inferred); save it as a medvit checkpoint")
    if filter_fn is not None and type(model).__module__.startswith("timm."):
        state = filter_fn(state, model)
    state = _adapt(state, model, path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = _classifier_prefix(model) + "."
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ConfigError(f"{path}: does not match the model (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]})")
    if "input_norm" in meta:  # a medvit checkpoint: the normalisation it was trained with
        from medvit.models.inputs import attach_input_norm

        attach_input_norm(model, meta["input_norm"])
    return model
