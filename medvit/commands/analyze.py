"""`medvit analyze RUN_DIR KIND`: representation analyses of a trained run (seeds 000, 001, 004):
attention maps per class, layer CKA, mean attention distance, attention sparsity, ablation psi."""
from __future__ import annotations

import argparse

KINDS = ("attention", "cka", "distance", "sparsity", "ablation")


def _shares(text: str) -> list[float]:
    """--p in percent ("5,10,20,30" -> 0.05 ...): one unit for the whole list, so "1" is 1 %."""
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not 0 <= v <= 100 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: percentages between 0 and 100, e.g. 5,10,20,30")
    return [v / 100 for v in values]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="attention maps, CKA, attention distance, sparsity and ablation of a trained run",
        description="Read RUN_DIR's checkpoint and the data `medvit evaluate` scores (a benchmark's test split, "
                    "the run's validation fold, --fold k or --data DIR), stream it in batches and write "
                    "RUN_DIR/analysis/KIND/result.json (every plotted number), NPY arrays and PNG figures. "
                    "KIND: attention (CLS attention per class, layer and head; seed 000), cka (linear CKA "
                    "between all layers, minibatch unbiased HSIC; seed 001; with --other RUN2: across two "
                    "models, written to RUN_DIR/analysis/cka_vs_<RUN2 folder name>/), distance (mean "
                    "attention distance per head in input pixels; --other RUN2 adds a second ViT), "
                    "sparsity (mu, nu = -log10 mu, top-5% columns, head/layer correlations; seed 004), "
                    "ablation (top-p vs random units of the last n layers, A0, At, Ar, psi; seed 004; "
                    "--other RUN2 puts a second model, e.g. the CNN, beside it). Binary models are scored "
                    "by AUC instead of accuracy.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (or a checkpoint file)")
    p.add_argument("kind", metavar="KIND", choices=KINDS, help=" | ".join(KINDS))
    p.add_argument("--other", metavar="RUN_DIR2", help="a second run (cka: across models; distance, ablation: beside)")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint FILE (default: best)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--fold", type=int, help="mammography: analyse this fold (default: the run's validation fold)")
    where.add_argument("--data", metavar="DIR", help="every labelled image of this ingest folder (or another "
                                                     "benchmark folder's test split)")
    p.add_argument("--limit", type=int, help="a seeded class-stratified subset of this many images (default: all)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--p", type=_shares, default=None, metavar="P,P,...",
                   help="ablation: percent of units dropped (default 5,10,20,30)")
    p.add_argument("--n", default=None, metavar="N,N,...", help="ablation: last-n layer counts (default 1,2,3)")
    p.add_argument("--seeds", type=int, default=3, help="ablation: random draws averaged for Ar (default 3)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/analysis/<KIND>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medvit.analysis.common import ANALYSIS_DIR, load_analysis_run
    from medvit.runs import run_folder
    from medvit.errors import ConfigError

    if args.other and args.kind in ("attention", "sparsity"):
        raise ConfigError(f"--other applies to cka, distance and ablation, not {args.kind}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give a positive number of images")
    common = dict(which=args.checkpoint, fold=args.fold, data_dir=args.data, limit=args.limit, device=args.device)
    primary = load_analysis_run(args.run_dir, **common)
    other = None
    if args.other:
        other = load_analysis_run(args.other, **{**common, "which": "best" if args.checkpoint not in ("best", "last")
                                                 else args.checkpoint})
    folder = args.kind if args.kind != "cka" or other is None else f"cka_vs_{run_folder(args.other).resolve().name}"
    out = Path(args.out) if args.out else primary.run_dir / ANALYSIS_DIR / folder
    out.mkdir(parents=True, exist_ok=True)
    for note in primary.notes:
        print(f"note: {note}")
    if args.kind == "cka":
        from medvit.analysis.cka import run_cka

        r = run_cka(primary, out, other, args.batch_size)
        m = r["cka"]
        print(f"CKA {primary.name}{' vs ' + other.name if other else ''}: {m.shape[0]}x{m.shape[1]} layers, "
              f"{r['minibatches']} minibatches; diagonal mean {m.diagonal().mean():.3f}")
    elif args.kind == "distance":
        from medvit.analysis.distance import run_distance

        r = run_distance(primary, out, other, args.batch_size)
        for name, res in [(primary.name, r)] + ([(other.name, r["other"])] if other else []):
            per_layer = ", ".join(f"{v:.1f}" for v in res["distance"].mean(1))
            print(f"{name}: mean attention distance per layer (px, head mean): {per_layer}; "
                  f"uniform attention: {res['uniform_distance']:.1f}")
    elif args.kind == "sparsity":
        from medvit.analysis.sparsity import run_sparsity

        r = run_sparsity(primary, out, args.batch_size)
        print(f"{primary.name}: -log10 mean mu per layer "
              f"{', '.join(f'{v:.2f}' for v in r['neg_log10_mean_mu'])}; "
              f"CLS column mu {', '.join(f'{v:.3f}' for v in r['cls_mu'])}; "
              f"max |sum mu - 1| {r['mu_sum_max_error']:.1e}")
    elif args.kind == "ablation":
        from medvit.analysis.ablation import N_VALUES, P_VALUES, markdown_table, run_ablation

        n_values = [int(v) for v in args.n.split(",")] if args.n else list(N_VALUES)
        r = run_ablation(primary, out, other, args.p or list(P_VALUES), n_values, args.seeds, args.batch_size)
        runs = [(primary, r)] + ([(other, r["other"])] if other else [])
        same = other is not None and other.name == primary.name  # e.g. two ViTs: name them by folder too
        shown = {f"{run.name} ({run.run_dir.resolve().name})" if same else run.name: res for run, res in runs}
        print(markdown_table(shown))
        if any(res["metric"] == "auc" for res in shown.values()):
            print("note: binary model(s): A0, At and Ar are AUCs, not accuracies")
    else:
        from medvit.analysis.attention_maps import run_attention_maps

        r = run_attention_maps(primary, out, args.batch_size)
        print(f"{primary.name}: CLS attention maps for classes {r['classes']} (n = {r['counts']})")
    print(f"wrote {out}")
    return 0
