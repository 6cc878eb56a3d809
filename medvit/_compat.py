"""Import guards for heavy third-party packages.

timm imports torchvision. PyPI's torchvision wheels are CUDA builds; next to a CPU-only torch
their `_C` extension does not load, and torchvision's `_meta_registrations.py` then fails on
`torch.library.register_fake("torchvision::nms")` because the operator was never defined
("operator torchvision::nms does not exist"). medvit uses none of torchvision's custom ops, so
when (and only when) that happens we define the two operator *schemas* the fake registrations
need, without kernels, and import again. Calling torchvision.ops.nms then raises torch's
"no kernel" error instead of every `import timm` failing.
"""
from __future__ import annotations

import sys
from types import ModuleType

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment = None  # kept alive: a torch.library.Library unregisters its ops when collected


def _define_missing_torchvision_ops() -> None:
    global _fragment
    import torch

    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _op_exists(name):
            _fragment.define(schema)


def _op_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def import_torchvision() -> ModuleType:
    """Import torchvision, guarding against a CUDA wheel's unloadable custom ops."""
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        _define_missing_torchvision_ops()
        import torchvision
    return torchvision


def import_timm() -> ModuleType:
    """Import timm through the torchvision guard. Every medvit module that needs timm calls this."""
    import_torchvision()
    import timm

    return timm
