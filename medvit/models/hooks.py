"""The two context managers every reader of a model's insides uses (explain, analysis):

- `eval_no_grad(model)`: eval mode and no grad inside (`grad=True`: eval mode only, for Grad-CAM);
  every submodule's train/eval flag restored on exit (a BatchNorm frozen in eval stays so).
- `forward_hooks(pairs)`: forward hooks on (module, hook) pairs, registered on entry and always
  removed on exit, also when the body raises (the pytorch-grad-cam pattern). Adapters build the
  pairs: `medvit.analysis.common.output_hooks` (by module name), `medvit.explain.attention.qkv_hooks`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

Hook = Callable[[nn.Module, tuple, object], object]


@contextlib.contextmanager
def eval_no_grad(model: nn.Module, *, grad: bool = False) -> Iterator[nn.Module]:
    """Eval mode inside, and no grad unless `grad=True` (Grad-CAM needs the graph); each
    submodule's train/eval flag is restored on exit, also when the body raises."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield model
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register each (module, hook) as a forward hook (hook(module, args, output); a value it
    returns replaces the output); all are removed on exit, also when registering or the body raises."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()

