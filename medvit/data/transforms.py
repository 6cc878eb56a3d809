"""Albumentations augmentation for single-channel float32 images in [0, 1], reproducible per item.

Config (the `data.augment` mapping; an empty mapping means no augmentation):

    hflip: 0.0            # p. Off by default: ingest puts the chest wall on the left.
    vflip: 0.5            # p
    affine: {scale: [0.9, 1.1], translate: 0.05, rotate: 10, p: 0.5}    # translate: fraction of size, rotate: degrees
    brightness_contrast: {brightness: 0.1, contrast: 0.1, p: 0.5}
    gamma: {limits: [80, 120], p: 0.5}

A section set to `false` or `null` is off; `true` takes its defaults. An item's augmentation depends
only on (seed, epoch, index): the dataset calls `seed_transform(t, item_seed(seed, epoch, index))`
before each item, so a resumed run, or any DataLoader worker layout, reproduces it exactly.
"""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

from medvit.errors import ConfigError, suggest  # noqa: E402

DEFAULTS: dict = {
    "hflip": 0.0,
    "vflip": 0.5,
    "affine": {"scale": [0.9, 1.1], "translate": 0.05, "rotate": 10.0, "p": 0.5},
    "brightness_contrast": {"brightness": 0.1, "contrast": 0.1, "p": 0.5},
    "gamma": {"limits": [80, 120], "p": 0.5},
}


def _section(cfg: dict, key: str) -> dict | None:
    """The merged settings of one sub-section, or None when switched off."""
    value = cfg.get(key, DEFAULTS[key])
    if value is False or value is None:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"augment.{key}: expected a mapping, true or false, got {value!r}")
    unknown = [k for k in value if k not in DEFAULTS[key]]
    if unknown:
        raise ConfigError(f"unknown config key 'augment.{key}.{unknown[0]}': {suggest(unknown[0], DEFAULTS[key])}")
    return {**DEFAULTS[key], **value}


def _prob(cfg: dict, key: str) -> float:
    p = cfg.get(key, DEFAULTS[key])
    p = 0.0 if p is False or p is None else 1.0 if p is True else p
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment.{key}: a probability in [0, 1], got {p!r}")
    return float(p)


def _pair(value, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return (-float(value), float(value))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (float(value[0]), float(value[1]))
    raise ConfigError(f"augment.{name}: a number or a [low, high] pair, got {value!r}")


def build_transform(cfg: dict | None, train: bool) -> A.Compose | None:
    """The training augmentation described by `cfg`; None at validation or when cfg is empty."""
    if not cfg:
        if cfg is not None and not isinstance(cfg, dict):
            raise ConfigError(f"data.augment: expected a mapping, got {cfg!r}")
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(f"data.augment: expected a mapping, got {cfg!r}")
    for key in cfg:
        if key not in DEFAULTS:
            raise ConfigError(f"unknown config key 'augment.{key}': {suggest(key, DEFAULTS)}")
    steps: list = []
    if (p := _prob(cfg, "hflip")) > 0:
        steps.append(A.HorizontalFlip(p=p))
    if (p := _prob(cfg, "vflip")) > 0:
        steps.append(A.VerticalFlip(p=p))
    if (a := _section(cfg, "affine")) is not None:
        steps.append(A.Affine(scale=tuple(a["scale"]), translate_percent=_pair(a["translate"], "affine.translate"),
                              rotate=_pair(a["rotate"], "affine.rotate"), border_mode=0, fill=0, p=a["p"]))
    if (b := _section(cfg, "brightness_contrast")) is not None:
        steps.append(A.RandomBrightnessContrast(brightness_limit=_pair(b["brightness"],
                                                                       "brightness_contrast.brightness"),
                                                contrast_limit=_pair(b["contrast"], "brightness_contrast.contrast"),
                                                p=b["p"]))
    if (g := _section(cfg, "gamma")) is not None:
        steps.append(A.RandomGamma(gamma_limit=tuple(g["limits"]), p=g["p"]))
    if not train or not steps:
        return None  # validated above either way, so a bad key fails at startup, not mid-run
    return A.Compose(steps)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Reseed an albumentations pipeline (and all its children) before one call."""
    transform.set_random_seed(int(seed))


def apply_transform(transform: A.Compose | None, image: np.ndarray, seed: int) -> np.ndarray:
    """Augment one (H, W) float32 image in [0, 1] with a fixed seed; the output is clipped to [0, 1]."""
    if transform is None:
        return image
    seed_transform(transform, seed)
    out = transform(image=image)["image"]
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)
