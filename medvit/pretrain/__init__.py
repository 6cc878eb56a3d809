"""Self-supervised pretraining on the user's own unlabelled images (`medvit pretrain`).

Each method is an objective of the one trainer (medvit.train.objectives): MAE for ViTs, DINO for
ViTs and CNNs, SimCLR for CNNs. The encoder is the backbone `medvit train` builds, so
`medvit train --init RUN_DIR` starts from it with a fresh classifier.
"""
from __future__ import annotations


def objective(method: str, cfg):
    """The objective for `method` (mae | dino | simclr)."""
    if method == "mae":
        from medvit.pretrain.mae import MAE as cls
    elif method == "dino":
        from medvit.pretrain.dino import DINO as cls
    else:
        from medvit.pretrain.simclr import SimCLR as cls
    return cls(cfg)
