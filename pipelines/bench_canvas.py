"""Square vs breast-shaped canvases, measured side by side in one run (ratios, not absolute goals):

  1. padding: share of zero pixels and share of the canvas width the breast spans, at 512x512 vs
     512x256, on full-size synthetic mammograms (`medvit synth --size full`, real detector sizes)
  2. ViT train step (forward + backward + AdamW, seed-002 `vit`) at patch 16 and 8: seconds per step
     and peak memory at 512x512 vs 512x256, each in a fresh process (goal at p16: >= 1.8x faster)
  3. the demo's CNN (configs/demo_cnn.yaml) trained and scored at both canvases: test AUC with its
     95% CI (expected: the same within the CI); model input 128x128 vs 128x64 (the same height)

    python pipelines/bench_canvas.py [--patients 2] [--steps 3] [--rounds 2] [--batch-size 2]
                                     [--skip-auc] [--skip-steps]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CANVASES = ("512x512", "512x256")


def padding_shares(src: Path, canvas: str) -> dict:
    """Mean share of zero pixels and of columns holding breast, over every synth file."""
    from medvit.canvas import parse_size
    from medvit.dicom.normalize import preprocess

    zeros, widths = [], []
    for path in sorted((src / "train_images").rglob("*.dcm")):
        image = preprocess(path, size=parse_size(canvas)).image
        zeros.append(float((image == 0).mean()))
        widths.append(float((image > 0).any(axis=0).mean()))
    return {"zero_share": float(np.mean(zeros)), "breast_width_share": float(np.mean(widths)), "n": len(zeros)}


def step_probe(canvas: str, patch: int, batch: int, steps: int) -> dict:
    """In a fresh process: seconds per training step after one warm-up, and peak RSS."""
    import resource

    import torch

    from medvit.canvas import parse_size
    from medvit.models import create_backbone

    model = create_backbone("vit", num_classes=1, in_chans=1, img_size=parse_size(canvas), patch_size=patch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    h, w = parse_size(canvas)
    x, y = torch.rand(batch, 1, h, w), torch.randint(0, 2, (batch,)).float()
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).reshape(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return {"s_per_step": float(np.median(times)), "tokens": model.patch_embed.num_patches + 1,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_probe(canvas: str, patch: int, batch: int, steps: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_canvas as b; "
            f"print(json.dumps(b.step_probe({canvas!r}, {patch}, {batch}, {steps})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternating(patch: int, args) -> dict:
    """Probes of both canvases in alternating rounds (a shared machine's load drifts); per canvas
    the fastest round's time and the largest peak memory."""
    rounds: dict[str, list[dict]] = {c: [] for c in CANVASES}
    for _ in range(args.rounds):
        for c in CANVASES:
            rounds[c].append(run_probe(c, patch, args.batch_size, args.steps))
    return {c: {"tokens": r[0]["tokens"], "s_per_step": min(p["s_per_step"] for p in r),
                "peak_rss_mib": max(p["peak_rss_mib"] for p in r)} for c, r in rounds.items()}


def demo_auc(src: Path, root: Path, canvas: str) -> dict:
    """Ingest at `canvas`, train the demo CNN at 1/4 of its height and width, score the test split."""
    from medvit.canvas import parse_size
    from medvit.cli import main

    h, w = parse_size(canvas)
    data, run = root / f"data-{canvas}", root / f"cnn-{canvas}"
    assert main(["ingest", str(src), "--out", str(data), "--size", canvas, "--test-share", "0.2", "--no-progress"]) == 0
    assert main(["train", "--config", "demo_cnn", "--data", str(data), "--out", str(run), "--image-size",
                 f"{h // 4}x{w // 4}", "data.workers=1"]) == 0
    assert main(["evaluate", str(run)]) == 0
    m = json.loads((run / "eval" / "metrics.json").read_text())
    return {"auc": m["auc"], "auc_ci": m["auc_ci"], "n": m["n"], "image_size": m["image_size"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=2, help="full-size synth patients for the padding shares")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patches", default="16,8")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the step probes (best of)")
    ap.add_argument("--demo-patients", type=int, default=80)
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--skip-auc", action="store_true")
    args = ap.parse_args()
    from medvit.dicom.synth import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "full", patients=args.patients, seed=0, size="full")
        shares = {c: padding_shares(root / "full", c) for c in CANVASES}
        print(f"1. padding over {shares[CANVASES[0]]['n']} full-size synth mammograms")
        for c, s in shares.items():
            print(f"   {c}: zero pixels {s['zero_share']:.1%}, breast spans {s['breast_width_share']:.1%} of the width")
        ratio = shares["512x256"]["zero_share"] / shares["512x512"]["zero_share"]
        print(f"   zero share 512x256 / 512x512 = {ratio:.2f}")
        if not args.skip_steps:
            print(f"2. seed-002 ViT train step, batch {args.batch_size}, median of {args.steps} after a warm-up, "
                  f"best of {args.rounds} alternating rounds")
            for patch in (int(p) for p in args.patches.split(",")):
                probes = alternating(patch, args)
                for c, p in probes.items():
                    print(f"   p{patch} {c}: {p['tokens']} tokens, {p['s_per_step']:.2f} s/step, "
                          f"peak RSS {p['peak_rss_mib']:.0f} MiB")
                sq, rect = probes["512x512"], probes["512x256"]
                print(f"   p{patch}: 512x256 is {sq['s_per_step'] / rect['s_per_step']:.2f}x faster, "
                      f"peak memory {rect['peak_rss_mib'] / sq['peak_rss_mib']:.2f}x")
        if not args.skip_auc:
            write_dataset(root / "demo", patients=args.demo_patients, seed=0, cancer_rate=0.5)
            aucs = {c: demo_auc(root / "demo", root, c) for c in CANVASES}
            print(f"3. the demo's CNN ({args.demo_patients} patients, test split 0.2)")
            for c, a in aucs.items():
                print(f"   canvas {c}, input {a['image_size']}: test AUC {a['auc']:.3f} "
                      f"[{a['auc_ci'][0]:.3f}, {a['auc_ci'][1]:.3f}] on {a['n']} images")


if __name__ == "__main__":
    main()
