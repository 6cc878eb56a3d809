"""`medvit pretrain`: self-supervised pretraining (MAE / DINO / SimCLR) on ingested, unlabelled
mammograms, on the one trainer; `medvit train --init RUN_DIR` fine-tunes the encoder."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medvit import tracking

# flag -> dotted config key (as `medvit train`); --data and --include-test are handled below
FLAGS = {
    "backbone": "model.backbone", "patch": "model.patch_size", "method": "pretrain.method",
    "epochs": "train.epochs", "max_wall": "train.max_wall", "max_steps": "train.max_steps",
    "batch_size": "data.batch_size", "image_size": "data.image_size", "seed": "train.seed",
    "out": "train.out",
}


def register(sub: argparse._SubParsersAction) -> None:
    from medvit.canvas import argparse_size

    p = sub.add_parser("pretrain", help="self-supervised pretraining (mae, dino, simclr) on unlabelled ingested images",
                       description="Pretrain a backbone's encoder without labels on one or more ingest folders "
                                   "(the --test-share split is left out). Fine-tune it with "
                                   "`medvit train --init RUN_DIR`. Settings: defaults, then --config, then the "
                                   "flags, then key=value overrides (e.g. pretrain.mask_ratio=0.75).")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides (pretrain.*, optim.*, ...)")
    p.add_argument("--data", action="append", help="ingest output folder; repeat for more folders")
    p.add_argument("--backbone", help="registered backbone (MAE: a ViT; DINO: any; SimCLR: a CNN)")
    p.add_argument("--patch", type=int, choices=[8, 16, 32, 4, 2], help="ViT patch size")
    p.add_argument("--method", choices=["mae", "dino", "simclr"])
    p.add_argument("--out", help="run directory (default: runs/pretrain-<method>-<backbone>-<time>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-wall", type=float, help="stop after this many seconds of training")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=argparse_size, help="model input: S or HxW (default: the ingest canvas)")
    p.add_argument("--seed", type=int)
    p.add_argument("--include-test", action="store_true",
                   help="also pretrain on the --test-share images (they are then no longer unseen)")
    p.add_argument("--config", help="a YAML file or packaged config (e.g. pretrain_mae)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted pretraining run exactly")
    tracking.add_flags(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    from medvit.commands.train import flag_overrides
    from medvit.config import load_config

    flags = flag_overrides(args, FLAGS)  # as `medvit train`
    if args.data:
        flags += [f"data.dir={args.data[0]}", f"pretrain.extra_dirs={json.dumps(args.data[1:])}"]  # JSON is YAML
    if args.include_test:
        flags.append("pretrain.include_test=true")
    from medvit.errors import ConfigError

    if args.resume:
        cfg = load_config(Path(args.resume) / "config.yaml", flags + list(args.overrides))
        if not cfg.pretrain.method:
            raise ConfigError(f"{Path(args.resume) / 'config.yaml'}: not a pretraining run (no pretrain.method); "
                              "resume it with `medvit train --resume`")
        return cfg
    cfg = load_config(args.config, flags + list(args.overrides))
    if not cfg.pretrain.method:
        raise ConfigError("medvit pretrain needs --method mae, dino or simclr")
    return cfg


def run(args: argparse.Namespace) -> int:
    track = tracking.from_args(args)  # first: a word after a bare --track goes back to the overrides
    cfg = build_config(args)
    from medvit.pretrain.plots import plot_loss, plot_reconstructions
    from medvit.train.loop import Trainer, run_trainer

    run_dir = Path(args.resume or cfg.train.out or _default_run_dir(cfg))
    cfg.train.out = str(run_dir)
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), track=track)
    if cfg.pretrain.include_test:
        trainer.log.info("pretrain: --include-test: the test split's images are pretrained on "
                         "(test scores of fine-tuned runs no longer come from unseen images)")
    trainer.log.info(f"pretrain: {cfg.pretrain.method} on {len(trainer.data.train)} images from "
                     f"{', '.join([cfg.data.dir, *cfg.pretrain.extra_dirs])}")
    summary = run_trainer(trainer)  # as medvit.train.fit: a failed run's MLflow run ends FAILED / KILLED
    if trainer.dist.main:
        plot_loss(run_dir, f"{cfg.pretrain.method} pretraining, {cfg.model.backbone}")
        if cfg.pretrain.method == "mae":
            plot_reconstructions(run_dir)
        if track is not None:  # the figures are drawn after fit(): log them to the same MLflow run
            tracking.log_files(run_dir, sorted(run_dir.glob("*.png")))
    print(f"run: {summary['run_dir']}  stopped: {summary['stop_reason']}  "
          f"fine-tune with: medvit train --init {summary['run_dir']} --data DIR")
    return 0


def _default_run_dir(cfg) -> Path:
    return Path("runs") / f"pretrain-{cfg.pretrain.method}-{cfg.model.backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
