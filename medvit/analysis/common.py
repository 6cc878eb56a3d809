"""What every analysis shares: the run (checkpoint + data), batches with a progress bar, the
layers to read (found by walking the model, never a list of names), hooks that always release,
the score (accuracy, or AUC for binary models) and the result folder."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from medvit.errors import ConfigError
from medvit.models.hooks import eval_no_grad, forward_hooks

ANALYSIS_DIR = "analysis"
# modules whose output seed 004 calls a CNN's neurons ("outputs of neurons after the activation layers")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Mish, nn.PReLU)


@dataclass
class AnalysisRun:
    model: nn.Module
    name: str  # backbone name
    kind: str  # "vit" | "cnn"
    binary: bool
    dataset: Any  # (image, label) items with .labels and .ids
    run_dir: Path
    checkpoint: Path
    device: torch.device
    source: dict  # what data was read (JSON-able)
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return "auc" if self.binary else "accuracy"


class _Subset(torch.utils.data.Dataset):
    """A subset that keeps .labels and .ids (torch's Subset drops them)."""

    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, np.asarray(indices)
        self.labels = np.asarray(dataset.labels)[self.indices]
        self.ids = [dataset.ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]

    def __getitems__(self, indices: list[int]):
        """A batch by index through the wrapped dataset's own batch path, when it has one."""
        inner = [int(self.indices[i]) for i in indices]
        fetch = getattr(self.dataset, "__getitems__", None)
        return fetch(inner) if fetch is not None else [self.dataset[i] for i in inner]

    @property
    def collate_fn(self):
        return getattr(self.dataset, "collate_fn", None)


def load_analysis_run(run_dir: str | Path, *, which: str = "best", fold: int | None = None,
                      data_dir: str | Path | None = None, limit: int | None = None, seed: int = 0,
                      device: str = "auto") -> AnalysisRun:
    """The run (through the one run loader, `medvit.runs`) and the data `medvit evaluate` would
    score (the benchmark's test split, or the run's validation fold / `fold` / every labelled
    image of `data_dir`); `limit` keeps a seeded, class-stratified subset of that many images."""
    from medvit.canvas import size_text
    from medvit.data.benchmarks import stratified_subset
    from medvit.runs import load_run

    run = load_run(run_dir, which, device)
    data = run.data(fold, data_dir)
    dataset, source = data.dataset, dict(data.source)
    if limit is not None and 0 < limit < len(dataset):
        labels = np.asarray(dataset.labels)
        keep = stratified_subset(np.where(labels >= 0, labels, -1), limit, seed)
        dataset = _Subset(dataset, keep)
        source["limit"] = int(limit)
    source["n"] = len(dataset)
    source["image_size"] = size_text(run.image_size)
    return AnalysisRun(run.model, run.name, run.kind, run.binary, dataset, run.run_dir, run.checkpoint,
                       run.device, source, list(data.notes))


def batches(run: AnalysisRun, batch_size: int, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images on the run's device, labels) in dataset order, with medvit's progress: a bar on a
    terminal, plain lines off one."""
    from torch.utils.data import DataLoader

    from medvit.progress import progress_bar

    # the trainer's and evaluate's loader: a batch-by-index dataset (CIFAR-10/MNIST) brings its collate_fn
    loader = DataLoader(run.dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=getattr(run.dataset, "collate_fn", None))
    with contextlib.closing(progress_bar(total=len(loader), desc=desc, unit="batch")) as bar:
        for images, labels in loader:
            yield images.to(run.device), labels
            bar.update(1)


def output_hooks(model: nn.Module, names: list[str],
                 fn: Callable[[str, torch.Tensor], torch.Tensor | None]) -> contextlib.AbstractContextManager:
    """Forward hooks on the named submodules calling fn(name, output); a tensor fn returns
    replaces the output. Removed on exit, also when the body raises (`forward_hooks`)."""
    modules = dict(model.named_modules())
    return forward_hooks((modules[name], lambda module, args, output, name=name: fn(name, output))
                         for name in names)


def cnn_units(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of a CNN's layers of units, in execution order: the activation modules (ReLU, GELU,
    SiLU, ...) whose output is a (B, C, H, W) map and that run once per forward (seed 004: the
    neurons are the outputs after the activation layers). A CNN with no activation modules
    (functional activations) gives its Conv2d layers instead. Found by one traced forward."""
    order: list[str] = []
    calls: dict[str, int] = {}
    four_d: dict[str, bool] = {}
    names = {m: n for n, m in model.named_modules()}
    wanted = [m for m in model.modules() if isinstance(m, ACTIVATIONS + (nn.Conv2d,))]

    def record(module, args, output):
        n = names[module]
        calls[n] = calls.get(n, 0) + 1
        four_d[n] = isinstance(output, torch.Tensor) and output.ndim == 4
        if n not in order:
            order.append(n)

    with forward_hooks((m, record) for m in wanted), eval_no_grad(model):
        model(example[:1])
    modules = dict(model.named_modules())
    units = [n for n in order if isinstance(modules[n], ACTIVATIONS) and four_d[n] and calls[n] == 1]
    if not units:
        units = [n for n in order if isinstance(modules[n], nn.Conv2d) and calls[n] == 1]
    if not units:
        raise ConfigError(f"model {getattr(model, 'medvit_name', type(model).__name__)!r}: found no "
                          "activation or Conv2d layer producing a feature map to analyse")
    return units


def vit_layers(model: nn.Module) -> list[str]:
    """A ViT's blocks, read from the model: blocks.0 ... blocks.L-1."""
    return [f"blocks.{i}" for i in range(len(model.blocks))]


def representation_layers(model: nn.Module, kind: str, example: torch.Tensor) -> list[str]:
    """The layers whose outputs are compared: a ViT's blocks, a CNN's units (`cnn_units`)."""
    return vit_layers(model) if kind == "vit" else cnn_units(model, example)


def score(logits: torch.Tensor, labels: torch.Tensor, binary: bool) -> float:
    """Accuracy (multi-class) or AUC (binary, one logit) of logits against labels >= 0."""
    from medvit.metrics import rank_auc
    from medvit.train.steps import loss_and_probs

    known = labels >= 0
    logits, labels = logits[known].float().cpu(), labels[known].cpu()
    _, probs, pred = loss_and_probs(logits, labels, binary)
    if binary:
        y = labels.numpy()
        return float("nan") if y.min(initial=0) == y.max(initial=0) else rank_auc(y, probs.numpy())
    return float((pred == labels).float().mean())


def first_batch(run: AnalysisRun) -> torch.Tensor:
    return run.dataset[0][0][None].to(run.device)


def _plain(x: Any) -> Any:
    """JSON-able: numpy arrays and numbers to lists and floats, NaN to null."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        if x.dtype == np.float32:  # shortest repr that reads back as the same float32
            return _plain(np.vectorize(lambda v: float(str(np.float32(v))) if np.isfinite(v) else v, otypes=[object])(x)
                          .tolist()) if x.size else []
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def write_result(out: Path, run: AnalysisRun, kind: str, payload: dict) -> Path:
    """out/result.json: the run, the data read, the notes and every number the figures plot."""
    from medvit.io import write_text

    head = {"kind": kind, "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint),
            "backbone": run.name, "model_kind": run.kind, "data": run.source, "notes": run.notes}
    body = _plain({**head, **payload})  # one top-level key a line, arrays compact
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in body.items()) + "\n}\n"
    return write_text(out / "result.json", text)
