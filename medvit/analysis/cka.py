"""Linear CKA between layers (seed 001: Raghu et al. 2021's layer-similarity heatmaps), in the
minibatch form of Nguyen, Raghu & Kornblith (2021) so it runs over data larger than memory:

    HSIC_1(K, L) = [tr(K~ L~) + 1ᵀK~1 · 1ᵀL~1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK~L~1] / (n(n-3))

(Song et al. 2012's unbiased estimator; K~ is the Gram matrix K = X Xᵀ of one minibatch of n
examples with its diagonal set to zero), and

    CKA = mean_k HSIC_1(K_k, L_k) / sqrt(mean_k HSIC_1(K_k, K_k) · mean_k HSIC_1(L_k, L_k))

over minibatches k. Each example's representation is its layer output flattened (all tokens of
a ViT block, the whole C×H×W map of a CNN layer). Only the n×n Gram matrices are kept: a hook
turns each layer's output into its Gram matrix as the layer runs.

Written by hand: no library we depend on offers the minibatch estimator over hooked layers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from medvit.analysis.common import (AnalysisRun, batches, first_batch, output_hooks, representation_layers,
                                    write_result)
from medvit.errors import ConfigError
from medvit.models.hooks import eval_no_grad


def gram(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) features -> (n, n) float64 linear Gram matrix X Xᵀ (features flattened)."""
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def hsic1_matrix(ks: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_1 between every pair of Gram matrices: ks (A, n, n), ls (B, n, n) -> (A, B)."""
    n = ks.shape[-1]
    if n < 4:
        raise ConfigError(f"unbiased HSIC needs minibatches of at least 4 examples, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=ks.device)
    ks, ls = ks.masked_fill(eye, 0), ls.masked_fill(eye, 0)
    trace = torch.einsum("axy,bxy->ab", ks, ls)  # tr(K~ L~), Gram matrices are symmetric
    rk, rl = ks.sum(-1), ls.sum(-1)  # (A, n), (B, n): K~1, L~1
    sums = rk.sum(-1)[:, None] * rl.sum(-1)[None, :] / ((n - 1) * (n - 2))
    cross = rk @ rl.T * (2.0 / (n - 2))  # 1ᵀK~L~1 = (K~1)·(L~1)
    return (trace + sums - cross) / (n * (n - 3))


class MinibatchCKA:
    """Accumulates HSIC_1 over minibatches for all pairs (layer a of model A, layer b of model B)."""

    def __init__(self, n_a: int, n_b: int) -> None:
        self.xy = torch.zeros(n_a, n_b, dtype=torch.float64)
        self.xx = torch.zeros(n_a, dtype=torch.float64)
        self.yy = torch.zeros(n_b, dtype=torch.float64)
        self.batches = 0

    def update(self, grams_a: torch.Tensor, grams_b: torch.Tensor | None = None) -> None:
        """grams (layers, n, n) of one minibatch; grams_b None: model B is model A."""
        ga = grams_a.cpu()
        gb = ga if grams_b is None else grams_b.cpu()
        self.xy += hsic1_matrix(ga, gb)
        self.xx += _self_hsic(ga)
        self.yy += _self_hsic(gb)
        self.batches += 1

    def result(self) -> np.ndarray:
        """(n_a, n_b) CKA; NaN where a layer's HSIC is not positive (a constant layer)."""
        if self.batches == 0:
            raise ConfigError("CKA: no minibatch of at least 4 examples was seen")
        den = torch.sqrt(self.xx.clamp_min(0)[:, None] * self.yy.clamp_min(0)[None, :])
        out = torch.where(den > 0, self.xy / den.clamp_min(1e-300), torch.full_like(den, float("nan")))
        return out.numpy()


def _self_hsic(g: torch.Tensor) -> torch.Tensor:
    """HSIC_1(K_l, K_l) for each layer l of g (L, n, n)."""
    return torch.stack([hsic1_matrix(k[None], k[None])[0, 0] for k in g])


def minibatch_cka(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """CKA of two representations given as minibatches (X_k, Y_k) of the same examples."""
    acc = MinibatchCKA(1, 1)
    for x, y in pairs:
        acc.update(gram(x)[None], gram(y)[None])
    return float(acc.result()[0, 0])


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA of X (n, ...) and Y (n, ...) with the unbiased HSIC over all n examples at once."""
    return minibatch_cka([(x, y)])


# ---------------------------------------------------------------------------- over a run


def _grams(run: AnalysisRun, layers: list[str], images: torch.Tensor) -> torch.Tensor:
    """(layers, n, n) Gram matrices of the named layers' outputs for one minibatch."""
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> None:
        out[name] = gram(output).cpu()

    with output_hooks(run.model, layers, keep), eval_no_grad(run.model):
        run.model(images)
    return torch.stack([out[n] for n in layers])


def layer_cka(run: AnalysisRun, other: AnalysisRun | None = None, batch_size: int = 64) -> dict:
    """CKA between all pairs of layers of `run` (and `other`: rows run's layers, columns the other's).
    The two runs must read the same examples in the same order."""
    if batch_size < 4:
        raise ConfigError(f"--batch-size {batch_size}: CKA's unbiased HSIC needs at least 4")
    layers_a = representation_layers(run.model, run.kind, first_batch(run))
    layers_b = layers_a if other is None else representation_layers(other.model, other.kind, first_batch(other))
    if other is not None and list(run.dataset.ids) != list(other.dataset.ids):
        raise ConfigError(f"{other.run_dir}: the two runs read different examples ({len(run.dataset)} vs "
                          f"{len(other.dataset)}); pass the same --data/--fold/--limit, or runs on the same data")
    acc = MinibatchCKA(len(layers_a), len(layers_b))
    stream_b = batches(other, batch_size, f"cka {other.name}") if other is not None else None
    skipped = 0
    for images, _ in batches(run, batch_size, f"cka {run.name}"):
        images_b = next(stream_b)[0] if stream_b is not None else None
        if len(images) < 4:  # a last minibatch below 4 examples has no unbiased HSIC
            skipped += len(images)
            continue
        ga = _grams(run, layers_a, images)
        acc.update(ga, None if other is None else _grams(other, layers_b, images_b))
    return {"layers": layers_a, "other_layers": layers_b, "cka": acc.result(), "minibatches": acc.batches,
            "batch_size": batch_size, "examples_skipped": skipped,
            "other_backbone": None if other is None else other.name,
            "other_run_dir": None if other is None else str(other.run_dir)}


def plot_cka(result: dict, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Heatmap of the CKA matrix (seed 001 / Raghu et al. fig. 1): layer index on both axes,
    origin at the bottom left, colour scale 0 to 1."""
    from matplotlib.figure import Figure

    from medvit.plots import save_figure

    m = np.asarray(result["cka"], dtype=float)
    fig = Figure(figsize=(5.6, 5.0))
    ax = fig.subplots()
    im = ax.imshow(m, origin="lower", cmap="magma", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="CKA")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if m.size <= 144:  # small matrices: the value in each cell
        for (y, x), v in np.ndenumerate(m):
            ax.text(x, y, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if np.isfinite(v) and v > 0.6 else "white")
    for axis, names in ((ax.xaxis, result["other_layers"]), (ax.yaxis, result["layers"])):
        step = max(1, len(names) // 12)
        axis.set_ticks(range(0, len(names), step))
    fig.tight_layout()
    return save_figure(fig, path)


def run_cka(run: AnalysisRun, out: Path, other: AnalysisRun | None = None, batch_size: int = 64) -> dict:
    """Compute, write out/result.json, cka.npy and cka.png; return the result."""
    from medvit.io import save_npy

    result = layer_cka(run, other, batch_size)
    save_npy(out / "cka.npy", result["cka"].astype(np.float32))
    b = other if other is not None else run
    plot_cka(result, out / "cka.png", f"linear CKA: {run.name} vs {b.name}" if other else f"linear CKA: {run.name}",
             f"{b.name} layer", f"{run.name} layer")
    write_result(out, run, "cka", {**result, "estimator": "minibatch linear CKA, unbiased HSIC_1 "
                                   "(Nguyen, Raghu & Kornblith 2021)", "files": ["cka.npy", "cka.png"]})
    return result
