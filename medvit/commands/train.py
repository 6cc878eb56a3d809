"""`medvit train`: one trainer for mammograms, CIFAR-10 and MNIST."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from medvit import tracking
from medvit.canvas import argparse_size

# flag -> dotted config key; flags are applied as overrides before the positional key=value ones
FLAGS = {
    "data": "data.dir", "backbone": "model.backbone", "patch": "model.patch_size",
    "fold": "data.fold", "epochs": "train.epochs", "max_steps": "train.max_steps",
    "max_wall": "train.max_wall", "batch_size": "data.batch_size", "image_size": "data.image_size",
    "seed": "train.seed", "weights": "model.weights", "out": "train.out",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a ViT or CNN backbone on ingested mammograms (or CIFAR-10/MNIST)",
                       description="Train one backbone. Settings come from the defaults, then --config YAML, "
                                   "then the flags, then key=value overrides (e.g. optim.lr=3e-4).")
    from medvit.config import packaged_configs

    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, before, between or after the flags")
    p.add_argument("--config", help="a YAML file (may inherit another with `base:`) or a packaged config by "
                                    f"name: {', '.join(packaged_configs())}")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults <- --config <- flags <- overrides) as YAML and exit")
    p.add_argument("--data", help="ingest output folder (default: medvit-data) or CIFAR/MNIST folder")
    p.add_argument("--backbone", help="registered backbone, e.g. vit, vit_small, resnet18 (see `medvit train --list`)")
    p.add_argument("--patch", type=int, choices=[8, 16, 32, 4, 2],
                   help="ViT patch size (default: the backbone's own: 16 for vit*, 4 for the seed ViTs)")
    p.add_argument("--out", help="run directory (default: runs/<backbone>-<time>)")
    p.add_argument("--fold", type=int, help="validation fold (the rest is trained on)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-wall", type=float, help="stop after this many seconds of training")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=argparse_size, metavar="S|HxW",
                   help="model input canvas, a side (256) or HxW (512x256) (default: the data's own: the "
                        "ingest canvas, 32 CIFAR-10, 28 MNIST)")
    p.add_argument("--seed", type=int)
    p.add_argument("--pretrained", action="store_true", help="start from timm's ImageNet weights (needs the hub)")
    p.add_argument("--weights", "--init", dest="weights", metavar="FILE_OR_RUN_DIR",
                   help="start from a state dict on disk (3->1 channel stem adapted) or a run folder, e.g. a "
                        "`medvit pretrain` run (--init RUN_DIR: its encoder, a fresh classifier)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    p.add_argument("--list", action="store_true", help="list the registered backbones and exit")
    tracking.add_flags(p)
    p.set_defaults(func=run)


def flag_overrides(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """`key=value` overrides from the flags that were given (a canvas as "HxW"), before the user's own."""
    from medvit.canvas import size_text

    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    return [f"{flags[name]}={size_text(v) if name == 'image_size' else v}" for name, v in given.items()]


def build_config(args: argparse.Namespace):
    from medvit.config import load_config

    flags = flag_overrides(args, FLAGS)
    if args.pretrained:
        flags.append("model.pretrained=true")
    if args.resume:
        return load_config(Path(args.resume) / "config.yaml", flags + list(args.overrides))
    return load_config(args.config, flags + list(args.overrides))


def run(args: argparse.Namespace) -> int:
    if args.list:
        from medvit.models import list_backbones

        print("\n".join(list_backbones()))
        return 0
    track = tracking.from_args(args)  # before build_config: a key=value after a bare --track is an override
    cfg = build_config(args)
    if args.print_config:
        import yaml

        from medvit.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from medvit.train import fit

    run_dir = Path(args.resume or cfg.train.out or _default_run_dir(cfg))
    cfg.train.out = str(run_dir)
    summary = fit(cfg, run_dir, resume=bool(args.resume), track=track)
    print(f"run: {summary['run_dir']}  stopped: {summary['stop_reason']}  best {cfg.train.monitor}: {summary['best']}")
    return 0


def _default_run_dir(cfg) -> Path:
    from medvit.models import backbone_default, backbone_kind

    name = cfg.model.backbone
    size = cfg.model.patch_size or backbone_default(name, "patch_size")
    patch = f"-p{size}" if backbone_kind(name) == "vit" and size else ""
    return Path("runs") / f"{cfg.model.backbone}{patch}-{time.strftime('%Y%m%d-%H%M%S')}"
