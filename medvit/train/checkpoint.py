"""Checkpoints: tensors and plain data only, written atomically, read with weights_only=True."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from medvit.errors import MedvitError
from medvit.io import atomic_path


def save_checkpoint(payload: dict, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, then rename: never a half-written final name."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A medvit checkpoint, read with weights_only=True. `mmap=True` maps the file instead of
    reading it: cheap when only the counters or the spec are needed."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MedvitError(f"{path}: checkpoint not found (train first, or point at a run directory "
                          "or a .pt file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # pickle/zip errors from a damaged or foreign file
        raise MedvitError(f"{path}: not a readable medvit checkpoint ({type(err).__name__}: {err})") from err


def resolve_checkpoint(run_or_file: str | Path, which: str = "best") -> Path:
    """RUN_DIR + best|last -> RUN_DIR/checkpoints/<which>.pt; a file path is returned as is.
    A run stopped (max_steps / max_wall) before its first validation has no best.pt: then
    last.pt, with a note on stderr."""
    import sys

    p = Path(run_or_file)
    if p.is_file():
        return p
    if not p.is_dir():  # a file that is not there: name it and what its run does have
        raise MedvitError(f"{p}: checkpoint not found; {_what_run_has(p)}")
    path = p / "checkpoints" / f"{which}.pt"
    last = p / "checkpoints" / "last.pt"
    if which == "best" and not path.is_file() and last.is_file():
        print(f"medvit: {path} does not exist (the run stopped before its first validation); "
              f"using {last}", file=sys.stderr)
        return last
    return path


def _what_run_has(path: Path) -> str:
    """'RUN/checkpoints has last.pt' (or why nothing is there) for a checkpoint path that does
    not exist: RUN/checkpoints/best.pt of a run that stopped before validating has only last.pt."""
    folder = next((q for q in (path.parent, path) if q.name == "checkpoints" and q.is_dir()), None)
    if folder is None and (path.parent / "checkpoints").is_dir():
        folder = path.parent / "checkpoints"
    if folder is None:
        return "pass a .pt file or a run directory (RUN_DIR, its checkpoints/best.pt is used)"
    have = sorted(q.name for q in folder.glob("*.pt"))
    if not have:
        return f"{folder} holds no checkpoint (train first)"
    return f"{folder} has {', '.join(have)}: pass one of those files, or the run directory {folder.parent}"


def count_parameters(model) -> int:
    """Parameters of a model, trainable and frozen (not buffers such as BatchNorm statistics):
    the one count, stored in every checkpoint (`params`) and shown by compare and the studies."""
    return int(sum(p.numel() for p in model.parameters()))


def build_model_from_checkpoint(ckpt: dict):
    """Rebuild the backbone recorded in a checkpoint (with its input normalisation) and load its
    (EMA if present) weights."""
    from medvit.models import create_backbone
    from medvit.models.inputs import attach_input_norm

    spec = ckpt["model_spec"]
    model = create_backbone(spec["name"], **spec["kwargs"])
    attach_input_norm(model, ckpt.get("input_norm"))  # the normalisation it was trained with
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    model.eval()
    return model
