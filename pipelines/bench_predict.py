"""`medvit predict` speed, measured side by side in one run (ratios, not absolute goals):

  1. predict end-to-end images/s  vs  min(decode-only, model-only) images/s        (goal >= 0.9x)
     decode-only: the same DataLoader of DICOMs (preprocess + resize, `--workers` processes), no model;
     model-only:  the same model on ready tensors of the same batch size.
  2. attention extraction (explain rollout / last-layer attention)  vs  a plain forward   (goal <= 1.5x)

    python pipelines/bench_predict.py [--patients 60] [--backbone vit] [--patch 16] [--image-size 224]
                                      [--batch-size 16] [--workers 4] [--device auto]

Data: synthetic RSNA-layout DICOMs (`medvit.dicom.synth`, size "small"), preprocessed at 512 as
ingest does. The model is randomly initialised (speed does not depend on the weights). End-to-end
includes model loading, file discovery and worker start-up, like a real `medvit predict` call; on
a machine where decoding and the model share the same few CPU cores the two cannot overlap, so
the ratio is only meaningful with spare cores (or a GPU) for the model.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def make_checkpoint(path: Path, args) -> Path:
    """A medvit checkpoint of a freshly initialised backbone (what `predict` loads)."""
    from medvit.config import config_to_dict, load_config
    from medvit.models import create_backbone
    from medvit.train.checkpoint import save_checkpoint

    cfg = load_config(None, [f"data.image_size={args.image_size}", f"model.backbone={args.backbone}",
                             f"model.patch_size={args.patch}", f"data.batch_size={args.batch_size}",
                             f"data.dir={path.parent / 'no-data'}"])
    spec = {"name": args.backbone, "kwargs": {"num_classes": 1, "in_chans": 1, "img_size": args.image_size,
                                              "patch_size": args.patch}}
    model = create_backbone(spec["name"], **spec["kwargs"])
    return save_checkpoint({"model_spec": spec, "model": model.state_dict(), "ema": None, "binary": True,
                            "threshold": 0.5, "config": config_to_dict(cfg)}, path)


def decode_rate(folder: Path, p, args) -> float:
    """Images/s of the predict DataLoader alone: find files, preprocess, resize, collate."""
    from torch.utils.data import DataLoader

    from medvit.predict import DicomFiles, _init_worker, collate, list_dicoms
    from medvit.workers import worker_context

    t = time.perf_counter()
    rels, _ = list_dicoms(folder, [])
    data = DicomFiles(folder, rels, p.ingest_size, p.image_size, p.in_chans)
    w = args.workers
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=w, collate_fn=collate,
                        worker_init_fn=_init_worker if w else None, prefetch_factor=2 if w else None,
                        multiprocessing_context=worker_context() if w else None)
    n = sum(len(items) for _, items in loader)
    return n / (time.perf_counter() - t)


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls after one warm-up call."""
    import statistics

    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_pair(fa, fb, repeats: int) -> tuple[float, float]:
    """Median seconds of `fa()` and of `fb()`, calls alternated (a, b, a, b, ...) after one
    warm-up each, so a noisy neighbour slows both alike and the ratio holds."""
    import statistics

    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=60, help="synth patients (4 images each)")
    ap.add_argument("--backbone", default="vit")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of the model-only measurements")
    ap.add_argument("--keep", metavar="DIR", help="write the synth data here and keep it (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    from medvit.dicom.synth import write_dataset
    from medvit.explain import explain
    from medvit.predict import forward_probs, load_predictor, predict_folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        t = time.perf_counter()
        write_dataset(root / "synth", patients=args.patients, seed=0, size="small")
        folder = root / "synth" / "train_images"
        n_files = sum(1 for f in folder.rglob("*") if f.is_file())
        ckpt = make_checkpoint(root / "bench.pt", args)
        print(f"data: {n_files} synth DICOMs (small) in {time.perf_counter() - t:.1f}s; model {args.backbone} "
              f"p{args.patch} at {args.image_size}px, batch {args.batch_size}, {args.workers} decode worker(s), "
              f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPU(s)")

        p = load_predictor(ckpt, device=args.device)
        x = torch.rand(args.batch_size, 1, args.image_size, args.image_size)

        def forward() -> None:
            forward_probs(p, x)  # ends with .cpu(): synchronised

        forward_s = timed(forward, args.repeats)
        model_rate = args.batch_size / forward_s
        dec_rate = decode_rate(folder, p, args)

        t = time.perf_counter()
        s = predict_folder(folder, ckpt, root / "preds.csv", workers=args.workers, batch_size=args.batch_size,
                           device=args.device, progress=False)
        e2e_rate = s["files"] / (time.perf_counter() - t)
        bound = min(dec_rate, model_rate)
        print(f"decode-only   {dec_rate:8.1f} img/s")
        print(f"model-only    {model_rate:8.1f} img/s  ({p.device}, amp {p.amp})")
        print(f"end-to-end    {e2e_rate:8.1f} img/s  = {e2e_rate / bound:.2f}x min(decode, model)  (goal >= 0.9)")

        xd = x.to(p.device)
        methods = ("rollout", "attention") if hasattr(p.model, "blocks") else ("gradcam",)  # ViT or CNN
        for method in methods:
            plain_s, explain_s = timed_pair(forward, lambda: explain(p.model, xd, method), args.repeats)
            print(f"{method:<13} {explain_s * 1000:8.1f} ms/batch vs forward {plain_s * 1000:.1f} ms "
                  f"= {explain_s / plain_s:.2f}x  (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
