"""Mean attention distance (Dosovitskiy et al. 2021, fig. 7; seed 001's "how global are the
lower layers"): for each head, the attention-weighted distance between a query patch's centre
and the key patches' centres, in pixels of the model input, averaged over query patches and
images.

The CLS token has no position: its row and column are left out and each query's weights over
the patch keys are renormalised to sum to one, so the number is a distance a head integrates
over, not shrunk by the weight it puts on CLS (that share is reported beside it,
`cls_share`). Attention is recomputed one block and one head at a time
(`medvit.explain.attention.stream_attention` / `head_attention`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medvit.analysis.common import AnalysisRun, batches, write_result
from medvit.errors import ConfigError


def patch_distances(grid: tuple[int, int], patch: tuple[float, float]) -> torch.Tensor:
    """(P, P) Euclidean distances in pixels between the centres of a gh×gw grid of patches of
    size (ph, pw), patches in row-major (timm's token) order."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64) * patch[0],
                            torch.arange(gw, dtype=torch.float64) * patch[1], indexing="ij")
    centres = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)
    return torch.cdist(centres, centres)


def mean_distance(attn: torch.Tensor, distances: torch.Tensor, prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """attn (B, N, N) one head's weights (rows sum to one, `prefix` CLS-like tokens first) ->
    ((B,) mean attention distance over query patches, (B,) mean weight the patch queries put on
    the prefix tokens)."""
    a = attn[:, prefix:, prefix:].double()  # (B, P, P) patch -> patch
    cls_share = 1.0 - a.sum(-1)  # (B, P)
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    return (a * distances.to(a.device)).sum(-1).mean(-1), cls_share.mean(-1)


def model_patch(model) -> tuple[tuple[int, int], tuple[float, float], int]:
    """(grid, patch size in input pixels, number of prefix tokens), read from the model."""
    from medvit.explain.attention import grid_size

    grid = grid_size(model)
    ph, pw = (float(v) for v in model.patch_embed.patch_size)
    return grid, (ph, pw), int(getattr(model, "num_prefix_tokens", 1))


def attention_distance(run: AnalysisRun, batch_size: int = 32) -> dict:
    """(L, H) mean attention distance in input pixels over the run's data, and the CLS share."""
    from medvit.explain.attention import head_attention, stream_attention

    if run.kind != "vit":
        raise ConfigError(f"attention distance needs a ViT; {run.name!r} is a CNN")
    grid, patch, prefix = model_patch(run.model)
    dist = patch_distances(grid, patch).to(run.device)
    depth, heads = len(run.model.blocks), run.model.blocks[0].attn.num_heads
    total = torch.zeros(depth, heads, dtype=torch.float64)
    cls = torch.zeros(depth, heads, dtype=torch.float64)
    n = 0

    def reduce(i: int, attn, qkv) -> None:
        for h, a in head_attention(attn, qkv):
            d, c = mean_distance(a, dist, prefix)
            total[i, h] += d.sum().cpu()
            cls[i, h] += c.sum().cpu()

    for images, _ in batches(run, batch_size, f"distance {run.name}"):
        stream_attention(run.model, images, reduce)
        n += len(images)
    gh, gw = grid
    return {"distance": (total / n).numpy(), "cls_share": (cls / n).numpy(), "layers": depth, "heads": heads,
            "grid": [gh, gw], "patch_pixels": list(patch), "image_pixels": [gh * patch[0], gw * patch[1]],
            "uniform_distance": float(patch_distances(grid, patch).mean())}


def plot_distance(results: dict[str, dict], path: Path) -> Path:
    """Mean attention distance of every head against depth, one colour per model (Dosovitskiy
    et al. fig. 7), with the distance uniform attention would give as a dashed line."""
    from matplotlib.figure import Figure

    from medvit.plots import save_figure

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.subplots()
    for c, (name, r) in enumerate(results.items()):
        d = np.asarray(r["distance"])
        depth, heads = d.shape
        offset = 0.12 * (c - (len(results) - 1) / 2)
        x = np.repeat(np.arange(1, depth + 1), heads) + offset
        ax.scatter(x, d.reshape(-1), s=18, color=f"C{c}", alpha=0.8, label=f"{name} ({heads} heads)")
        ax.axhline(r["uniform_distance"], color=f"C{c}", ls="--", lw=1)
    ax.set(xlabel="layer (depth)", ylabel="mean attention distance (input pixels)",
           title="Mean attention distance per head (dashed: uniform attention)")
    ax.set_xticks(range(1, max(np.asarray(r["distance"]).shape[0] for r in results.values()) + 1))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def run_distance(run: AnalysisRun, out: Path, other: AnalysisRun | None = None, batch_size: int = 32) -> dict:
    """Compute (for `other` too, plotted beside), write result.json, distance.npy, distance.png."""
    from medvit.io import save_npy

    result = attention_distance(run, batch_size)
    shown = {f"{run.name} ({run.run_dir.name})" if other is not None else run.name: result}
    payload = dict(result)
    if other is not None:
        payload["other"] = attention_distance(other, batch_size)
        payload["other"]["backbone"], payload["other"]["run_dir"] = other.name, str(other.run_dir)
        shown[f"{other.name} ({other.run_dir.name})"] = payload["other"]
    save_npy(out / "distance.npy", result["distance"].astype(np.float32))
    plot_distance(shown, out / "distance.png")
    write_result(out, run, "distance", {**payload, "units": "pixels of the model input",
                                        "files": ["distance.npy", "distance.png"]})
    return payload
