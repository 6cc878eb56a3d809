"""Builders: config -> datasets, samplers, model, optimizer, schedule. Nothing here knows a model's name."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from medvit.config import Config
from medvit.errors import ConfigError


@dataclass
class DataBundle:
    train: Any  # torch Dataset: (image (C,H,W), label) items, .labels, .ids, .num_classes, .in_chans
    val: Any  # picks checkpoints
    num_classes: int
    in_chans: int
    test: Any = None  # scored once, at the end (CIFAR-10/MNIST test files; mammo `ingest --test-share`)


NATIVE_SIZES = {"cifar10": 32, "mnist": 28}


def ingest_size_of(cfg: Config) -> tuple[int, int] | None:
    """The canvas (H, W) the training mammograms were ingested at (None for CIFAR-10 / MNIST)."""
    if cfg.data.kind != "mammo":
        return None
    from medvit.ingest import ingest_size

    return ingest_size(cfg.data.dir)


# ingest.json settings that decide which image lands in which fold / split
SPLIT_SETTINGS = ("settings_key", "labels", "label_column", "folds", "seed", "test_share")


def split_fingerprint(data_dir) -> str:
    """sha1 over (image_id, fold, split) of the labelled ok rows of DATA_DIR's manifest: two runs
    with the same fingerprint and fold trained, validated and are tested on the same images."""
    import hashlib

    from medvit.data.datasets import read_manifest

    frame = read_manifest(data_dir)
    frame = frame[(frame["status"] == "ok") & frame["label"].notna()]
    lines = sorted(f"{i}\t{f}\t{s}" for i, f, s in zip(frame["image_id"], frame["fold"], frame["split"]))
    return hashlib.sha1("\n".join(lines).encode("utf-8")).hexdigest()


def data_identity(cfg: Config) -> dict:
    """What a run was trained and selected on, saved in its checkpoints so `compare` can refuse
    runs trained on different ingests or folds: data kind and folder, fold (mammograms),
    the ingest settings that place images in folds / the test split, and `split_fingerprint`."""
    from pathlib import Path

    from medvit.ingest import ingest_settings

    d = cfg.data
    ident: dict = {"kind": d.kind, "dir": str(Path(d.dir).resolve())}
    if d.kind != "mammo":
        return ident
    settings = ingest_settings(d.dir)
    ident.update(fold=int(d.fold), ingest={k: settings.get(k) for k in SPLIT_SETTINGS},
                 split_sha1=split_fingerprint(d.dir))
    return ident


def resolve_sizes(cfg: Config, ingest_size: tuple[int, int] | None) -> Config:
    """A copy of `cfg` with data.image_size set: as given, else the data's own canvas
    (`ingest_size` for mammograms, 32 for CIFAR-10, 28 for MNIST); a square as its side, else
    "HxW". The run saves this copy."""
    import copy

    from medvit.canvas import compact, size_text

    cfg = copy.deepcopy(cfg)
    size = cfg.data.image_size or ingest_size or NATIVE_SIZES.get(cfg.data.kind, 32)
    size = compact(size)
    cfg.data.image_size = size if isinstance(size, int) else size_text(size)
    return cfg


def aspect_note(cfg: Config, ingest_size: tuple[int, int] | None) -> str | None:
    """A warning line when the model canvas has another aspect than the ingest canvas (a square
    `--image-size 256` on a 512x256 ingest stretches every image by 2x), else None."""
    from medvit.canvas import parse_size, size_text

    if not ingest_size:
        return None
    (h, w), (ih, iw) = parse_size(cfg.data.image_size), parse_size(ingest_size)
    if abs(h / w - ih / iw) <= 0.05 * ih / iw:
        return None
    return (f"note: data.image_size {size_text((h, w))} has another aspect than the ingest canvas "
            f"{size_text((ih, iw))}: images are stretched (e.g. --image-size {size_text((h, h * iw // ih))} keeps it)")


def build_data(cfg: Config) -> DataBundle:
    """The one place that knows the data kinds: mammography manifest, CIFAR-10 or MNIST files."""
    from medvit.data.transforms import build_transform

    d = cfg.data
    if d.kind == "mammo":
        from medvit.data.datasets import mammo_splits, mammo_test_set

        if d.train_size or d.label_noise or d.classes or d.channels:
            raise ConfigError("data.train_size, data.label_noise, data.classes and data.channels (seed studies) "
                              "are for cifar10/mnist; use folds for mammograms")
        train, val = mammo_splits(
            d.dir, d.fold, image_size=d.image_size,
            train_transform=build_transform(d.augment, train=True),
            val_transform=build_transform(d.augment, train=False),
            seed=cfg.train.seed,
        )  # the test split of `ingest --test-share` (None without one): scored once, at the end
        test = mammo_test_set(d.dir, d.image_size, build_transform(d.augment, train=False), cfg.train.seed)
        if d.label_fraction != 1.0:  # label-efficiency study: fewer labelled patients, same val / test
            from medvit.pretrain.data import patient_subset

            train = patient_subset(train, d.label_fraction, cfg.train.seed)
    elif d.kind in ("cifar10", "mnist"):
        from medvit.data.benchmarks import benchmark_splits

        if d.augment:
            raise ConfigError("data.augment (albumentations) is applied to mammograms only; "
                              "remove it for cifar10/mnist")

        train, val, test = benchmark_splits(
            d.kind, d.dir, image_size=d.image_size, noise=d.label_noise,
            seed=cfg.train.seed, train_size=d.train_size or None, val_size=d.val_size,
            classes=d.classes or None, channels=d.channels, verify_md5=d.verify_md5,
        )
    else:
        raise ConfigError(f"data.kind {d.kind!r}: valid: cifar10, mammo, mnist")
    return DataBundle(train, val, train.num_classes, train.in_chans, test)


def uses_bce(cfg: Config, num_classes: int) -> bool:
    if cfg.train.loss not in ("auto", "bce", "ce"):
        raise ConfigError(f"train.loss {cfg.train.loss!r}: valid: auto, bce, ce")
    if cfg.train.loss == "bce" and num_classes != 2:
        raise ConfigError(f"train.loss=bce needs 2 classes, the data has {num_classes}")
    return cfg.train.loss == "bce" or (cfg.train.loss == "auto" and num_classes == 2)


def build_sampler(cfg: Config, labels, rank: int, world: int, binary: bool):
    from medvit.data.samplers import BalancedBatchSampler, ShuffleBatchSampler

    d = cfg.data
    if d.balanced and binary:
        # drop_last=False: every negative is used each epoch (the last batch is smaller)
        return BalancedBatchSampler(labels, d.batch_size, pos_fraction=d.pos_fraction,
                                    seed=cfg.train.seed, num_replicas=world, rank=rank, drop_last=False)
    return ShuffleBatchSampler(len(labels), d.batch_size, seed=cfg.train.seed,
                               num_replicas=world, rank=rank, drop_last=True)


def model_spec(cfg: Config, num_classes: int, in_chans: int, binary: bool) -> dict:
    """What create_backbone needs; saved in every checkpoint so predict/evaluate rebuild the model."""
    from medvit.canvas import compact
    from medvit.models import backbone_default, backbone_kind

    m = cfg.model
    kwargs: dict = {
        "num_classes": 1 if binary else num_classes,
        "in_chans": in_chans,
        "img_size": compact(cfg.data.image_size),  # a side, or (H, W)
        **m.kwargs,
    }
    if m.drop_rate is not None:
        kwargs["drop_rate"] = m.drop_rate
    patch = m.patch_size or backbone_default(m.backbone, "patch_size")
    if backbone_kind(m.backbone) == "vit" and patch is not None:
        kwargs["patch_size"] = patch  # always in the spec: a checkpoint's (H x W) token grid is known
    return {"name": m.backbone, "kwargs": kwargs}


def build_model(cfg: Config, spec: dict):
    from medvit.models import create_backbone

    extra = {}
    if cfg.model.pretrained:
        extra["pretrained"] = True
    if cfg.model.weights:
        extra["weights"] = init_weights_file(cfg.model.weights)
    model = create_backbone(spec["name"], **spec["kwargs"], **extra)
    if cfg.train.freeze_backbone:
        freeze_backbone(model)
    return model


def init_weights_file(weights: str):
    """model.weights as a file: a run folder (`medvit pretrain` / `train` output) means its last.pt."""
    from pathlib import Path

    from medvit.train.checkpoint import resolve_checkpoint

    return resolve_checkpoint(weights, "last") if Path(weights).is_dir() else weights


def init_provenance(cfg: Config) -> dict | None:
    """Where the starting weights came from: {"weights": file, plus the `pretrain` record of a
    `medvit pretrain` run (method, images, ...)}; None when training from scratch."""
    if not cfg.model.weights:
        return {"pretrained": "imagenet (timm)"} if cfg.model.pretrained else None
    from medvit.train.checkpoint import load_checkpoint

    path = init_weights_file(cfg.model.weights)
    record: dict = {"weights": str(path)}
    if str(path).endswith(".pt"):
        try:
            record.update(load_checkpoint(path, mmap=True).get("pretrain") or {})
        except Exception:  # a foreign state dict: create_backbone has read it, so it is a state dict
            pass
    return record


def train_mode(model, cfg: Config) -> None:
    """model.train() for an epoch; with train.freeze_backbone (linear probe) only the classifier is in
    train mode: the frozen backbone stays in eval mode (BatchNorm uses its loaded statistics, dropout
    and drop-path are off), so the head is trained on exactly the features it is scored on."""
    if not cfg.train.freeze_backbone:
        model.train()
        return
    from medvit.models.registry import _classifier_prefix

    model.eval()
    model.get_submodule(_classifier_prefix(model)).train()


def freeze_backbone(model) -> None:
    """Linear probe: only the classifier trains; BatchNorm running statistics stay as loaded
    (momentum 0; the backbone also stays in eval mode, `train_mode`), so the frozen features are
    those of the pretrained network."""
    import torch

    from medvit.models.registry import _classifier_prefix

    head = _classifier_prefix(model) + "."
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(head))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0


def build_optimizer(cfg: Config, model):
    import torch

    o = cfg.optim
    lr = o.lr
    if o.width_scaled_lr:  # seed 000, eq. 5: eta_eff = eta / h, so eta = eta_eff * h
        width = cfg.model.kwargs.get("width")
        if not width:
            raise ConfigError("optim.width_scaled_lr needs model.kwargs.width (the width h of seed 000)")
        lr = o.lr * width
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.layer_decay:
        groups = layer_decay_groups(model, o.weight_decay, o.layer_decay, lr)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
    raise ConfigError(f"optim.name {o.name!r}: valid: adamw, sgd")


def layer_decay_groups(model, weight_decay: float, layer_decay: float, lr: float) -> list[dict]:
    """timm's layer-wise lr decay (MAE / BEiT fine-tuning): block i of n gets lr * decay**(n - i);
    each group's lr is set here, so the schedule scales it like any other."""
    from medvit._compat import import_timm

    import_timm()
    from timm.optim import param_groups_layer_decay

    if not 0 < layer_decay <= 1:
        raise ConfigError(f"optim.layer_decay {layer_decay}: a factor in (0, 1], e.g. 0.75; 0 = off")
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
    for g in groups:
        g["lr"] = lr * g.pop("lr_scale", 1.0)
        g.pop("param_names", None)
    return groups


def lr_factor(cfg: Config, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base lr at an optimizer step: linear warmup, then cosine/step/constant."""
    s = cfg.schedule
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if s.name == "constant":
        return 1.0
    if s.name == "step":
        epoch = step // steps_per_epoch
        if s.milestones:
            return s.gamma ** sum(epoch >= int(m) for m in s.milestones)
        return s.gamma ** (epoch // max(s.step_epochs, 1))
    if s.name == "cosine":
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    raise ConfigError(f"schedule.name {s.name!r}: valid: constant, cosine, step")


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    import torch

    # The schedule spans train.epochs; max_steps, max_wall and flat_epochs are stopping rules
    # (seed 000), so stopping early never changes the learning rate of the steps that ran.
    total = cfg.train.epochs * steps_per_epoch
    lr_factor(cfg, 0, steps_per_epoch, total)  # fail early on a bad schedule name
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, total))


def pick_device(name: str, local_rank: int = 0):
    import torch

    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def amp_dtype(cfg: Config, device):
    """auto: bf16 on a GPU that has it, otherwise full precision (CPU autocast rarely pays off)."""
    import torch

    mode = cfg.train.amp
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode in ("auto", "bf16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    raise ConfigError(f"train.amp {mode!r}: valid: auto, bf16, fp16, off")
