"""Backbones by name: `create_backbone("vit", patch_size=8)`, `list_backbones("convnext*")`.

Importing this package registers every built-in backbone (vit.py, cnn.py, seeds.py).
"""
from __future__ import annotations

from medvit.models.registry import (
    backbone_default,
    backbone_kind,
    create_backbone,
    list_backbones,
    load_weights,
    register_backbone,
)
from medvit.models import cnn, seeds, vit  # noqa: E402,F401  (registration side effects)

__all__ = [
    "backbone_default", "backbone_kind", "create_backbone", "list_backbones", "load_weights", "register_backbone",
]
