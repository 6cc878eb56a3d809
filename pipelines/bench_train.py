"""Trainer speed, measured side by side in one run (ratios, not absolute goals):

  1. medvit trainer images/s  vs  a bare timm loop on the same model, batch and tensors  (goal >= 0.95x)
  2. data-loader images/s     vs  training-step images/s                                (goal >= 2x)

    python pipelines/bench_train.py [--backbone vit] [--patch 16] [--image-size 256] [--batch-size 8] [--steps 30]

On a GPU (`--device cuda`) it also reports bf16 images/s and model-FLOP utilisation for the chosen model.
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_cache(root: Path, n: int, seed: int = 0) -> Path:
    """An ingest-style folder of n random 512x512 uint16 images, a quarter positive."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        np.save(root / "images" / f"{i}.npy", rng.integers(0, 65535, (512, 512), dtype=np.uint16))
        rows.append({"image_id": str(i), "patient_id": str(i // 4), "laterality": "LR"[i % 2], "view": "CC",
                     "label": int(i % 4 == 0), "fold": (i // 4) % 4, "status": "ok", "cache": f"images/{i}.npy"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def config(args, data_dir: Path, run_dir: Path):
    from medvit.config import load_config

    return load_config(None, [
        f"data.dir={data_dir}", f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
        f"data.workers={args.workers}", f"model.backbone={args.backbone}", f"model.patch_size={args.patch}",
        f"train.max_steps={args.steps + args.warmup}", "train.epochs=1", "train.log_every=1",
        f"train.device={args.device}", f"train.amp={args.amp}", f"train.out={run_dir}"])


def loader_rate(trainer, n_batches: int) -> float:
    """Images/s of the DataLoader alone (decode npy, resize, augment, collate)."""
    trainer.sampler.set_epoch(0)
    batches = list(trainer.sampler)[:n_batches]
    loader = trainer._loader(trainer.data.train, batch_sampler=batches)
    t, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - t)


def bare_rate(trainer, batches, steps: int, warmup: int) -> float:
    """A plain loop: same model class, AdamW, BCE, clipping, nothing else. `batches` yields
    (images, labels): the same tensors again and again, or medvit's DataLoader."""
    import torch
    import torch.nn.functional as F

    from medvit.models import create_backbone

    with torch.random.fork_rng(devices=[]):  # leave the trainer's global RNG as it was
        torch.manual_seed(0)
        model = create_backbone(trainer.spec["name"], **trainer.spec["kwargs"]).to(trainer.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    dev, amp = trainer.device, trainer.amp
    n, t = 0, time.perf_counter()
    for i, (images, labels) in enumerate(batches):
        if i == warmup:
            _sync(dev)
            t, n = time.perf_counter(), 0
        if i == steps + warmup:
            break
        images, labels = images.to(dev, non_blocking=True), labels.float().to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float().reshape(-1), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        n += len(images)
    _sync(dev)
    return n / (time.perf_counter() - t)


def trainer_rate(run_dir: Path, warmup: int) -> float:
    """Images/s the medvit trainer logged per step, after the warm-up steps."""
    log = pd.read_csv(run_dir / "metrics_step.csv")
    return float(log["images_per_s"].iloc[warmup:].median())


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def mfu(trainer, rate: float) -> str:
    """Model-FLOP utilisation: 3x forward FLOPs per image (fwd + bwd) over the GPU's bf16 peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if trainer.device.type != "cuda":
        return "n/a (CPU)"
    x = torch.zeros(1, 1, trainer.cfg.data.image_size, trainer.cfg.data.image_size, device=trainer.device)
    with FlopCounterMode(display=False) as fc:
        trainer.model(x)
    name = torch.cuda.get_device_name()
    # dense bf16 peaks: Hopper (H100, H200, GH200) 989 TFLOP/s, else A100's 312
    peak = 989e12 if any(k in name for k in ("H100", "H200", "GH200")) else 312e12
    return f"{3 * fc.get_total_flops() * rate / peak:.1%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto")
    args = p.parse_args()

    from medvit.train.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        n_images = args.batch_size * (args.steps + args.warmup) * 2
        data = make_cache(Path(tmp) / "data", n_images)
        run = Path(tmp) / "run"
        trainer = Trainer(config(args, data, run), run)
        load = loader_rate(trainer, args.steps)
        trainer.sampler.set_epoch(0)
        batches = list(trainer.sampler)
        fixed = next(iter(trainer._loader(trainer.data.train, batch_sampler=batches[:1])))
        # The bare loop runs before and after the trainer (the machine's speed drifts) ...
        bare = [bare_rate(trainer, itertools.repeat(fixed), args.steps, args.warmup)]
        # ... and once fed by medvit's DataLoader: on a CPU the loader's workers share the cores.
        bare_loader = bare_rate(trainer, trainer._loader(trainer.data.train, batch_sampler=batches),
                                args.steps, args.warmup)
        trainer.fit()
        medvit = trainer_rate(run, args.warmup)
        bare.append(bare_rate(trainer, itertools.repeat(fixed), args.steps, args.warmup))
        ref = float(np.mean(bare))
        print(f"model {args.backbone} patch {args.patch} at {args.image_size}px, batch {args.batch_size}, "
              f"{trainer.device}, amp {trainer.amp}, {args.workers} loader worker(s)")
        print(f"{'bare timm loop, same tensors':34s} {ref:8.1f} images/s   (before {bare[0]:.1f}, after {bare[1]:.1f})")
        print(f"{'bare timm loop, medvit loader':34s} {bare_loader:8.1f} images/s   ratio {bare_loader / ref:.2f}x")
        print(f"{'medvit trainer':34s} {medvit:8.1f} images/s   ratio {medvit / ref:.2f}x  (goal >= 0.95x); "
              f"{medvit / bare_loader:.2f}x of the bare loop on the same loader")
        print(f"{'data loader alone':34s} {load:8.1f} images/s   ratio {load / ref:.2f}x of the step (goal >= 2x)")
        print(f"{'model-FLOP utilisation':34s} {mfu(trainer, medvit)}")

if __name__ == "__main__":
    main()
