"""`medvit analyze` cost, measured side by side in one run (ratios, not absolute goals):

  1. each analysis's seconds per image  vs  a plain forward (no hooks) of the same model and batches;
  2. peak memory of the sparsity pass on 512x512 inputs at patch 16 and patch 8 (`vit`, batch 1),
     each in a fresh subprocess: peak RSS (resource.getrusage ru_maxrss; on CUDA
     torch.cuda.max_memory_allocated) after a plain forward, then after the sparsity pass; the
     difference is what the analysis adds. tracemalloc is not used: it sees only Python's
     allocator, not torch's tensor memory.

    python pipelines/bench_analysis.py [--backbone vit] [--patch 16] [--image-size 224] [--images 32]
                                       [--batch-size 8] [--cnn resnet10t] [--skip-memory] [--device auto]

Models are randomly initialised (the cost does not depend on the weights); the data are random
images with 4 labels.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


class RandomImages:
    """(image, label) items with .labels and .ids, as the analyses read them."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        import numpy as np
        import torch

        self.x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
        self.labels = np.arange(n) % 4
        self.ids = [str(i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.labels[i])


def make_run(backbone: str, patch: int | None, size: int, n: int, device: str):
    from medvit.analysis.common import AnalysisRun
    from medvit.models import backbone_kind, create_backbone
    from medvit.train.setup import pick_device

    dev = pick_device(device)
    kwargs = {"patch_size": patch} if patch and backbone_kind(backbone) == "vit" else {}
    model = create_backbone(backbone, num_classes=4, in_chans=1, img_size=size, **kwargs).to(dev).eval()
    return AnalysisRun(model, backbone, backbone_kind(model), False, RandomImages(n, size), Path("."),
                       Path("."), dev, {"kind": "random"}, [])


def plain_forward(run, batch_size: int) -> None:
    import torch

    from medvit.analysis.common import batches

    with torch.inference_mode():
        for images, _ in batches(run, batch_size, "forward"):
            run.model(images)


def timed(fn) -> float:
    import torch

    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def speed(args) -> None:
    from medvit.analysis import ablation as abl
    from medvit.analysis.attention_maps import class_attention
    from medvit.analysis.cka import layer_cka
    from medvit.analysis.distance import attention_distance
    from medvit.analysis.sparsity import attention_sparsity

    bs = args.batch_size
    for backbone, patch in ((args.backbone, args.patch), (args.cnn, None)):
        run = make_run(backbone, patch, args.image_size, args.images, args.device)
        plain_forward(run, bs)  # warm-up

        def forward() -> float:  # best of two, measured again next to each analysis (shared CPUs drift)
            return min(timed(lambda: plain_forward(run, bs)) for _ in range(2)) / args.images

        print(f"\n{backbone}{f' patch {patch}' if patch else ''} at {args.image_size}px, {args.images} images, "
              f"batch {bs}, {run.device}: plain forward {1000 * forward():.2f} ms/image")
        jobs = {"cka (all layer pairs)": lambda: layer_cka(run, None, max(bs, 4)),
                "ablation (4 p x 3 n x (top + 3 random) = 48 ablated passes + 1)":
                    lambda: abl.ablation(run, batch_size=bs)}
        if run.kind == "vit":
            jobs = {"attention maps per class": lambda: class_attention(run, bs),
                    "mean attention distance": lambda: attention_distance(run, bs),
                    "sparsity": lambda: attention_sparsity(run, bs), **jobs}
        for name, job in jobs.items():
            base = forward()
            repeats = 1 if name.startswith("ablation") else 2  # best of two: the first call pays warm-up
            t = min(timed(job) for _ in range(repeats)) / args.images
            print(f"  {name:<70} {1000 * t:9.2f} ms/image  {t / base:7.1f}x forward ({1000 * base:.1f} ms beside it)")


def memory_probe(patch: int, device: str) -> dict:
    """Run in a fresh process: peak memory after a plain forward, then after the sparsity pass."""
    import torch

    from medvit.analysis.sparsity import attention_sparsity

    run = make_run("vit", patch, 512, 2, device)
    cuda = run.device.type == "cuda"

    def peak() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB

    start = peak()
    plain_forward(run, 1)
    forward = peak()
    t = timed(lambda: attention_sparsity(run, 1))
    after = peak()
    n = 1 + run.model.patch_embed.num_patches
    heads, depth = run.model.blocks[0].attn.num_heads, len(run.model.blocks)
    return {"patch": patch, "tokens": n, "device": str(run.device), "measure": "cuda max_memory_allocated"
            if cuda else "ru_maxrss", "start_mib": start, "after_forward_mib": forward, "after_sparsity_mib": after,
            "sparsity_adds_mib": after - forward, "sparsity_s_per_image": t / 2,
            "one_head_map_mib": n * n * 4 / 2**20, "every_layer_and_head_mib": depth * heads * n * n * 4 / 2**20}


def memory(args) -> None:
    print("\nsparsity pass, vit at 512x512, batch 1 (fresh process each; peak memory):")
    for patch in (16, 8):
        out = subprocess.run([sys.executable, __file__, "--memory-probe", str(patch), "--device", args.device],
                             capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if out.returncode:
            print(out.stderr[-2000:])
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  patch {patch:2d} ({r['tokens']} tokens, {r['measure']}): "
              f"after forward {r['after_forward_mib']:.0f} MiB, "
              f"after sparsity {r['after_sparsity_mib']:.0f} MiB (+{r['sparsity_adds_mib']:.0f} MiB), "
              f"{r['sparsity_s_per_image']:.1f} s/image; one head's N x N map {r['one_head_map_mib']:.0f} MiB, "
              f"all layers x heads at once would be {r['every_layer_and_head_mib']:.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cnn", default="resnet10t")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.device)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_speed:
        speed(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
