"""`medvit study NAME`: a seed study as a grid of training runs on Ray (local, or a cluster with --address)."""
from __future__ import annotations

import argparse
from pathlib import Path

from medvit import tracking

# flag -> dotted key; applied before the positional key=value overrides
FLAGS = {"dataset": "data.kind", "data": "data.dir", "seeds": "study.seeds", "epochs": "train.epochs",
         "max_wall": "train.max_wall"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a seed study (ViT vs CNN, patch size, double descent, learning curves, "
                                     "heads/layers, mammography patch size) as a Ray sweep",
                       description="Run a study of the seed documents: a grid of training runs with the one "
                                   "trainer, on a local Ray or a cluster (--address). Writes OUT/results.csv, "
                                   "OUT/table.md, PNG plots and (learning-curve, heads-layers, double-descent) "
                                   "OUT/fit.json. Rerunning skips finished runs and resumes interrupted ones.")
    p.add_argument("name", nargs="?", metavar="NAME", help="the study (see --list)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides: trainer keys (train.max_steps=200) or study keys (study.noise=[0.2])")
    p.add_argument("--list", action="store_true", help="name the studies, one line each, and exit")
    p.add_argument("--config", help="study YAML (default: configs/study_<NAME>.yaml; may inherit with `base:`)")
    p.add_argument("--dataset", choices=["mnist", "cifar10"], help="benchmark of the study (default: its YAML's)")
    p.add_argument("--data", help="folder with the CIFAR-10/MNIST files, or the `medvit ingest` output (mammo-patch)")
    p.add_argument("--out", help="study folder (default: studies/<NAME>)")
    p.add_argument("--seeds", type=int, help="seeds per grid point (0..N-1)")
    p.add_argument("--points", help="the swept axis, comma-separated: widths (double-descent), p_train "
                                    "(learning-curve), patch sizes, H or L (heads-layers)")
    p.add_argument("--pretrained", metavar="RUN_DIR[,RUN_DIR2]",
                   help="label-efficiency: `medvit pretrain` runs, comma-separated "
                        "(each: a pretrained and a scratch arm)")
    p.add_argument("--epochs", type=int, help="train.epochs of every run")
    p.add_argument("--max-wall", type=float, metavar="SECONDS", help="wall-clock limit of each run's training")
    p.add_argument("--address", metavar="RAY_ADDRESS", help="join this Ray cluster (default: start a local Ray)")
    p.add_argument("--redraw", action="store_true", help="only rebuild table, plots and fit.json from OUT/results.csv")
    tracking.add_flags(p)
    p.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> list[str]:
    items = [f"{key}={getattr(args, name)}" for name, key in FLAGS.items() if getattr(args, name) is not None]
    if args.data is not None:
        where = [i for i, s in enumerate(items) if s.startswith("data.dir=")][0]
        items[where] = f"data.dir={Path(args.data).resolve()}"
    if args.points is not None:
        from medvit.studies.grid import parse_points

        items.append(f"study.points={parse_points(args.points)}")
    if getattr(args, "pretrained", None):
        import json

        runs = [str(Path(r).resolve()) for r in args.pretrained.split(",") if r.strip()]
        items.append(f"study.pretrained={json.dumps(runs)}")  # JSON is YAML
    return items + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    from medvit.errors import ConfigError
    from medvit.studies.grid import STUDIES

    track = tracking.from_args(args)  # first: `--track NAME` hands NAME back
    if args.list:
        width = max(len(n) for n in STUDIES)
        print("\n".join(f"{n:<{width}}  {s.summary}" for n, s in STUDIES.items()))
        return 0
    if not args.name:
        raise ConfigError("medvit study: give a study NAME (see `medvit study --list`)")
    if args.name not in STUDIES:
        from medvit.errors import suggest

        raise ConfigError(f"unknown study {args.name!r}: {suggest(args.name, STUDIES)}")
    out = Path(args.out or Path("studies") / args.name)
    from medvit.studies import redraw, run_study

    summary = redraw(out) if args.redraw else run_study(args.name, out, args.config, overrides_from(args),
                                                        address=args.address, track=track)
    fit = summary.get("fit") or {}
    for arm, f in fit.items():
        if "alpha" in f and f["alpha"] is not None:
            lo, hi = f["alpha_ci"]
            ci = f" [{lo:.3f}, {hi:.3f}] ({f['ci_method']})" if lo is not None else ""
            print(f"{arm}: alpha = {f['alpha']:.3f}{ci}")
        elif "peak_width" in f:
            print(f"{arm}: test-error peak width by label noise: {f['peak_width']}")
    print(f"wrote {out / 'results.csv'}, {summary['table']}, " + ", ".join(summary["plots"]))
    return 0
