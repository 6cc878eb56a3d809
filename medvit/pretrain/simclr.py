"""SimCLR (Chen et al. 2020): two views of an image attract, the other images of the batch repel
(NT-Xent on a projection of the pooled features). Meant for CNNs; works on ViTs too. Negatives
come from the rank's own batch under DDP. Written by hand for the reasons in mae.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvit.pretrain.base import SelfSupervised, mlp


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy over 2B embeddings: each one's positive is its pair."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLRNet(nn.Module):
    def __init__(self, encoder: nn.Module, projector: nn.Module, temperature: float) -> None:
        super().__init__()
        self.encoder, self.projector, self.temperature = encoder, projector, temperature

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = self.projector(self.encoder(torch.cat(views[:2])))
        return nt_xent(*z.chunk(2), self.temperature)


class SimCLR(SelfSupervised):
    name = "simclr"

    def views(self, cfg, canvas):
        return [(2, canvas, tuple(self.p.crop_scale))]

    def make_net(self, trainer, feature_dim: int) -> nn.Module:
        p = self.p
        projector = mlp([feature_dim, p.hidden_dim, p.bottleneck_dim], batch_norm=True)
        return SimCLRNet(trainer.model, projector, p.temperature)
