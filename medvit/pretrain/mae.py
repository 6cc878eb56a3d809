"""Masked autoencoder (He et al. 2022) around the very timm `VisionTransformer` `medvit train`
builds: 75 % of the patches are dropped, only the visible 25 % (plus the CLS token) go through
the encoder's blocks, a light decoder predicts the missing pixels, the loss is the per-patch
normalised pixel error on the masked patches only.

Written here rather than taken from lightly: lightly's MAE modules assume a square token grid
(sine-cosine positions, `unpatchify`), re-initialise the given ViT and freeze its positions;
medvit canvases may be H x W and the encoder must stay exactly the fine-tuned model. The token
grid is always read from `patch_embed.grid_size`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medvit.errors import ConfigError
from medvit.pretrain.base import SelfSupervised, normalise_input


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (1 + gh*gw, dim), a zero row first for the CLS token."""
    if dim % 4:
        raise ConfigError(f"pretrain.decoder_dim {dim} must be a multiple of 4 (sine-cosine positions)")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    ys, xs = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    parts = [f(np.outer(c.reshape(-1), omega)) for c in (ys, xs) for f in (np.sin, np.cos)]
    pos = np.concatenate([np.zeros((1, dim))] + [np.concatenate(parts, axis=1)], axis=0)
    return torch.tensor(pos, dtype=torch.float32)


def patchify(images: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, gh*gw, ph*pw*C), patches in the ViT's token order (row-major)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], ph: int, pw: int, c: int = 1) -> torch.Tensor:
    """(B, gh*gw, ph*pw*C) -> (B, C, gh*ph, gw*pw)."""
    gh, gw = grid
    x = patches.reshape(patches.shape[0], gh, gw, ph, pw, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], c, gh * ph, gw * pw)


class MAENet(nn.Module):
    """encoder (the ViT) + decoder; forward(images) -> loss."""

    def __init__(self, vit: nn.Module, mask_ratio: float, dec_dim: int, dec_depth: int, dec_heads: int,
                 norm_pix: bool) -> None:
        super().__init__()
        from medvit._compat import import_timm

        import_timm()
        from timm.models.vision_transformer import Block

        if getattr(vit, "cls_token", None) is None or getattr(vit, "reg_token", None) is not None \
                or getattr(vit, "no_embed_class", False):
            raise ConfigError("MAE here needs a ViT with one CLS token and positions on every token")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"pretrain.mask_ratio {mask_ratio}: a share in (0, 1), e.g. 0.75")
        self.encoder, self.mask_ratio, self.norm_pix = vit, mask_ratio, norm_pix
        self.grid = tuple(vit.patch_embed.grid_size)  # (gh, gw): never assumed square
        self.ph, self.pw = vit.patch_embed.patch_size
        self.in_chans = vit.patch_embed.proj.in_channels
        dim = vit.embed_dim
        self.dec_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.register_buffer("dec_pos", sincos_2d(dec_dim, *self.grid)[None], persistent=False)
        self.dec_blocks = nn.Sequential(*[Block(dec_dim, dec_heads, mlp_ratio=4.0, qkv_bias=True)
                                          for _ in range(dec_depth)])
        self.dec_norm = nn.LayerNorm(dec_dim)
        self.dec_pred = nn.Linear(dec_dim, self.ph * self.pw * self.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.dec_embed, self.dec_pred, *self.dec_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def canvas(self) -> tuple[int, int]:
        return self.grid[0] * self.ph, self.grid[1] * self.pw

    def mask(self, b: int, device, noise: torch.Tensor | None = None):
        """ids_keep (B, K), ids_restore (B, N), mask (B, N: 1 = hidden) from uniform noise."""
        n = self.grid[0] * self.grid[1]
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        noise = torch.rand(b, n, device=device) if noise is None else noise.to(device)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        mask = torch.ones(b, n, device=device)
        mask[:, :keep] = 0
        return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)

    def encode(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Visible tokens only through the blocks, as timm's forward_features does for all: (B, 1+K, D)."""
        v = self.encoder
        t = v.patch_embed(x)
        t = t.flatten(1, 2) if t.ndim == 4 else t  # (B, N, D); NHWC when timm's dynamic size is on
        t = t + v.pos_embed[:, 1:]
        t = torch.gather(t, 1, ids_keep[..., None].expand(-1, -1, t.shape[-1]))  # (B, K, D)
        cls = (v.cls_token + v.pos_embed[:, :1]).expand(t.shape[0], -1, -1)
        t = v.norm_pre(v.pos_drop(torch.cat([cls, t], dim=1)))
        return v.norm(v.blocks(t))

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1+K, D) -> predicted patches (B, N, ph*pw*C)."""
        y = self.dec_embed(latent)
        b, n = ids_restore.shape
        filler = self.mask_token.expand(b, n - (y.shape[1] - 1), -1)
        tokens = torch.cat([y[:, 1:], filler], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :1], tokens], dim=1) + self.dec_pos.to(y.dtype)
        return self.dec_pred(self.dec_norm(self.dec_blocks(y)))[:, 1:]

    def target(self, x: torch.Tensor) -> torch.Tensor:
        t = patchify(x, self.ph, self.pw)
        if self.norm_pix:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t

    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None):
        """(loss, predicted patches, mask)."""
        x = normalise_input(self.encoder, images)
        ids_keep, ids_restore, mask = self.mask(x.shape[0], x.device, noise)
        pred = self.decode(self.encode(x, ids_keep), ids_restore)
        err = (pred.float() - self.target(x).float()).pow(2).mean(-1)  # (B, N)
        return (err * mask).sum() / mask.sum(), pred, mask

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)[0]


class MAE(SelfSupervised):
    name = "mae"
    kinds = ("vit",)
    figure_images = 3

    def views(self, cfg, canvas):
        return [(1, canvas, tuple(self.p.crop_scale))]

    def make_net(self, trainer, feature_dim: int) -> nn.Module:
        p = self.p
        return MAENet(trainer.model, p.mask_ratio, p.decoder_dim, p.decoder_depth, p.decoder_heads, p.norm_pix_loss)

    def end_epoch(self, trainer, row: dict) -> None:
        """Every `show_every` epochs (main rank): original / masked / reconstructed for a few fixed
        images, saved as RUN_DIR/mae_figure/epoch_NNN.npz (the figure is drawn from them)."""
        every = max(1, int(self.p.show_every))
        if not trainer.dist.main or row["epoch"] % every:
            return
        from medvit.models.hooks import eval_no_grad
        from medvit.pretrain.data import fixed_images
        from medvit.pretrain.plots import save_arrays

        net = trainer.net
        images = fixed_images(trainer.data.train, self.figure_images, net.canvas)
        noise = torch.rand(images.shape[0], net.grid[0] * net.grid[1], generator=torch.Generator().manual_seed(0))
        with eval_no_grad(net):  # the one eval-mode + no-grad context (medvit.models.hooks)
            x = images.to(trainer.device)
            _, pred, mask = net.predict(x, noise)
            masked, recon = reconstruct(net, normalise_input(net.encoder, x), pred, mask)
        save_arrays(trainer.run_dir, row["epoch"], images.numpy(), masked, recon)


def reconstruct(net: MAENet, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
    """(masked input, visible patches + predicted hidden ones) as numpy (B, H, W), in x's scale:
    with normalised targets, each predicted patch takes the true patch's mean and spread."""
    target = patchify(x, net.ph, net.pw).float()
    pred = pred.float()
    if net.norm_pix:
        pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
    m = mask[..., None]
    masked = unpatchify(target * (1 - m), net.grid, net.ph, net.pw, net.in_chans)
    recon = unpatchify(target * (1 - m) + pred * m, net.grid, net.ph, net.pw, net.in_chans)
    return masked[:, 0].detach().cpu().numpy(), recon[:, 0].clamp(0, 1).detach().cpu().numpy()
