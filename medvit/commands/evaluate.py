"""`medvit evaluate RUN_DIR`: metrics (AUC + CI, sens@spec, pF1, per breast), predictions and plots."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a trained run: AUC with CI, sensitivity at specificity, pF1, per breast, plots",
        description="Score RUN_DIR's checkpoint on the held-out test split (`ingest --test-share`) with the "
                    "threshold fixed on validation; without a test split, on its validation fold, labelled "
                    "'validation (optimistic)' (or --fold k, or every labelled image "
                    "of another ingest folder with --data). Writes metrics.json, predictions.csv, roc.png, "
                    "pr.png, confusion.png and training_curves.png into --out (default RUN_DIR/eval).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run directory")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--fold", type=int, help="score this fold instead of the run's validation fold")
    where.add_argument("--data", metavar="DIR", help="score every labelled ok image of this ingest folder")
    p.add_argument("--split", default="auto", choices=["auto", "test", "validation"],
                   help="auto: the test split when the data has one, else the validation fold (default)")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint FILE (default: best)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUC CI (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, help="default: the run's data.batch_size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvit.evaluate import evaluate, summary_lines

    report = evaluate(args.run_dir, which=args.checkpoint, fold=args.fold, data_dir=args.data, split=args.split,
                      n_boot=args.n_boot, seed=args.seed, out=args.out, device=args.device,
                      batch_size=args.batch_size, workers=args.workers)
    print("\n".join(summary_lines(report)))
    return 0
