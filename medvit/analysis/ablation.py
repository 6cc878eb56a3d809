"""Ablation of sparse units (seed 004, section 5 and appendix A; Tables 1-2, Figure 4).

For each image: a clean forward ranks the units of the last n layers; then the top-p share of
them (or p random ones) is dropped (set to 0) in each of those layers and the image is scored
again. A0 is the clean score, At(p, n) and Ar(p, n) (mean over `seeds` random draws) the scores
after dropping, and

    psi(p, n) = (A0 - At(p, n)) / (A0 - Ar(p, n))

(> 1: the top units matter more than random ones). Scores are accuracy, or AUC for a binary
(one-logit) model, named in the output.

Units:
- ViT: the attention columns of a block, j >= 1 (the CLS column is never ranked nor dropped,
  appendix A), ranked per image by mu_{l,j} of the clean forward (`sparsity.layer_mu`).
  Dropping column j of every head's AttnMap (no renormalisation: "set as 0") gives
  out = A·diag(keep)·V = A·(keep ⊙ V), so it is done exactly by zeroing token j's value vector
  in the block's qkv output (`explain.attention.qkv_hooks`); fused attention stays on.
- CNN: the channels of a layer of units (`common.cnn_units`: outputs after the activations),
  ranked per image by the l1 norm of their activation map, dropped by zeroing that map.

k = max(1, round(p · units)) units are dropped for p > 0 (a 10-channel layer at p = 5% loses one
channel, not zero); p = 0 drops none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medvit.analysis.common import AnalysisRun, batches, cnn_units, first_batch, output_hooks, score, write_result
from medvit.errors import ConfigError
from medvit.models.hooks import eval_no_grad

P_VALUES = (0.05, 0.10, 0.20, 0.30)
N_VALUES = (1, 2, 3)
SEEDS = 3


def n_drop(p: float, units: int) -> int:
    """How many of `units` a share p drops: 0 for p = 0, else max(1, round(p · units))."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"ablation share p={p} must be in [0, 1]")
    return 0 if p == 0 else min(units, max(1, round(p * units)))


def psi(a0: float, at: float, ar: float) -> float:
    """(A0 - At) / (A0 - Ar); NaN when random dropping leaves the score unchanged (A0 = Ar)."""
    den = a0 - ar
    return float("nan") if den == 0 or not np.isfinite(den) else (a0 - at) / den


def drop_mask(scores: torch.Tensor, k: int, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, U) bool, True for the k units to drop per row: the k largest scores ('top') or k
    drawn uniformly at random ('random')."""
    b, u = scores.shape
    mask = torch.zeros(b, u, dtype=torch.bool)
    if k == 0:
        return mask
    if mode == "top":
        idx = scores.float().cpu().topk(k, dim=1).indices
    elif mode == "random":
        idx = torch.rand(b, u, generator=generator).argsort(dim=1)[:, :k]
    else:
        raise ConfigError(f"ablation mode {mode!r}: 'top' or 'random'")
    return mask.scatter_(1, idx, True)


class ViTUnits:
    """Attention columns of the last blocks of a timm ViT."""

    def __init__(self, model) -> None:
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.layers = list(range(len(model.blocks)))
        self.names = [f"blocks.{i}" for i in self.layers]
        gh, gw = model.patch_embed.grid_size
        self.units = {i: int(gh * gw) for i in self.layers}

    def clean(self, images: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Logits and, per layer, (B, patches) mu of the patch columns."""
        from medvit.analysis.sparsity import layer_mu
        from medvit.explain.attention import stream_attention

        mus: dict[int, torch.Tensor] = {}
        logits = stream_attention(self.model, images,
                                  lambda i, attn, qkv: mus.__setitem__(i, layer_mu(attn, qkv)[:, self.prefix:].cpu()),
                                  layers)
        return logits.float().cpu(), mus

    def ablated(self, images: torch.Tensor, drops: dict[int, torch.Tensor]) -> torch.Tensor:
        """Logits with the dropped patch columns' value vectors zeroed in the given layers."""
        from medvit.explain.attention import qkv_hooks

        def zero_values(i: int, attn, qkv: torch.Tensor) -> torch.Tensor:
            c = qkv.shape[-1] // 3
            keep = torch.ones(qkv.shape[:2], dtype=qkv.dtype, device=qkv.device)  # (B, N)
            keep[:, self.prefix:] = (~drops[i]).to(qkv.dtype).to(qkv.device)
            out = qkv.clone()
            out[..., 2 * c:] *= keep[..., None]  # v of token j -> 0: column j of every head's map
            return out

        with qkv_hooks(self.model, zero_values, list(drops)), eval_no_grad(self.model):
            return self.model(images).float().cpu()


class CNNUnits:
    """Channels of a CNN's layers of units (`cnn_units`)."""

    def __init__(self, model, example: torch.Tensor) -> None:
        self.model = model
        self.names = cnn_units(model, example)
        self.layers = list(range(len(self.names)))
        shapes: dict[str, int] = {}
        with output_hooks(model, self.names, lambda n, out: shapes.__setitem__(n, out.shape[1])), \
                eval_no_grad(model):
            model(example[:1])
        self.units = {i: shapes[n] for i, n in enumerate(self.names)}

    def clean(self, images: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Logits and, per layer, (B, C) l1 norm of each channel's activation map."""
        norms: dict[int, torch.Tensor] = {}
        index = {self.names[i]: i for i in layers}

        def keep(name: str, out: torch.Tensor) -> None:
            norms[index[name]] = out.abs().sum(dim=(2, 3)).float().cpu()

        with output_hooks(self.model, [self.names[i] for i in layers], keep), eval_no_grad(self.model):
            return self.model(images).float().cpu(), norms

    def ablated(self, images: torch.Tensor, drops: dict[int, torch.Tensor]) -> torch.Tensor:
        index = {self.names[i]: i for i in drops}

        def zero(name: str, out: torch.Tensor) -> torch.Tensor:
            keep = (~drops[index[name]]).to(out.dtype).to(out.device)
            return out * keep[:, :, None, None]

        with output_hooks(self.model, list(index), zero), eval_no_grad(self.model):
            return self.model(images).float().cpu()


def units_of(run: AnalysisRun) -> ViTUnits | CNNUnits:
    return ViTUnits(run.model) if run.kind == "vit" else CNNUnits(run.model, first_batch(run))


def ablation(run: AnalysisRun, p_values=P_VALUES, n_values=N_VALUES, seeds: int = SEEDS,
             batch_size: int = 64) -> dict:
    """A0, At(p, n), Ar(p, n) (per seed and mean) and psi(p, n) over the run's data."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least one random draw")
    units = units_of(run)
    depth = len(units.layers)
    notes = [f"n={n} skipped: the model has {depth} layer(s) of units" for n in n_values if n > depth]
    n_values = [n for n in n_values if 1 <= n <= depth]
    if not n_values:
        raise ConfigError(f"{run.name}: no n in the requested values fits its {depth} layer(s)")
    last = units.layers[-max(n_values):]
    conditions = [(p, n, mode, s) for n in n_values for p in p_values
                  for mode, s in [("top", 0)] + [("random", s) for s in range(seeds)]]
    gens = {c: torch.Generator().manual_seed(1000 * c[3] + 7) for c in conditions if c[2] == "random"}
    # one preallocated (images, outputs) tensor per condition, filled batch by batch: appending
    # thousands of small per-batch tensors fragmented the heap (9.6 GB peak RSS on MNIST's 10k)
    total = len(run.dataset)
    logits: dict = {}
    y = torch.empty(total, dtype=torch.long)
    start = 0
    for images, labels in batches(run, batch_size, f"ablation {run.name}"):
        rows = slice(start, start + len(images))
        base, scores = units.clean(images, last)
        if not logits:
            logits = {c: torch.empty(total, base.shape[1]) for c in [None, *conditions]}
        logits[None][rows], y[rows] = base, labels
        for c in conditions:
            p, n, mode, _ = c
            drops = {i: drop_mask(scores[i], n_drop(p, units.units[i]), mode, gens.get(c))
                     for i in units.layers[-n:]}
            logits[c][rows] = units.ablated(images, drops)
        start += len(images)
    a0 = score(logits[None], y, run.binary)
    acc = {c: score(logits[c], y, run.binary) for c in conditions}
    rows = []
    for n in n_values:
        for p in p_values:
            at = acc[(p, n, "top", 0)]
            ar_seeds = [acc[(p, n, "random", s)] for s in range(seeds)]
            ar = float(np.mean(ar_seeds))
            rows.append({"p": p, "n": n, "At": at, "Ar": ar, "Ar_seeds": ar_seeds, "psi": psi(a0, at, ar),
                         "dropped_per_layer": [n_drop(p, units.units[i]) for i in units.layers[-n:]]})
    return {"metric": run.metric, "A0": a0, "rows": rows, "p_values": list(p_values), "n_values": n_values,
            "seeds": seeds, "layers": units.names, "units_per_layer": [units.units[i] for i in units.layers],
            "unit": "attention columns (patch tokens)" if run.kind == "vit" else "channels", "notes": notes,
            "images": int(len(y))}


# ------------------------------------------------------------------------------- outputs


def _fmt(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"


def markdown_table(results: dict[str, dict]) -> str:
    """Seed 004 Tables 1-2: per model and n, At / Ar / psi for each p, A0 beside."""
    lines = []
    for name, r in results.items():
        metric = r["metric"]
        ps = r["p_values"]
        lines += [f"### {name}: {metric} (A0 = {_fmt(r['A0'])}, {r['images']} images, unit: {r['unit']}, "
                  f"Ar over {r['seeds']} seeds)", "",
                  "| n | " + " | ".join(f"p={p:.0%} At" for p in ps) + " | "
                  + " | ".join(f"p={p:.0%} Ar" for p in ps) + " | " + " | ".join(f"p={p:.0%} ψ" for p in ps) + " |",
                  "|---" * (1 + 3 * len(ps)) + "|"]
        for n in r["n_values"]:
            row = {x["p"]: x for x in r["rows"] if x["n"] == n}
            cells = [_fmt(row[p][key]) for key in ("At", "Ar", "psi") for p in ps]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_ablation(results: dict[str, dict], path: Path) -> Path:
    """Seed 004 fig. 4: score against p, solid = top-p dropped, dashed = random, one colour per n;
    one panel per model (ViT and CNN side by side)."""
    from matplotlib.figure import Figure

    from medvit.plots import save_figure

    fig = Figure(figsize=(5.0 * len(results), 4.2))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, r) in zip(axes, results.items()):
        ps = [0.0] + list(r["p_values"])
        for n in r["n_values"]:
            rows = {x["p"]: x for x in r["rows"] if x["n"] == n}
            ax.plot([100 * p for p in ps], [r["A0"]] + [rows[p]["At"] for p in r["p_values"]], "-o", ms=3,
                    color=f"C{n - 1}", label=f"top-p, last {n}")
            ax.plot([100 * p for p in ps], [r["A0"]] + [rows[p]["Ar"] for p in r["p_values"]], "--",
                    color=f"C{n - 1}", label=f"random, last {n}")
        ax.set(xlabel="p: share of units dropped (%)", ylabel=r["metric"], title=f"{name}\n{r['unit']}", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def run_ablation(run: AnalysisRun, out: Path, other: AnalysisRun | None = None, p_values=P_VALUES,
                 n_values=N_VALUES, seeds: int = SEEDS, batch_size: int = 64) -> dict:
    """Compute (for `other` too, shown beside), write result.json, table.md, ablation.png, psi.npy."""
    from medvit.io import save_npy, write_text

    r = ablation(run, p_values, n_values, seeds, batch_size)
    shown = {f"{run.name} ({run.run_dir.name})": r}
    payload = dict(r)
    if other is not None:
        payload["other"] = ablation(other, p_values, n_values, seeds, batch_size)
        payload["other"].update(backbone=other.name, run_dir=str(other.run_dir))
        shown[f"{other.name} ({other.run_dir.name})"] = payload["other"]
    grid = np.array([[next(x["psi"] for x in r["rows"] if x["n"] == n and x["p"] == p) for p in r["p_values"]]
                     for n in r["n_values"]], dtype=np.float64)
    save_npy(out / "psi.npy", grid)
    table = markdown_table(shown)
    write_text(out / "table.md", table + "\n")
    plot_ablation(shown, out / "ablation.png")
    write_result(out, run, "ablation", {**payload, "psi_grid_rows_n_cols_p": grid,
                                        "files": ["result.json", "table.md", "ablation.png", "psi.npy"]})
    return payload
