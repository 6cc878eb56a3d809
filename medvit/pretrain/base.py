"""What the three self-supervised objectives share: the unlabelled data, an encoder without its
classifier, a forward through (DDP-wrapped) `trainer.net`, the provenance record."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvit.canvas import parse_size
from medvit.config import Config
from medvit.errors import ConfigError
from medvit.train.objectives import Objective
from medvit.train.steps import autocast


def strip_classifier(model: nn.Module) -> int:
    """Replace the backbone's classifier by an identity (in place): the model then returns its
    pooled features. Returns the feature width. The state dict loses the classifier, so
    `train --init` loads every other tensor and starts with a fresh head."""
    from medvit.models.registry import _classifier_prefix

    prefix = _classifier_prefix(model)
    head = model.get_submodule(prefix)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"backbone {getattr(model, 'medvit_name', '?')}: classifier {prefix!r} is not a "
                          "linear layer; self-supervised pretraining needs one to remove")
    model.set_submodule(prefix, nn.Identity())
    return head.in_features


def normalise_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the model's input pre-hook does (ImageNet-initialised backbones), for code that calls
    the encoder's parts directly (MAE)."""
    from medvit.models.inputs import NORM_MEAN, NORM_STD

    if getattr(model, "medvit_input_norm", None):
        return (x - getattr(model, NORM_MEAN).to(x.dtype)) / getattr(model, NORM_STD).to(x.dtype)
    return x


def mlp(dims: list[int], batch_norm: bool = False) -> nn.Sequential:
    """Linear layers with GELU between them (and BatchNorm before it: DINO's use_bn for CNNs,
    SimCLR's projector); BatchNorm spreads the images apart when the features start alike."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b)] if batch_norm else []
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class SelfSupervised(Objective):
    """Base of MAE / DINO / SimCLR. Subclasses set `name`, `views(cfg, canvas)` and `make_net`,
    and may override `criterion` (the net's output -> loss; default: the output is the loss)."""

    kinds = ("vit", "cnn")
    classifies = False

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.p = cfg, cfg.pretrain
        self.record: dict = {}

    def views(self, cfg: Config, canvas: tuple[int, int]) -> list:
        raise NotImplementedError

    def make_net(self, trainer, feature_dim: int) -> nn.Module:
        raise NotImplementedError

    def data(self, cfg: Config):
        from medvit.pretrain.data import unlabelled_data

        return unlabelled_data(cfg, self.views(cfg, parse_size(cfg.data.image_size)))

    def build(self, trainer) -> nn.Module:
        from medvit.models import backbone_kind

        kind = backbone_kind(trainer.model)
        if kind not in self.kinds:
            raise ConfigError(f"pretrain method {self.name} needs a {' or '.join(self.kinds)} backbone; "
                              f"{trainer.cfg.model.backbone} is a {kind}")
        width = strip_classifier(trainer.model)
        self.record = {"method": self.name, "images": len(trainer.data.train),
                       "data": [str(Path(d).resolve()) for d in [trainer.cfg.data.dir, *self.p.extra_dirs]],
                       "include_test": bool(self.p.include_test), "run": str(Path(trainer.run_dir).resolve()),
                       "backbone": trainer.cfg.model.backbone}
        self.net = self.make_net(trainer, width).to(trainer.device)
        return self.net

    def state_dict(self) -> dict:
        """The parts beside the encoder (decoder, heads): the encoder is the checkpoint's "model"."""
        return {"net": {k: v for k, v in self.net.state_dict().items() if not k.startswith("encoder.")}}

    def load_state_dict(self, state: dict) -> None:
        missing, unexpected = self.net.load_state_dict(state["net"], strict=False)
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise ConfigError(f"checkpoint of another pretraining set-up (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")

    def loss(self, trainer, images, labels) -> tuple[Any, dict]:
        dev = trainer.device
        views = (images.to(dev, non_blocking=True) if torch.is_tensor(images)
                 else [v.to(dev, non_blocking=True) for v in images])
        with autocast(dev, trainer.amp):
            out = trainer.ddp_model(views)
        n = len(labels)
        return self.criterion(trainer, views, out).float(), {"n": n, "errors": 0}

    def criterion(self, trainer, views, out) -> torch.Tensor:
        return out

    def validate(self, trainer) -> dict:
        return {}  # no labels: the loss curve is the signal (the fine-tuning study scores the features)

    def payload(self) -> dict:
        return {"pretrain": self.record}
