"""`medvit ingest SRC`: DICOM folder -> normalized .npy cache + manifest.csv (resumable)."""
from __future__ import annotations

import argparse

from medvit.canvas import argparse_size, size_text
from medvit.dicom import DEFAULT_SIZE


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="turn a folder of DICOMs into a normalized image cache + manifest",
        description=(
            "Walk SRC (an RSNA-layout folder with train.csv, or any tree of DICOM files, with or "
            "without the .dcm suffix; in the RSNA layout only SRC/train_images/ is read) and write "
            "DIR/images/<image_id>.npy (an H x W uint16 canvas, --size), "
            "DIR/manifest.csv (one row per input file, ok or error with its reason, labels, "
            "patient-grouped folds), DIR/missing_files.csv and DIR/ingest.json. Rerunning skips "
            "files already done with the same settings; an interrupted run resumes."
        ),
    )
    p.add_argument("src", metavar="SRC", help="folder of DICOM files")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: ./medvit-data, where `medvit train` looks)")
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="labels CSV with image_id and the label column (default: SRC/train.csv if present)")
    p.add_argument("--label-column", default="cancer", help="label column in the CSV (default: cancer)")
    p.add_argument("--size", type=argparse_size, default=DEFAULT_SIZE, metavar="HxW",
                   help=f"canvas of the cached images: one side for a square (default: {DEFAULT_SIZE}) or HxW, "
                        "e.g. 512x256 or 1024x512 (the breast, flush left, wastes less of a 2:1 canvas)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: number of CPUs; 1 = in this process)")
    p.add_argument("--folds", type=int, default=4, help="cross-validation folds (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="fold and test-split seed (default: 0)")
    p.add_argument("--test-share", type=float, default=0.0, metavar="F",
                   help="hold out this share of the labelled patients as a test split (split=test, fold -1; "
                        "patient-grouped, label-stratified, seeded) that training never sees; "
                        "`evaluate` and `compare` score it (default: 0, none)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress output (default: a bar on a terminal, "
                        "a plain line per tenth of the files otherwise)")
    add_privacy_flags(p)
    p.set_defaults(func=run)


def add_privacy_flags(p: argparse.ArgumentParser) -> None:
    """--any-modality, --id-key, --raw-patient-ids: shared by ingest and predict."""
    p.add_argument("--any-modality", action="store_true",
                   help="accept files that are not mammograms: a Modality other than MG, or no Modality and a SOP "
                        "class other than MG/DX/CR/Secondary Capture (CT, MR, US, ...); by default they are error "
                        "rows `not_mammogram`")
    p.add_argument("--id-key", metavar="SECRET",
                   help="key of the patient-ID pseudonyms (default: $MEDVIT_ID_KEY, else the key file made once "
                        "in $XDG_CONFIG_HOME/medvit/id_key); header PatientIDs leave medvit only as HMAC pseudonyms")
    p.add_argument("--raw-patient-ids", action="store_true",
                   help="write DICOM PatientIDs as they are (opt-in: they can be record numbers or names)")


def run(args: argparse.Namespace) -> int:
    from medvit.ingest import DEFAULT_DATA_DIR, format_summary, ingest

    out = args.out or DEFAULT_DATA_DIR
    summary = ingest(
        args.src, out=out, labels=args.labels, label_column=args.label_column, size=args.size,
        workers=args.workers, folds=args.folds, seed=args.seed, test_share=args.test_share,
        progress=False if args.no_progress else None, any_modality=args.any_modality,
        id_key=args.id_key, raw_patient_ids=args.raw_patient_ids,
    )
    print(format_summary(summary))
    print(f"wrote {out}/manifest.csv and {out}/images/ ({size_text(args.size)} canvas)")
    return 0
