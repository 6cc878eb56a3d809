"""Sparsity of attention (seed 004, sections 3.2-3.4, figures 2-3).

For layer l, head h and image, AttnMap_{l,h} = softmax(q kᵀ/√d) is N×N (rows sum to one) and

    mu_{l,j} = 1/(H N) sum_h sum_i AttnMap_{l,h,ij},    nu_{l,j} = -log10 mu_{l,j}

is the mean attention column j receives. Summed over all N columns, CLS included, mu is exactly
one per image and layer (each of the H·N rows sums to one): that is the identity the tests check.
The CLS token then stays out of everything seed 004 shows ("not considering the 0th feature";
appendix A: class tokens "are all not considered"): the nu histograms, the -log10 mean line, the
top-5% columns and the ablation rank the patch columns j >= 1 only; the CLS column's mu is
reported on its own (`cls_mu`).

Also written: the share of all top-5% picks that falls on each patch (summed over images, each
image picking k = 5% of the patches; the map sums to one per layer, seed fig. 3b; k times it is
the probability that the patch is among an image's top 5%), and the mean over images of the
correlation coefficient between the attention maps of each pair of heads of a layer (fig. 2a)
and of each pair of layers' head-mean maps (fig. 2b). Attention is recomputed one block and one
head at a time; for the correlations at most `max_rows` query rows (evenly spaced) of each map
are kept: all of them up to 1025 tokens (patch 16 at 512 px), a fixed subset beyond (patch 8:
1025 of 4097 rows).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medvit.analysis.common import AnalysisRun, batches, write_result
from medvit.errors import ConfigError

NU_EDGES = np.linspace(0.0, 8.0, 161)  # nu from 0 (mu = 1) to 8 (mu = 1e-8); outside: clipped
TOP_SHARE = 0.05
MAX_ROWS = 1025


def layer_mu(attn, qkv: torch.Tensor, each_head: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """(B, N) mu_{l,j} of one block from its qkv projection, one head at a time; `each_head(h, A_h)`
    sees every head's (B, N, N) map on the way."""
    from medvit.explain.attention import head_attention

    total, heads = None, 0
    for h, a in head_attention(attn, qkv):
        if each_head is not None:
            each_head(h, a)
        cols = a.sum(dim=1)  # (B, N): attention column j receives over the rows i
        total = cols if total is None else total + cols
        heads += 1
    return total / (heads * total.shape[-1])


def top_columns(mu: torch.Tensor, share: float, prefix: int = 1) -> torch.Tensor:
    """(B, k) indices (into the patch columns, 0 = first patch) of each image's top-`share` mu
    over the patch columns, k = max(1, round(share · patches))."""
    patches = mu[:, prefix:]
    k = max(1, round(share * patches.shape[1]))
    return patches.topk(k, dim=1).indices


def _corr(x: torch.Tensor) -> torch.Tensor:
    """(B, K, D) float32 -> (B, K, K) float64 Pearson correlation between the K rows of each
    item. Centres x in place (no copy of a patch-8 map stack); products summed by one bmm."""
    x -= x.mean(-1, keepdim=True)
    g = torch.bmm(x, x.transpose(1, 2)).double()
    d = g.diagonal(dim1=-2, dim2=-1).clamp_min(1e-30).sqrt()
    return g / (d[..., :, None] * d[..., None, :])


def attention_sparsity(run: AnalysisRun, batch_size: int = 32, max_rows: int = MAX_ROWS) -> dict:
    """mu, nu histograms, top-5% maps and head / layer correlations over the run's data."""
    from medvit.explain.attention import grid_size, stream_attention

    if run.kind != "vit":
        raise ConfigError(f"attention sparsity needs a ViT; {run.name!r} is a CNN (seed 004 ranks CNN "
                          "channels by their l1 norm in the ablation: `medvit analyze RUN_DIR ablation`)")
    model = run.model
    depth, heads = len(model.blocks), model.blocks[0].attn.num_heads
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    gh, gw = grid_size(model)
    n_tok = prefix + gh * gw
    rows = torch.arange(n_tok) if n_tok <= max_rows else torch.linspace(0, n_tok - 1, max_rows).round().long()
    mu_sum = torch.zeros(depth, n_tok, dtype=torch.float64)
    hist = np.zeros((depth, len(NU_EDGES) - 1), dtype=np.int64)
    top = torch.zeros(depth, gh * gw, dtype=torch.float64)
    head_corr = torch.zeros(depth, heads, heads, dtype=torch.float64)
    layer_corr = torch.zeros(depth, depth, dtype=torch.float64)
    worst = 0.0  # largest |sum_j mu_{l,j} - 1| seen
    n = 0

    for images, _ in batches(run, batch_size, f"sparsity {run.name}"):
        kept: list[torch.Tensor] = []  # per layer: (B, R·N) head-mean rows, for the layer correlation

        def reduce(i: int, attn, qkv) -> None:
            nonlocal worst
            maps = torch.empty(qkv.shape[0], heads, len(rows) * n_tok, device=qkv.device)  # (B, H, R·N)

            def keep_rows(h: int, a: torch.Tensor) -> None:
                maps[:, h] = (a if len(rows) == n_tok else a[:, rows.to(a.device)]).flatten(1)

            mu = layer_mu(attn, qkv, keep_rows)
            kept.append(maps.mean(1))  # (B, R·N) head-mean map
            head_corr[i] += _corr(maps).sum(0).cpu()
            mu = mu.double().cpu()
            worst = max(worst, float((mu.sum(-1) - 1).abs().max()))
            mu_sum[i] += mu.sum(0)
            nu = -torch.log10(mu[:, prefix:].clamp_min(1e-30)).numpy()
            hist[i] += np.histogram(np.clip(nu, NU_EDGES[0], NU_EDGES[-1]), NU_EDGES)[0]
            idx = top_columns(mu, TOP_SHARE, prefix)
            top[i] += torch.zeros(len(idx), gh * gw, dtype=torch.float64).scatter_(1, idx.cpu(), 1.0).sum(0)

        stream_attention(model, images, reduce)
        layer_corr += _corr(torch.stack(kept, dim=1)).sum(0).cpu()
        n += len(images)

    mu_mean = (mu_sum / n).numpy()
    k = max(1, round(TOP_SHARE * gh * gw))
    centres = (NU_EDGES[:-1] + NU_EDGES[1:]) / 2
    # mean of the patch columns' mu over images and columns, the seed's green line at -log10 of it
    mean_mu = mu_mean[:, prefix:].mean(1)
    return {"mu_mean": mu_mean, "cls_mu": mu_mean[:, :prefix].sum(1), "mean_mu": mean_mu,
            "neg_log10_mean_mu": -np.log10(mean_mu), "nu_mean": (hist * centres).sum(1) / hist.sum(1),
            "nu_edges": NU_EDGES, "nu_hist": hist,
            "top_share": TOP_SHARE, "top_k": k, "top_prob": (top / (n * k)).numpy().reshape(depth, gh, gw),
            "head_corr": (head_corr / n).numpy(), "layer_corr": (layer_corr / n).numpy(),
            "corr_rows": int(len(rows)), "tokens": n_tok, "grid": [gh, gw], "heads": heads, "layers": depth,
            "mu_sum_max_error": worst, "images": n}


# ------------------------------------------------------------------------------- figures


def _grid(n: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows))
    return fig, fig.subplots(rows, cols, squeeze=False).reshape(-1)


def plot_nu_hist(r: dict, path: Path, title: str) -> Path:
    """Per layer: the distribution of nu over images and patch columns, with -log10(mean mu)
    as the green line (seed 004 fig. 3a / S4)."""
    from medvit.plots import save_figure

    fig, axes = _grid(r["layers"], (3.4, 2.8))
    edges = np.asarray(r["nu_edges"])
    for i, ax in enumerate(axes):
        if i >= r["layers"]:
            ax.axis("off")
            continue
        h = np.asarray(r["nu_hist"][i], dtype=float)
        ax.stairs(h / max(h.sum(), 1) / np.diff(edges), edges, fill=True, alpha=0.6, color="C0")
        ax.axvline(r["neg_log10_mean_mu"][i], color="green", lw=1.5, label="-log10 mean mu")
        used = np.nonzero(h)[0]
        if used.size:
            ax.set_xlim(edges[max(used[0] - 2, 0)], edges[min(used[-1] + 3, len(edges) - 1)])
        ax.set(title=f"layer {i + 1}", xlabel="nu = -log10 mu", ylabel="density")
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_top_map(r: dict, path: Path, title: str) -> Path:
    """Per layer: the probability that a patch is among an image's top-5% mu (fig. 3b)."""
    from medvit.plots import save_figure

    probs = np.asarray(r["top_prob"])
    fig, axes = _grid(r["layers"], (3.0, 3.0))
    gh, gw = r["grid"]
    for i, ax in enumerate(axes):
        if i >= r["layers"]:
            ax.axis("off")
            continue
        im = ax.imshow(probs[i], cmap="viridis", vmin=0)
        if gh * gw <= 100:
            for (y, x), v in np.ndenumerate(probs[i]):
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=5, color="w")
        ax.set(title=f"layer {i + 1}", xticks=[], yticks=[])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_correlations(r: dict, path: Path, title: str) -> Path:
    """Left: mean correlation between the heads of the last layer (fig. 2a); right: between
    the layers' head-mean maps (fig. 2b)."""
    from matplotlib.figure import Figure

    from medvit.plots import save_figure

    fig = Figure(figsize=(9.5, 4.2))
    axes = fig.subplots(1, 2)
    panels = ((axes[0], np.asarray(r["head_corr"])[-1], "head"), (axes[1], np.asarray(r["layer_corr"]), "layer"))
    for ax, m, what in panels:
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        k = m.shape[0]
        if k <= 12:
            for (y, x), v in np.ndenumerate(m):
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(k), [str(j + 1) for j in range(k)])
        ax.set_yticks(range(k), [str(j + 1) for j in range(k)])
        ax.set(xlabel=what, ylabel=what,
               title="heads of the last layer" if what == "head" else "layers (head-mean maps)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def run_sparsity(run: AnalysisRun, out: Path, batch_size: int = 32) -> dict:
    from medvit.io import save_npy

    r = attention_sparsity(run, batch_size)
    for name in ("mu_mean", "nu_hist", "top_prob", "head_corr", "layer_corr"):
        save_npy(out / f"{name}.npy", np.asarray(r[name]))
    plot_nu_hist(r, out / "nu_hist.png", f"{run.name}: nu = -log10 mu per layer ({r['images']} images)")
    plot_top_map(r, out / "top5_map.png", f"{run.name}: share of the top-5% mu picks per patch (sums to 1)")
    plot_correlations(r, out / "correlations.png", f"{run.name}: mean correlation of attention maps")
    write_result(out, run, "sparsity", {
        **r, "cls_handling": "mu over all N columns (CLS included) sums to one per layer and image; "
        "the CLS column is excluded from nu, the -log10 mean line, the top-5% maps and the ablation",
        "top_prob_meaning": "share of all top-5% picks per patch (sums to one per layer); top_k * top_prob is "
        "the probability that a patch is among an image's top 5%",
        "files": ["mu_mean.npy", "nu_hist.npy", "top_prob.npy", "head_corr.npy", "layer_corr.npy",
                  "nu_hist.png", "top5_map.png", "correlations.png"]})
    return r
