"""DINO (Caron et al. 2021): self-distillation with no labels, for ViTs and CNNs.

The student (encoder + projection head) matches the softmax of an EMA teacher on another view
of the same image; the teacher's outputs are centred (a running mean) and sharpened (low
temperature) so neither collapses. Two global views of the canvas; optional small local crops
(multi-crop, CNNs: a ViT's position grid is fixed to the canvas). The head's last layer is a
cosine layer (DINO's norm_last_layer). Written by hand (about 80 lines) for the reasons in mae.py.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from medvit.errors import ConfigError
from medvit.pretrain.base import SelfSupervised, mlp
from medvit.train.steps import autocast


class DINOHead(nn.Module):
    """features -> MLP -> L2-normalised bottleneck -> cosine similarity to `out_dim` prototypes."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = mlp([in_dim, hidden, hidden, bottleneck], batch_norm=True)
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).t()


class DINONet(nn.Module):
    """encoder + head; forward(list of view batches) -> list of (B, out_dim) outputs."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for group in _same_size_runs(views):  # one forward per image size
            feats = self.head(self.encoder(torch.cat(group)))
            out.extend(feats.chunk(len(group)))
        return out


def _same_size_runs(views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    runs: list[list[torch.Tensor]] = []
    for v in views:
        if runs and runs[-1][0].shape == v.shape:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


class DINO(SelfSupervised):
    name = "dino"

    def views(self, cfg, canvas):
        views = [(2, canvas, tuple(self.p.crop_scale))]
        if self.p.local_crops:
            small = (max(8, canvas[0] // 2), max(8, canvas[1] // 2))
            views.append((int(self.p.local_crops), small, (0.05, min(0.3, self.p.crop_scale[0]))))
        return views

    def make_net(self, trainer, feature_dim: int) -> nn.Module:
        from medvit.models import backbone_kind

        p = self.p
        if p.local_crops and backbone_kind(trainer.model) == "vit":
            raise ConfigError("pretrain.local_crops (multi-crop) needs a CNN: the ViT's positions are "
                              "fixed to the canvas; use pretrain.local_crops=0")
        net = DINONet(trainer.model, DINOHead(feature_dim, p.hidden_dim, p.bottleneck_dim, p.out_dim))
        self.teacher = copy.deepcopy(net).to(trainer.device)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.center = torch.zeros(1, p.out_dim, device=trainer.device)
        self.total_steps = max(1, trainer.cfg.train.epochs * len(trainer.sampler))
        return net

    def criterion(self, trainer, views, student):
        p = self.p
        with torch.no_grad(), autocast(trainer.device, trainer.amp):
            teacher = self.teacher(views[:2])  # global views only
        with torch.no_grad():
            t_out = [F.softmax((t.float() - self.center) / p.teacher_temp, dim=-1) for t in teacher]
            self._update_center(trainer, torch.cat(teacher).float())
        terms = []
        for i, t in enumerate(t_out):
            for j, s in enumerate(student):
                if i != j:
                    terms.append(-(t * F.log_softmax(s.float() / p.student_temp, dim=-1)).sum(-1).mean())
        return torch.stack(terms).mean()

    def _update_center(self, trainer, teacher: torch.Tensor) -> None:
        mean = teacher.sum(0, keepdim=True)
        n = torch.tensor([float(teacher.shape[0])], device=mean.device)
        if trainer.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(mean)
            dist.all_reduce(n)
        m = self.p.center_momentum
        self.center = self.center * m + (mean / n) * (1 - m)

    def after_step(self, trainer) -> None:
        """Teacher <- EMA of the student; the momentum rises from teacher_momentum to 1 (cosine)."""
        m0 = self.p.teacher_momentum
        m = 1 - (1 - m0) * (math.cos(math.pi * trainer.c.step / self.total_steps) + 1) / 2
        with torch.no_grad():
            student = trainer.net.state_dict()
            for name, t in self.teacher.state_dict().items():
                s = student[name]
                if t.dtype.is_floating_point:
                    t.mul_(m).add_(s.detach(), alpha=1 - m)
                else:
                    t.copy_(s)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "teacher": self.teacher.state_dict(), "center": self.center.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.teacher.load_state_dict(state["teacher"])
        self.center = state["center"].to(self.center.device)
