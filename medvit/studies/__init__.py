"""The seed studies as grids of training runs on Ray. The seed documents: 000 "Comparative analysis
of structure and performance of Convolutional Neural Networks and Vision Transformers"; 001 "Are
Visual Transformers Better Than CNNs"; 002 "Exploration of Vision Transformers and CNNs: In-Depth
Structural and Cost Analysis, Model Performance, and Applications in Biomedical Images"; 003 "Vision
Transformers" (slides); 004 "Comparative Analysis between Vision Transformers and CNNs from the
View of Neuroscience".

    run_study("learning-curve", out="lc", overrides=["study.seeds=2"])  # -> lc/results.csv, table.md, *.png, fit.json
    redraw("lc")                                                         # tables, plots, fits from results.csv

grid.py (which studies, their YAML, the runs), runner.py (Ray), fits.py (α, peaks), report.py (tables, plots).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from medvit.studies.grid import STUDIES, expand, load_study
from medvit.studies.report import CURVES, RESULTS, collect_curves, redraw

COLUMNS = ["study", "arm", "group", "axis", "point", "noise", "seed", "status", "error",
           "test_error", "test_accuracy", "test_loss", "test_auc", "test_auc_lo", "test_auc_hi", "n_test", "scored_on",
           "train_error", "train_accuracy", "train_loss", "val_accuracy", "val_loss",
           "stop_reason", "epochs", "steps", "train_wall_s", "fit_wall_s", "score_wall_s", "run_wall_s", "device",
           "host", "params", "checkpoint", "resumed", "run_id", "run_dir", "config"]

__all__ = ["STUDIES", "run_study", "redraw", "COLUMNS"]


def _config_cell(cfg: dict) -> str:
    """What distinguishes a run, as compact JSON (the full resolved config is RUN_DIR/config.yaml)."""
    d = cfg["data"]
    keep = {"model": {k: v for k, v in cfg["model"].items() if v not in (None, "", {}, False)},
            "optim": {k: cfg["optim"][k] for k in ("name", "lr", "weight_decay", "width_scaled_lr")},
            "data": {k: d[k] for k in ("kind", "train_size", "label_noise", "classes", "channels", "image_size",
                                       "batch_size") if d[k] not in (None, [], 0)},
            "train": {k: cfg["train"][k] for k in ("seed", "epochs", "max_steps", "max_wall", "flat_epochs")}}
    return json.dumps(keep, separators=(",", ":"), sort_keys=True)


def write_results(out: Path, rows: list[dict], configs: dict[str, dict]) -> Path:
    import pandas as pd

    from medvit.io import write_text

    frame = pd.DataFrame([{**r, "config": _config_cell(configs[r["run_id"]])} for r in rows])
    for c in COLUMNS:
        if c not in frame.columns:
            frame[c] = None
    return write_text(out / RESULTS, frame[COLUMNS].to_csv(index=False))


def run_study(name: str, out: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
              address: str | None = None, log: Callable[[str], None] = print, track: Any = None) -> dict[str, Any]:
    """Run (or finish) study `name` into `out`; returns redraw()'s summary plus the rows. `track`
    (a medvit.tracking.Tracking): a parent MLflow run for the study, a child for each grid run."""
    import yaml

    from medvit.io import write_text

    out = Path(out)
    settings, base = load_study(name, config, list(overrides))
    runs = expand(name, settings, base, out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "study.yaml", yaml.safe_dump({"study": name, "settings": vars(settings), "base": base,
                                                   "runs": len(runs)}, sort_keys=False))
    configs = {r.run_id: r.config for r in runs}
    from medvit.studies.runner import run_grid
    from medvit.tracking import finish_study, start_study

    parent, child = start_study(track, out, name, vars(settings))  # (None, None) without tracking
    try:
        rows = run_grid(runs, settings, address, on_row=lambda rs: write_results(out, rs, configs), log=log,
                        track=child)
    except BaseException as err:  # the parent MLflow run ends FAILED / KILLED, never left RUNNING
        if parent is not None:
            parent.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    write_results(out, rows, configs)
    import pandas as pd

    curves = collect_curves(pd.DataFrame(rows))
    write_text(out / CURVES, curves.to_csv(index=False))
    summary = redraw(out)
    finish_study(parent, out, rows)
    summary["rows"] = rows
    return summary
