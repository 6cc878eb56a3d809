"""ViT attention: per-layer, per-head softmax(q kᵀ · scale), CLS maps and attention rollout.

Every medvit ViT runs with fused attention (`F.scaled_dot_product_attention`), which never
materialises the attention matrix. Rather than switching a block to its slow path, a forward
hook on each `block.attn.qkv` receives the projection the block computes anyway and rebuilds
softmax(q kᵀ · scale) from it with the block's `q_norm` / `k_norm` / `scale` (no second qkv
matmul); fused attention stays on and the hooks are always removed (`medvit.models.hooks`).
The hooks compute only what the caller needs (the CLS row, a head-fused matrix or every head),
so a patch-8 ViT at 512 px (4097 tokens) does not hold six layers of 8 × 4097 × 4097 matrices
unless `attention_maps` is asked for them.

`stream_attention(model, images, fn)` is the one per-block streaming API: it calls fn(layer,
attn, qkv) as each block runs, so a caller (explain, `medvit.analysis`) keeps only what it
reduces from one block before the next; `head_attention` yields one head's (B, N, N) map at a
time. `qkv_hooks` is the hook mechanism under both, and lets a caller replace a block's qkv
output (the ablation in `medvit.analysis.ablation` zeroes value rows that way).

Attention masks (`attn_mask`, `is_causal`) are not used by timm's classification ViTs and are
ignored here.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from medvit.errors import ConfigError, suggest
from medvit.models.hooks import eval_no_grad, forward_hooks

HEAD_FUSIONS = ("mean", "max", "min")


def _check_vit(model: nn.Module) -> None:
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed")):
        name = getattr(model, "medvit_name", type(model).__name__)
        raise ConfigError(f"model {name!r} is not a ViT (no .blocks / .patch_embed): attention maps "
                          "need a ViT; use method 'gradcam' for CNNs")


def grid_size(model: nn.Module) -> tuple[int, int]:
    """(gh, gw) patch grid, read from the model (never a constant)."""
    gh, gw = model.patch_embed.grid_size
    return int(gh), int(gw)


def _split_qkv(attn: nn.Module, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output of `attn.qkv` (B, N, 3·C) -> q, k, v as (B, H, N, head_dim), exactly as
    timm's Attention.forward makes them."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attention_from_qkv(attn: nn.Module, qkv: torch.Tensor, queries: slice = slice(None)) -> torch.Tensor:
    """softmax(q kᵀ · scale) of one timm Attention from its qkv projection (B, N, 3·C):
    (B, H, Q, N) for the query rows `queries` (all rows by default)."""
    q, k, _ = _split_qkv(attn, qkv)
    scores = (q[:, :, queries] * attn.scale) @ k.transpose(-2, -1)  # (B, H, Q, N)
    return scores.float().softmax(dim=-1)


def attention_from_input(attn: nn.Module, x: torch.Tensor, queries: slice = slice(None)) -> torch.Tensor:
    """The same for the block's input tokens x (B, N, C)."""
    return attention_from_qkv(attn, attn.qkv(x), queries)


def qkv_hooks(model: nn.Module, fn: Callable[[int, nn.Module, torch.Tensor], torch.Tensor | None],
              layers: Sequence[int] | None = None) -> contextlib.AbstractContextManager:
    """Forward hooks on `blocks[i].attn.qkv` (all blocks, or `layers`) calling fn(i, attn, qkv)
    with the projection (B, N, 3·C); a tensor fn returns replaces the block's qkv. The hooks are
    removed on exit, also when the body raises (`medvit.models.hooks.forward_hooks`)."""
    _check_vit(model)
    wanted = range(len(model.blocks)) if layers is None else layers
    attns = [(i, model.blocks[i].attn) for i in wanted]
    return forward_hooks((attn.qkv, lambda module, args, output, i=i, attn=attn: fn(i, attn, output))
                         for i, attn in attns)


def stream_attention(model: nn.Module, images: torch.Tensor,
                     fn: Callable[[int, nn.Module, torch.Tensor], None],
                     layers: Sequence[int] | None = None) -> torch.Tensor:
    """Forward `images` (no grad, eval mode) calling fn(layer, attn, qkv) with each block's qkv
    projection (B, N, 3·C) as the block runs (one block at a time; nothing is kept unless fn
    keeps it). Returns the logits. Hooks are always removed, also when the forward raises."""
    def observe(i: int, attn: nn.Module, qkv: torch.Tensor) -> None:
        fn(i, attn, qkv)  # returns nothing: the block's qkv is left as it is

    device = next(model.parameters()).device
    with qkv_hooks(model, observe, layers), eval_no_grad(model):
        return model(images.to(device))


def head_attention(attn: nn.Module, qkv: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(h, softmax(q_h k_hᵀ · scale)) for each head h, one (B, N, N) float32 map at a time."""
    q, k, _ = _split_qkv(attn, qkv)
    for h in range(q.shape[1]):
        yield h, ((q[:, h] * attn.scale) @ k[:, h].transpose(-2, -1)).float().softmax(dim=-1)


def attention_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, L, H, N, N) attention of every layer and head (N tokens, CLS first); rows sum to one.
    Memory grows with N²: for large grids use `cls_attention` or `attention_rollout`."""
    out: list[torch.Tensor] = []
    stream_attention(model, images, lambda i, attn, qkv: out.append(attention_from_qkv(attn, qkv).cpu()))
    return torch.stack(out, dim=1)


def _patch_grid(model: nn.Module, row: torch.Tensor) -> torch.Tensor:
    """(..., N) attention over all tokens -> (..., gh, gw) over the patch tokens."""
    gh, gw = grid_size(model)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    patches = row[..., prefix:]
    if patches.shape[-1] != gh * gw:
        raise ConfigError(f"{patches.shape[-1]} patch tokens do not fill the model's {gh}x{gw} grid; "
                          f"feed images of the size the model was built for")
    return patches.reshape(*patches.shape[:-1], gh, gw)


def cls_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, L, H, gh, gw): attention of the CLS token to each patch, per layer and head.
    `.mean(2)` averages the heads."""
    rows: list[torch.Tensor] = []
    cls = slice(0, 1)  # timm puts the CLS token first
    stream_attention(model, images,
                              lambda i, attn, qkv: rows.append(attention_from_qkv(attn, qkv, cls)[:, :, 0].cpu()))
    return _patch_grid(model, torch.stack(rows, dim=1))


def _fused_attention(attn: nn.Module, qkv: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """(B, N, N): the heads' softmax(q kᵀ · scale) fused by mean / max / min, one head at a time
    (a (B, N, N) block stays in cache; reducing a (B, H, N, N) tensor over H was 3x slower here)."""
    out, heads = None, 0
    for h, a in head_attention(attn, qkv):
        heads += 1
        if out is None:
            out = a
        elif head_fusion == "mean":
            out.add_(a)
        else:
            (torch.maximum if head_fusion == "max" else torch.minimum)(out, a, out=out)
    return out.div_(heads) if head_fusion == "mean" else out


def _discard_lowest(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the `ratio` share of smallest weights of each (N, N) matrix, keeping every weight
    on the CLS column (after jacobgil/vit-explain's `discard_ratio`, which spares only [0, 0])."""
    if ratio <= 0:
        return a
    b, n, _ = a.shape
    low = a.reshape(b, -1).topk(int(n * n * ratio), dim=1, largest=False).indices
    drop = torch.zeros(b, n * n, dtype=torch.bool, device=a.device).scatter_(1, low, True)
    drop = drop.reshape(b, n, n)
    drop[:, :, 0] = False
    return a.masked_fill(drop, 0.0)


def attention_rollout(model: nn.Module, images: torch.Tensor, discard_ratio: float = 0.0,
                      head_fusion: str = "mean") -> torch.Tensor:
    """(B, gh, gw) attention rollout (Abnar & Zuidema 2020): each layer's head-fused attention
    A_l becomes A_l' = 0.5·A_l + 0.5·I with rows renormalised; the rollout is
    A_L' · … · A_1' and its CLS row over the patch tokens is the map.

    Written by hand: neither timm nor MONAI offers rollout. Only the CLS row is needed, so it is
    carried as a vector from the last layer down (L vector-matrix products, not L matrix ones)."""
    if head_fusion not in HEAD_FUSIONS:
        raise ConfigError(f"head_fusion {head_fusion!r} is unknown; {suggest(head_fusion, HEAD_FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    layers: list[torch.Tensor] = []

    def keep(i: int, attn: nn.Module, qkv: torch.Tensor) -> None:
        a = _discard_lowest(_fused_attention(attn, qkv, head_fusion), discard_ratio)
        a.mul_(0.5).diagonal(dim1=-2, dim2=-1).add_(0.5)  # 0.5·A + 0.5·I, in place
        if discard_ratio > 0 or head_fusion != "mean":  # rows of a head-mean already sum to one
            a = a / a.sum(dim=-1, keepdim=True)
        layers.append(a)  # (B, N, N), rows sum to one

    stream_attention(model, images, keep)
    row = torch.zeros_like(layers[-1][:, 0])  # (B, N)
    row[:, 0] = 1.0  # e_CLS
    for a in reversed(layers):
        row = torch.einsum("bn,bnm->bm", row, a)
    return _patch_grid(model, row.cpu())


def block_output_from_attention(attn: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """What timm's Attention returns for tokens x given attention `weights` (B, H, N, N):
    (weights @ v) through norm, gate and proj. Used by the tests to check the recomputation."""
    b, n, _ = x.shape
    _, _, v = _split_qkv(attn, attn.qkv(x))
    out = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, -1)
    out = attn.norm(out)
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj(out)
