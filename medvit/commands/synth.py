"""`medvit synth`: write a synthetic RSNA-layout mammography data set (DICOMs + train.csv)."""
from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic RSNA-like mammography DICOMs + train.csv",
                       description="Write OUT/train_images/<patient_id>/<image_id>.dcm, OUT/train.csv, "
                                   "OUT/lesion_masks/<image_id>.png and OUT/lesions.csv: 4 views per "
                                   "patient, RSNA's transfer syntaxes, fake PHI marked MEDVITPHI. Headers by "
                                   "patient: full, PatientID = PatientName, and exactly the shape of RSNA's own "
                                   "files (no Modality or SOPClassUID; DX For Presentation in the file meta).")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--patients", type=int, default=20, help="number of patients (4 images each; default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p.add_argument("--cancer-rate", type=float, default=0.25, help="share of patients with a cancer (default 0.25)")
    p.add_argument("--size", choices=["small", "full"], default="small",
                   help="small: ~1024 rows (fast); full: the machines' real sizes, e.g. 4096x3328")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the usable CPUs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvit.dicom.synth import write_dataset

    start = time.perf_counter()
    frame = write_dataset(args.out, patients=args.patients, seed=args.seed, cancer_rate=args.cancer_rate,
                          size=args.size, workers=args.workers)  # default: the usable cores
    seconds = time.perf_counter() - start
    positives = int(frame["cancer"].sum())
    print(f"synth: {frame['patient_id'].nunique()} patients, {len(frame)} images, {positives} positive images "
          f"-> {args.out} in {seconds:.1f} s")
    return 0
