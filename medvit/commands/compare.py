"""`medvit compare RUN_A RUN_B [...]`: which backbone to trust, with paired statistics, as one HTML page."""
from __future__ import annotations

import argparse

from medvit import tracking


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare trained runs on the same held-out images: paired tests, calibration, "
                        "subgroups, maps, cost -> one HTML page",
        description="Score every RUN on the same images - the test split of `ingest --test-share` "
                    "(else the shared validation fold, labelled 'validation (optimistic)'; CIFAR-10/MNIST: "
                    "the test split) - with each run's threshold fixed on validation, and write "
                    "OUT/index.html, OUT/compare.json and PNG figures: AUC with CI, sens@spec, pF1 (image "
                    "and breast level), DeLong and paired-bootstrap tests of the AUC difference, McNemar on "
                    "sensitivity/specificity (Holm-corrected with more than two runs), calibration, "
                    "subgroups, the images where the runs disagree with their maps, pointing game, cost. "
                    "Refuses runs trained on different ingests or folds.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run directories (two or more)")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report/)")
    p.add_argument("--split", default="auto", choices=["auto", "test", "validation"],
                   help="auto: the test split when the data has one, else the validation fold (default)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="default: best")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--gallery", type=int, default=6, help="images in 'where they disagree' (default 6)")
    p.add_argument("--masks", metavar="DIR", help="lesion masks for the pointing game "
                                                 "(default: SRC/lesion_masks of the ingest, when present)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, help="default: each run's data.batch_size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    tracking.add_flags(p, checkpoints=False)  # --track alone: the store the compared runs share, else beside OUT
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medvit.compare.report import compare

    track = tracking.from_args(args)  # first: `--track RUN_A RUN_B` hands RUN_A back
    result = compare(args.runs, args.out, which=args.checkpoint, split=args.split, n_boot=args.n_boot,
                     seed=args.seed, device=args.device, gallery=args.gallery, masks=args.masks,
                     batch_size=args.batch_size, workers=args.workers)
    print(result["summary"])
    for r in result["runs"]:
        metric = f"AUC {r['auc']:.3f}" if r.get("auc") is not None else ""
        if "accuracy" in r:
            metric = f"accuracy {r['accuracy']:.3f}"
        print(f"  {r['name']} ({r['backbone']}): {metric}  Brier {r['brier']:.3f}  ECE {r['ece']:.3f}")
    print(f"wrote {Path(args.out) / 'index.html'}")
    if track is not None:
        print(f"MLflow run {tracking.log_compare(track, args.out, result)}")
    return 0
