"""The run loader: a run folder or a checkpoint file, resolved ONCE into what every command needs.

`load_run(RUN_DIR | FILE, which)` -> `LoadedRun`: the run folder, the checkpoint (path and
contents), the resolved config, the model with its input normalisation (built once, on first
use), the model's input canvas and the canvas `preprocess` must produce for new DICOMs (the
ingest's), the autocast dtype, the parameter count and the training wall time, and the data the
run is scored on (`medvit.evaluate.eval_data`). evaluate, explain, predict, analyze, compare and
the study runner all read runs through it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit.canvas import Size, parse_size


@dataclass
class LoadedRun:
    run_dir: Path
    checkpoint: Path
    ckpt: dict
    cfg: Any  # medvit.config.Config (resolved, as trained)
    device: Any  # torch.device
    canvas: Size | None = None  # overrides the recorded ingest canvas (predict --ingest-size)
    _model: Any = field(default=None, repr=False)

    # ---- what the checkpoint says ------------------------------------------------------------
    @property
    def name(self) -> str:
        """Backbone name (titles and tables carry it, never paths or patient data)."""
        return self.ckpt["model_spec"]["name"]

    @property
    def binary(self) -> bool:
        return bool(self.ckpt.get("binary", True))

    @property
    def threshold(self) -> float:
        """The validation best-F1 operating point, fixed before any test image is seen."""
        return float(self.ckpt.get("threshold", 0.5))

    @property
    def in_chans(self) -> int:
        return int(self.ckpt["model_spec"]["kwargs"].get("in_chans", 1))

    @property
    def image_size(self) -> Size:
        """The model input canvas (H, W)."""
        kwargs = self.ckpt["model_spec"]["kwargs"]
        return parse_size(self.cfg.data.image_size or kwargs.get("img_size"), "image_size")

    @property
    def ingest_size(self) -> Size:
        """The canvas the run's training images were ingested at: `predict` and `explain` preprocess
        new DICOMs to it. Recorded in the checkpoint; older checkpoints: read from the run's data
        folder, else the default square. `canvas`, when set, overrides it."""
        from medvit.ingest import ingest_size

        if self.canvas:
            return self.canvas
        recorded = self.ckpt.get("canvas") or self.ckpt.get("ingest_size")
        if recorded:
            return parse_size(recorded, "ingest canvas")
        d = self.cfg.data
        return ingest_size(d.dir if d.kind == "mammo" else None)

    @property
    def amp(self) -> Any:
        from medvit.train.setup import amp_dtype

        return amp_dtype(self.cfg, self.device)

    # ---- built once -------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The (EMA, if any) model with its input normalisation, on the run's device, in eval mode."""
        if self._model is None:
            from medvit.train.checkpoint import build_model_from_checkpoint

            self._model = build_model_from_checkpoint(self.ckpt).to(self.device).eval()
        return self._model

    @property
    def kind(self) -> str:
        from medvit.models import backbone_kind

        return backbone_kind(self.model)

    @property
    def params(self) -> int:
        """Trainable and frozen parameters (not buffers such as BatchNorm statistics)."""
        from medvit.train.checkpoint import count_parameters

        return int(self.ckpt.get("params") or count_parameters(self.model))

    @property
    def training_seconds(self) -> float | None:
        """Training wall time across resumes: last.pt's counter (best.pt's stops at its epoch)."""
        from medvit.train.checkpoint import load_checkpoint

        last = self.run_dir / "checkpoints" / "last.pt"
        ckpt = self.ckpt
        if last.is_file() and last.resolve() != self.checkpoint.resolve():
            ckpt = load_checkpoint(last, mmap=True)  # memory-mapped: only the counters are read
        value = (ckpt.get("counters") or {}).get("elapsed")
        return float(value) if value is not None else None

    def data(self, fold: int | None = None, data_dir: str | Path | None = None, split: str = "auto"):
        """The data `medvit evaluate` scores for this run (`medvit.evaluate.EvalData`)."""
        from medvit.evaluate import eval_data

        return eval_data(copy.deepcopy(self.cfg), fold, data_dir, split, self.run_dir)


def run_folder(run_or_file: str | Path) -> Path:
    """RUN_DIR for a run folder or a checkpoint file inside RUN_DIR/checkpoints/."""
    p = Path(run_or_file)
    if p.is_file():
        return p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p


def load_run(run_or_file: str | Path, which: str = "best", device: str = "auto") -> LoadedRun:
    """RUN_DIR (its checkpoints/<which>.pt, `which` = best | last) or a checkpoint FILE (given as
    the path or as `which`) -> LoadedRun. The checkpoint loads with weights_only=True."""
    from medvit.config import config_from_dict
    from medvit.train.checkpoint import load_checkpoint, resolve_checkpoint
    from medvit.train.setup import pick_device

    path = resolve_checkpoint(run_or_file, which) if which in ("best", "last") else Path(which)
    ckpt = load_checkpoint(path)
    return LoadedRun(run_folder(run_or_file), path, ckpt, config_from_dict(ckpt["config"]), pick_device(device))
