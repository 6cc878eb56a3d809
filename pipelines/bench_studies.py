"""Study speed, measured side by side in one run (ratios, not absolute goals):

  1. medvit trainer images/s  vs  a bare PyTorch loop over the same in-memory tensors (same model,
     optimizer, batch, steps) for the basic CNN and the basic ViT of seed 000 on MNIST-format
     data at 32x32                                                               (goal >= 0.9x)
  2. the sweep engine's per-run overhead (Ray task start, data and model set-up, scoring, result
     files) against the run's own training time                          (goal <= 5% of a 60 s run)

    python pipelines/bench_studies.py [--data MNIST_DIR] [--steps 200] [--run-seconds 10] [--device cpu]

Without --data a synthetic MNIST-format set is written (gzipped IDX files, 28x28).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = {  # seed 000's set-ups, as configs/study_seed000.yaml
    "basic_cnn": ["model.backbone=basic_cnn", "model.kwargs={width: 10}", "optim.name=sgd", "optim.lr=0.005",
                  "optim.width_scaled_lr=true", "optim.weight_decay=0"],
    "basic_vit": ["model.backbone=basic_vit", "model.kwargs={width: 128, heads: 1, depth: 1}", "optim.name=adamw",
                  "optim.lr=0.001", "optim.weight_decay=0.01"],
}


def synthetic_mnist(root: Path, n_train: int, n_test: int = 1000) -> Path:
    from medvit.data.benchmarks import write_mnist

    rng = np.random.default_rng(0)
    def images(n):
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
    return write_mnist(root, *images(n_train), *images(n_test), gz=True)


def seed000_config(data: Path, model: str, args, run_dir: Path, extra: list[str] = ()):
    from medvit.config import load_config

    return load_config(None, [
        "data.kind=mnist", f"data.dir={data}", "data.image_size=32", f"data.batch_size={args.batch_size}",
        "data.workers=0", "data.balanced=false", "data.val_size=0", f"data.train_size={args.batch_size * 8}",
        "schedule.name=constant", "schedule.warmup_epochs=0", "optim.grad_clip=0", "train.val_every=0",
        "train.epochs=100000", "train.log_every=1", "train.ckpt_min_interval=30", f"train.device={args.device}",
        f"train.out={run_dir}", *MODELS[model], *extra])


def trainer_rate(run_dir: Path, warmup: int, batch: int) -> float:
    """Images over seconds of the logged steps after warm-up; each logged interval spans everything
    between two steps (data, epoch ends, logs), so this is the trainer's end-to-end rate."""
    rates = pd.read_csv(run_dir / "metrics_step.csv")["images_per_s"].iloc[warmup:]
    return float(len(rates) * batch / (batch / rates).sum())


def bare_rate(trainer, steps: int, warmup: int) -> float:
    """A plain loop over the trainer's own in-memory tensor: same model class and spec, the same
    optimizer type and lr, cross-entropy, random batches by index."""
    import torch
    import torch.nn.functional as F

    from medvit.models import create_backbone

    dev = trainer.device
    x = trainer.data.train.as_tensor().to(dev)
    y = torch.from_numpy(trainer.data.train.labels).to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_backbone(trainer.spec["name"], **trainer.spec["kwargs"]).to(dev).train()
    group = trainer.optimizer.param_groups[0]
    opt = (torch.optim.SGD(model.parameters(), lr=group["lr"], momentum=group["momentum"])
           if isinstance(trainer.optimizer, torch.optim.SGD) else torch.optim.AdamW(model.parameters(), lr=group["lr"]))
    b = trainer.cfg.data.batch_size
    n, t = 0, time.perf_counter()
    for i in range(steps + warmup):
        if i == warmup:
            _sync(dev)
            n, t = 0, time.perf_counter()
        idx = torch.randint(0, len(x), (b,), device=dev)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += b
    _sync(dev)
    return n / (time.perf_counter() - t)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def speed(args, data: Path, tmp: Path) -> None:
    """Bare loop and trainer alternate `--rounds` times; the best of each is compared (a shared
    machine's load drifts by several x within a minute; the best round is the least disturbed)."""
    from medvit.train.loop import Trainer

    for model in MODELS:
        bare, medvit = [], []
        for r in range(args.rounds):
            run = tmp / f"speed-{model}-{r}"
            trainer = Trainer(seed000_config(data, model, args, run, [f"train.max_steps={args.steps + args.warmup}"]),
                              run)
            bare.append(bare_rate(trainer, args.steps, args.warmup))
            trainer.fit()
            medvit.append(trainer_rate(run, args.warmup, args.batch_size))
        print(f"{model:10s} batch {args.batch_size} at 32x32 on {trainer.device}: best of {args.rounds}: bare loop "
              f"{max(bare):7.0f} images/s, medvit trainer {max(medvit):7.0f} images/s, "
              f"ratio {max(medvit) / max(bare):.2f}x "
              f"(goal >= 0.9x); rounds: bare {', '.join(f'{x:.0f}' for x in bare)}; "
              f"trainer {', '.join(f'{x:.0f}' for x in medvit)}")


def overhead(args, data: Path, tmp: Path) -> None:
    """A learning-curve study of `--runs` runs, each stopped by max_wall, on a local Ray of one CPU
    (so runs follow one another): per-run time outside training, from the rows Ray returned."""
    import ray

    from medvit.studies import run_study

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})
    try:
        points = ",".join(str(args.batch_size * k) for k in range(1, args.runs + 1))
        t = time.perf_counter()
        summary = run_study("learning-curve", tmp / "study", overrides=[
            f"data.dir={data}", "study.arms.vit=null", f"study.points=[{points}]", "study.seeds=1",
            f"train.max_wall={args.run_seconds}", "train.flat_epochs=0", f"train.device={args.device}",
            f"data.batch_size={args.batch_size}"], log=lambda s: None)
        wall = time.perf_counter() - t
    finally:
        ray.shutdown()
    rows = pd.DataFrame(summary["rows"])
    task_extra = rows["run_wall_s"] - rows["train_wall_s"]
    driver = wall - rows["run_wall_s"].sum()  # Ray scheduling, worker start, results.csv, plots
    warm = task_extra.iloc[1:]
    print(f"sweep engine, {len(rows)} runs of {args.run_seconds:g} s training each (local Ray, 1 CPU): "
          f"study wall {wall:.1f} s, training {rows['train_wall_s'].sum():.1f} s")
    print(f"  first run (cold worker: imports): {task_extra.iloc[0]:.2f} s outside training")
    print(f"  later runs: {warm.mean():.2f} s outside training per run "
          f"(set-up {(rows['fit_wall_s'] - rows['train_wall_s']).iloc[1:].mean():.2f} s, "
          f"test scoring {rows['score_wall_s'].iloc[1:].mean():.2f} s); driver side {driver:.2f} s for the study "
          f"(cold start, scheduling, tables, plots)")
    per_run = warm.mean() + max(driver, 0) / len(rows)
    print(f"  per-run overhead {per_run:.2f} s = {per_run / 60:.1%} of a 60 s run (goal <= 5%; "
          f"{per_run / args.run_seconds:.1%} of this benchmark's {args.run_seconds:g} s runs)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a folder with MNIST's IDX files (default: a synthetic MNIST-format set)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--run-seconds", type=float, default=10.0)
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else synthetic_mnist(tmp / "mnist", args.batch_size * 8 * args.runs)
        if not args.skip_speed:
            speed(args, data, tmp)
        if not args.skip_overhead:
            overhead(args, data, tmp)


if __name__ == "__main__":
    main()
