"""The run's files: metrics_step.csv, metrics_epoch.csv, train.log, samples/. Rank 0 writes metrics."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from medvit.io import atomic_path

STEP_COLUMNS = ["step", "epoch", "loss", "lr", "images_per_s"]
DATA_IDS = "data_ids.csv"
EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_error", "val_loss", "val_accuracy", "val_auc",
                 "lr", "elapsed"]


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.dir, self.enabled = Path(run_dir), enabled
        self.tracker = None  # a medvit.tracking.Tracker (main rank, when tracking): step/epoch rows go to it too
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _append(self, name: str, columns: list[str], row: dict) -> None:
        if not self.enabled:
            return
        path = self.dir / name
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in columns})

    def step(self, step: int, epoch: int, loss: float, lr: float, rate: float) -> None:
        row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": rate}
        self._append("metrics_step.csv", STEP_COLUMNS, row)
        if self.tracker:
            self.tracker.metrics(row, step)

    def epoch(self, row: dict) -> None:
        self._append("metrics_epoch.csv", EPOCH_COLUMNS, row)
        if self.tracker:  # at the optimizer step, as the step rows; lr is already a step curve
            self.tracker.metrics({k: v for k, v in row.items() if k != "lr"}, row["step"])
            self.tracker.flush()
        val = ("" if row.get("val_loss") is None else
               " val_loss {:.4f} val_accuracy {:.4f} val_auc {}".format(row["val_loss"], row["val_accuracy"],
                                                                        _fmt(row.get("val_auc"))))
        error = "" if row.get("train_error") is None else f" train_error {row['train_error']:.4f}"
        self.info(f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f}{error}" + val)

    def start_tracking(self, track, cfg, spec: dict, data_identity: dict) -> None:
        """Open (or, on resume, reopen) the run's MLflow run when `track` (a medvit.tracking.Tracking)."""
        if self.enabled and track is not None:
            from medvit.tracking import start_training

            self.tracker = start_training(track, self.dir, cfg, spec, data_identity)

    def end_tracking(self, summary: dict | None, status: str = "FINISHED") -> None:
        """The run's files to MLflow and its end status (FAILED / KILLED from a failed fit)."""
        if self.tracker:
            from medvit.tracking import finish_training

            tracker, self.tracker = self.tracker, None
            finish_training(tracker, self.dir, summary, status)

    def data_ids(self, train_ids: list, val_ids: list) -> None:
        """RUN_DIR/data_ids.csv: every image id the run trained on (role train) or chose its
        checkpoint and threshold on (role val), so an audit can show a test split never reached either."""
        if not self.enabled:
            return
        import io

        from medvit.io import write_text

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image_id", "role"])
        w.writerows([i, "train"] for i in train_ids)
        w.writerows([i, "val"] for i in val_ids)
        write_text(self.dir / DATA_IDS, buf.getvalue())

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.dir / "train.log", "a") as f:
            f.write(line + "\n")

    def samples(self, rank: int, epoch: int, step: int, ids: list) -> None:
        """Which images this rank trained on (written by every rank, each to its own file)."""
        path = self.dir / "samples" / f"rank{rank}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(f"{epoch},{step},{i}\n" for i in ids)

    def trim(self, step: int, epoch: int, rank: int = 0) -> None:
        """On resume, drop rows written after the checkpoint (and any torn last line)."""
        _keep_lines(self.dir / "samples" / f"rank{rank}.csv", step)
        if not self.enabled:
            return
        _keep_rows(self.dir / "metrics_step.csv", lambda r: int(r["step"]) <= step)
        _keep_rows(self.dir / "metrics_epoch.csv", lambda r: int(r["epoch"]) < epoch)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _keep_rows(path: Path, keep) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = [r for r in reader if None not in r.values() and _safe(keep, r)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _safe(keep, row) -> bool:
    try:
        return bool(keep(row))
    except (ValueError, TypeError):  # a torn line from a killed process
        return False


def _keep_lines(path: Path, step: int) -> None:
    if not path.exists():
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.endswith("\n") and int(ln.split(",")[1]) <= step]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(lines)
