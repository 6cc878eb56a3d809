"""`medvit predict FOLDER --checkpoint CKPT`: batch inference on a folder of DICOMs -> CSV."""
from __future__ import annotations

import argparse

from medvit.canvas import argparse_size
from medvit.commands.ingest import add_privacy_flags
from medvit.dicom import DEFAULT_SIZE
from medvit.workers import usable_cores


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="predict every DICOM under a folder (CSV per image and per breast, optional overlays)",
        description="Preprocess every file under FOLDER (recursively, any suffix) exactly as ingest does, run the "
                    "model and write one CSV row per file: path, image_id, patient_id (a keyed pseudonym, as "
                    "ingest writes it), patient_id_source, modality, laterality, laterality_source, view, prob, "
                    "pred, status (ok/error), error. Binary models also get <out stem>_per_breast.csv. "
                    "A bad file is an error row; the run goes on.")
    p.add_argument("folder", metavar="FOLDER", help="folder of DICOM files (searched recursively)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint file, or a run directory (its checkpoints/best.pt)")
    p.add_argument("--out", default="predictions.csv", help="output CSV (default: predictions.csv)")
    p.add_argument("--overlays", metavar="DIR", help="also write an attention/Grad-CAM overlay PNG per image here")
    p.add_argument("--method", default="auto", help="overlay method: auto | attention | rollout | gradcam")
    p.add_argument("--workers", type=int, default=min(4, usable_cores()),
                   help="decoding processes (0: decode in this process; default: min(4, usable CPUs))")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 16)")
    p.add_argument("--threshold", type=float,
                   help="probability cut for pred=1 (default: the checkpoint's validation best-F1 threshold)")
    p.add_argument("--ingest-size", type=argparse_size, metavar="S|HxW",
                   help="preprocessing canvas, a side or HxW (default: the canvas the run's training data was "
                        f"ingested at, else {DEFAULT_SIZE})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    add_privacy_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvit.predict import predict_folder

    s = predict_folder(args.folder, args.checkpoint, args.out, overlays=args.overlays, workers=args.workers,
                       batch_size=args.batch_size, threshold=args.threshold, ingest_size=args.ingest_size,
                       device=args.device, method=args.method, any_modality=args.any_modality,
                       id_key=args.id_key, raw_patient_ids=args.raw_patient_ids)
    line = (f"predicted {s['ok']}/{s['files']} file(s) with {s['backbone']} "
            f"(threshold {s['threshold']:.3g}, preprocess to {s['canvas']} -> model input {s['image_size']} px)")
    if s["error"]:
        line += f"; {s['error']} error row(s), see the status/error columns"
    print(line)
    print(f"wrote {s['out']}" + (f" and {s['per_breast']}" if "per_breast" in s else "")
          + (f"; {s['overlays']} overlay(s) in {args.overlays}" if args.overlays else ""))
    return 0
