"""`medvit pretrain` speed and memory, measured side by side in one run (ratios, not timed tests):

  1. per method: the medvit trainer's images/s  vs  the same objective in a bare loop on the same
     views (goal >= 0.9x), and the wall time per 1,000 images on this machine;
  2. MAE memory at 512 px, patch 16 and patch 8: peak memory of one training step (MAE, only the
     25 % visible tokens through the encoder) vs one supervised step of the same ViT, each in a fresh
     process (CPU: growth of the peak RSS over the step, Linux; GPU: torch.cuda.max_memory_allocated).

    python pipelines/bench_pretrain.py [--image-size 256] [--batch-size 8] [--steps 6] [--memory-batch 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

# (method, backbone, patch): the seed-002 ViT (`vit`) and a small CNN
RUNS = [("mae", "vit", 16), ("dino", "vit", 16), ("dino", "resnet10t", None), ("simclr", "resnet10t", None)]


def make_cache(root: Path, n: int, size: int = 512, seed: int = 0) -> Path:
    """An ingest-style folder of n unlabelled breast-like images (a textured half-ellipse on zero)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(n):
        breast = (xx / rng.uniform(0.5, 0.9)) ** 2 + ((yy - 0.5) / rng.uniform(0.3, 0.45)) ** 2 < 1
        img = breast * np.clip(rng.uniform(0.2, 0.5) + rng.normal(0, 0.1, (size, size)), 0, 1)
        np.save(root / "images" / f"{i}.npy", (img * 65535).astype(np.uint16))
        rows.append({"image_id": str(i), "patient_id": str(i // 4), "laterality": "L", "view": "CC", "label": None,
                     "fold": -1, "status": "ok", "cache": f"images/{i}.npy", "split": ""})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def trainer_for(args, data: Path, run: Path, method: str, backbone: str, patch: int | None):
    from medvit.config import load_config
    from medvit.train.loop import Trainer

    cfg = load_config(None, [
        f"data.dir={data}", f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
        f"data.workers={args.workers}", f"model.backbone={backbone}", f"pretrain.method={method}",
        f"train.max_steps={args.steps + args.warmup}", "train.epochs=1", "train.log_every=1",
        f"train.device={args.device}", *([f"model.patch_size={patch}"] if patch else [])])
    return Trainer(cfg, run)


def bare_rate(trainer, views, labels, steps: int, warmup: int) -> float:
    """The same objective, by hand: forward to the loss (DINO: student + teacher, centre, EMA),
    AdamW, clipping. On a copy of the trainer's objective, so the trainer's state is untouched."""
    import torch

    obj = copy.deepcopy(trainer.objective)
    net = copy.deepcopy(trainer.net)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
    shim = SimpleNamespace(dist=trainer.dist, net=net, c=SimpleNamespace(step=0), device=trainer.device,
                           amp=trainer.amp)
    n, t = 0, time.perf_counter()
    for i in range(steps + warmup):
        if i == warmup:
            n, t = 0, time.perf_counter()
        loss = obj.criterion(shim, views, net(views))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        obj.after_step(shim)  # DINO's teacher EMA; nothing for MAE / SimCLR
        n += len(labels)
    return n / (time.perf_counter() - t)


def speed(args, tmp: Path) -> list[dict]:
    import torch

    rows = []
    data = make_cache(tmp / "data", args.batch_size * (args.steps + args.warmup) + args.batch_size)
    for method, backbone, patch in RUNS:
        run = tmp / f"{method}-{backbone}"
        trainer = trainer_for(args, data, run, method, backbone, patch)
        trainer.sampler.set_epoch(0)
        first = list(trainer.sampler)[:1]
        images, labels = next(iter(trainer._loader(trainer.data.train, batch_sampler=first)))
        views = images if torch.is_tensor(images) else list(images)
        bare = [bare_rate(trainer, views, labels, args.steps, args.warmup)]  # before and after: drift
        trainer.fit()
        bare.append(bare_rate(trainer, views, labels, args.steps, args.warmup))
        ours = float(pd.read_csv(run / "metrics_step.csv")["images_per_s"].iloc[args.warmup:].median())
        ref = float(np.mean(bare))
        rows.append({"method": method, "backbone": backbone + (f" p{patch}" if patch else ""), "trainer": ours,
                     "bare": ref, "ratio": ours / ref, "s_per_1000": 1000 / ours})
        print(f"{method:7s} {rows[-1]['backbone']:12s} trainer {ours:7.2f} img/s  bare {ref:7.2f} img/s "
              f"(before {bare[0]:.2f}, after {bare[1]:.2f})  ratio {ours / ref:.2f}x (goal >= 0.9x)  "
              f"{1000 / ours:7.0f} s per 1,000 images", flush=True)
    return rows


MEMORY_CHILD = r"""
import json, sys, time, torch
from medvit.models import create_backbone
mode, patch, size, batch, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
vit = create_backbone("vit", img_size=size, patch_size=patch).to(device)
x = torch.rand(batch, 1, size, size, device=device)
if mode == "mae":
    from medvit.pretrain.base import strip_classifier
    from medvit.pretrain.mae import MAENet
    strip_classifier(vit)
    net = MAENet(vit, 0.75, 128, 2, 4, True).to(device)
    step = lambda: net(x)
else:
    step = lambda: torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
        vit(x).reshape(-1), torch.ones(batch, device=device))
def status(key):  # kB from /proc/self/status
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = status("VmRSS")
if device == "cuda":
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
t = time.perf_counter()
step().backward()
if device == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
else:
    peak = (status("VmHWM") - before) * 1024
print(json.dumps({"peak_mb": peak / 2**20, "step_s": time.perf_counter() - t}))
"""


def memory(args) -> list[dict]:
    rows = []
    for patch in (16, 8):
        got = {}
        for mode in ("supervised", "mae"):
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, mode, str(patch), "512", str(args.memory_batch),
                                  args.device], capture_output=True, text=True, timeout=1800)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            got[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        sup, mae = got["supervised"], got["mae"]
        rows.append({"patch": patch, **{f"{k}_{m}": v for m, d in got.items() for k, v in d.items()}})
        print(f"512 px patch {patch:2d}, batch {args.memory_batch}: supervised step {sup['peak_mb']:7.0f} MB "
              f"{sup['step_s']:6.1f} s | MAE step {mae['peak_mb']:7.0f} MB {mae['step_s']:6.1f} s | "
              f"memory ratio MAE/supervised {mae['peak_mb'] / max(sup['peak_mb'], 1e-9):.2f}x, "
              f"time ratio {mae['step_s'] / sup['step_s']:.2f}x", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", default="256", help="canvas of the speed runs: S or HxW")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="the trainer's loader processes (views made there)")
    p.add_argument("--memory-batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    import torch

    print(f"{args.device}, {torch.get_num_threads()} threads, canvas {args.image_size}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}", flush=True)
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            speed(args, Path(tmp))
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
