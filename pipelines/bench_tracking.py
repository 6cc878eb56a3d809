"""MLflow tracking overhead, measured side by side in one run (ratios, not absolute goals):

  1. training-loop time of a run with `--track` (local SQLite store)  vs  the same run without  (goal <= 1.02x)
  2. time spent inside the tracker (buffering and sending metrics) as a share of the loop      (goal <= 2 %)
  3. the fixed cost per run outside the loop: opening the MLflow run, params, artifacts at the end

Runs alternate (untracked, tracked, tracked, untracked, ...) so the machine's drift hits both
arms alike; the loop ratio compares each arm's fastest run (on a shared machine other jobs slow
single runs down by far more than tracking does; the share of time inside the tracker, 2., is
immune to that). The log interval is the trainer's default (train.log_every) unless --log-every
is given.

    python pipelines/bench_tracking.py [--backbone vit_test] [--patch 8] [--image-size 64] [--steps 300] [--pairs 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_cache(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """An ingest-style folder of n random size x size uint16 images, a quarter positive, 4 folds."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        np.save(root / "images" / f"{i}.npy", rng.integers(0, 65535, (size, size), dtype=np.uint16))
        rows.append({"image_id": str(i), "patient_id": str(i // 4), "laterality": "LR"[i % 2], "view": "CC",
                     "label": int(i % 4 == 0), "fold": (i // 4) % 4, "status": "ok", "cache": f"images/{i}.npy"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


class TrackerClock:
    """Seconds spent inside medvit.tracking.Tracker.metrics / flush (outermost calls only)."""

    def __init__(self) -> None:
        from medvit import tracking

        self.seconds, self._depth = 0.0, 0
        for name in ("metrics", "flush"):
            setattr(tracking.Tracker, name, self._wrap(getattr(tracking.Tracker, name)))

    def _wrap(self, fn):
        def timed(tracker, *args, **kw):
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(tracker, *args, **kw)
            finally:
                self._depth -= 1
                if not self._depth:
                    self.seconds += time.perf_counter() - t
        return timed


def one_run(args, data: Path, run_dir: Path, track) -> tuple[float, float]:
    """(training-loop seconds, whole fit() seconds) of one run."""
    from medvit.config import load_config
    from medvit.train import fit
    from medvit.train.checkpoint import load_checkpoint

    over = [f"data.dir={data}", f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
            "data.workers=0", f"model.backbone={args.backbone}", f"train.max_steps={args.steps}", "train.epochs=1",
            "train.val_every=0", "train.device=cpu", "schedule.warmup_epochs=0"]
    if args.patch:
        over.append(f"model.patch_size={args.patch}")
    if args.log_every:
        over.append(f"train.log_every={args.log_every}")
    t = time.perf_counter()
    fit(load_config(None, over), run_dir, track=track)
    whole = time.perf_counter() - t
    return float(load_checkpoint(run_dir / "checkpoints" / "last.pt")["counters"]["elapsed"]), whole


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_test")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pairs", type=int, default=2, help="(untracked, tracked) pairs, alternating")
    p.add_argument("--log-every", type=int, default=0, help="steps between logged rows (default: the trainer's)")
    args = p.parse_args()

    import torch

    from medvit.config import TrainConfig
    from medvit.tracking import Tracking, require

    t = time.perf_counter()
    require()  # mlflow's import: once per process, outside the runs
    import_s = time.perf_counter() - t
    clock = TrackerClock()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # folds 1-3 train (fold 0 is the unused validation fold): one epoch holds all the steps
        data = make_cache(tmp / "data", args.batch_size * args.steps * 4 // 3 + 8, args.image_size)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        t = time.perf_counter()
        one_run(argparse.Namespace(**{**vars(args), "steps": 30}), data, tmp / "warm", Tracking(uri=uri))
        first_s = time.perf_counter() - t  # a new database (MLflow's schema) + torch's first steps
        loops: dict[str, list] = {"untracked": [], "tracked": []}
        wholes: dict[str, list] = {"untracked": [], "tracked": []}
        for i in range(args.pairs):
            order = ["untracked", "tracked"] if i % 2 == 0 else ["tracked", "untracked"]
            for arm in order:
                before = clock.seconds
                loop, whole = one_run(args, data, tmp / f"{arm}{i}", Tracking(uri=uri) if arm == "tracked" else None)
                loops[arm].append(loop)
                wholes[arm].append(whole)
                inside = f", {clock.seconds - before:.3f} s of it inside the tracker" if arm == "tracked" else ""
                print(f"  run {2 * i + order.index(arm)}: {arm:9s} loop {loop:7.2f} s{inside}")
    log_every = args.log_every or TrainConfig.log_every
    inside = clock.seconds / sum(loops["tracked"])
    fixed = statistics.median(w - lp for w, lp in zip(wholes["tracked"], loops["tracked"])) - statistics.median(
        w - lp for w, lp in zip(wholes["untracked"], loops["untracked"]))
    print(f"{args.backbone}{f' p{args.patch}' if args.patch else ''} at {args.image_size}px, batch {args.batch_size}, "
          f"{args.steps} steps, log_every {log_every}, CPU ({torch.get_num_threads()} threads), {args.pairs} pairs")
    for arm in ("untracked", "tracked"):
        print(f"  {arm:9s}  fastest loop {min(loops[arm]):7.2f} s ({min(loops[arm]) / args.steps * 1000:.1f} ms/step), "
              f"median {statistics.median(loops[arm]):.2f} s")
    print(f"loop ratio tracked / untracked     {min(loops['tracked']) / min(loops['untracked']):.3f}x "
          f"(fastest runs; goal <= 1.02x)")
    print(f"inside the tracker                 {inside:.2%} of the loop   (goal <= 2 %)")
    print(f"fixed cost per tracked run         {fixed:+.2f} s   (open the run, params, artifacts at the end)")
    print(f"once per process / store           import mlflow {import_s:.1f} s; a first 30-step run on a new "
          f"database {first_s:.1f} s (MLflow's schema, torch's first steps)")


if __name__ == "__main__":
    main()
