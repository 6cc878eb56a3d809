"""Attention maps per class (seed 000, figures 16-18): the CLS token's attention to each patch,
per layer and head (`medvit.explain.cls_attention`, the one extractor), for

- one instance of each class (the first in the data's order),
- the mean over the instances of each class of their maps ("mean of maps"),
- the map of the class's mean image ("map of the mean"): seed 000's "attention maps on the mean
  over the instances of each class" reads either way, so both are written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medvit.analysis.common import AnalysisRun, batches, write_result
from medvit.errors import ConfigError

VARIANTS = ("instance", "class_mean", "mean_image")


def class_attention(run: AnalysisRun, batch_size: int = 64) -> dict:
    """Per class c: instance / class_mean / mean_image maps (L, H, gh, gw), the instance's and
    the mean image (S, S)."""
    from medvit.explain import cls_attention

    if run.kind != "vit":
        raise ConfigError(f"attention maps need a ViT; {run.name!r} is a CNN (use `medvit explain RUN_DIR "
                          "--class-mean` for its Grad-CAM class means)")
    sums: dict[int, torch.Tensor] = {}
    image_sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    instance: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for images, labels in batches(run, batch_size, f"attention {run.name}"):
        maps = cls_attention(run.model, images).double()  # (B, L, H, gh, gw)
        for b, c in enumerate(labels.tolist()):
            if c < 0:
                continue
            sums[c] = sums.get(c, 0) + maps[b]
            image_sums[c] = image_sums.get(c, 0) + images[b].double().cpu()
            counts[c] = counts.get(c, 0) + 1
            if c not in instance:
                instance[c] = (maps[b], images[b].cpu())
    if not counts:
        raise ConfigError(f"{run.run_dir}: no labelled image to average attention maps over")
    classes = sorted(counts)
    mean_images = torch.stack([image_sums[c] / counts[c] for c in classes]).float()
    of_mean = cls_attention(run.model, mean_images.to(run.device)).double()
    return {"classes": classes, "counts": [counts[c] for c in classes],
            "instance": torch.stack([instance[c][0] for c in classes]).float().numpy(),
            "class_mean": torch.stack([sums[c] / counts[c] for c in classes]).float().numpy(),
            "mean_image": of_mean.float().numpy(),
            "instance_images": torch.stack([instance[c][1] for c in classes]).float().numpy()[:, 0],
            "mean_images": mean_images.numpy()[:, 0]}


def _columns(layers: int, heads: int, per_head: bool) -> list[tuple[int, int | None]]:
    return [(layer, h) for layer in range(layers) for h in range(heads)] if per_head else \
        [(layer, None) for layer in range(layers)]


def plot_class_grid(r: dict, variant: str, path: Path, title: str, names: list[str] | None = None,
                    per_head: bool | None = None) -> Path:
    """Rows: classes; columns: the input (instance or class-mean image), then each layer x head
    (or the head mean per layer when there are more than 16 layer-heads)."""
    from matplotlib.figure import Figure

    from medvit.plots import save_figure

    maps = np.asarray(r[variant])  # (C, L, H, gh, gw)
    c, layers, heads = maps.shape[:3]
    per_head = layers * heads <= 16 if per_head is None else per_head
    cols = _columns(layers, heads, per_head)
    backdrop = np.asarray(r["instance_images"] if variant == "instance" else r["mean_images"])
    fig = Figure(figsize=(1.3 * (len(cols) + 1), 1.3 * c + 0.6))
    axes = fig.subplots(c, len(cols) + 1, squeeze=False)
    for i in range(c):
        label = names[r["classes"][i]] if names else str(r["classes"][i])
        axes[i, 0].imshow(backdrop[i], cmap="gray")
        axes[i, 0].set_ylabel(label, fontsize=8)
        for j, (layer, h) in enumerate(cols, start=1):
            m = maps[i, layer, h] if h is not None else maps[i, layer].mean(0)
            axes[i, j].imshow(m, cmap="inferno")
            if i == 0:
                axes[i, j].set_title(f"L{layer + 1}" + (f" H{h + 1}" if h is not None else " mean"), fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image" if variant == "instance" else "mean image", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def run_attention_maps(run: AnalysisRun, out: Path, batch_size: int = 64) -> dict:
    from medvit.io import save_npy

    r = class_attention(run, batch_size)
    names = None
    if run.source.get("kind") == "cifar10":
        from medvit.data.benchmarks import CIFAR_CLASSES

        names = list(CIFAR_CLASSES)
    files = []
    for variant in VARIANTS:
        save_npy(out / f"{variant}.npy", r[variant])
        files.append(f"{variant}.npy")
    what = {"instance": "one instance per class", "class_mean": "mean of the maps per class",
            "mean_image": "map of the class-mean image"}
    for variant in VARIANTS:
        plot_class_grid(r, variant, out / f"{variant}.png", f"{run.name}: CLS attention, {what[variant]}", names)
        files.append(f"{variant}.png")
    c, layers, heads, gh, gw = r["class_mean"].shape
    write_result(out, run, "attention", {
        "classes": r["classes"], "counts": r["counts"], "layers": layers, "heads": heads, "grid": [gh, gw],
        "arrays": "(classes, layers, heads, gh, gw) CLS attention to each patch; rows of a map sum to 1 with the "
                  "CLS column, which is left out here",
        "instance": r["instance"], "class_mean": r["class_mean"], "mean_image": r["mean_image"], "files": files})
    return r
