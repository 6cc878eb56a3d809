"""Dataclass configs loaded from YAML with `base:` inheritance and dotted `key=value` overrides.

A child YAML states only what differs from its base (detectron2 style):

    base: mammo_vit16.yaml
    model: {patch_size: 8}

The dataclass defaults below ARE the CLI defaults; `configs/defaults.yaml` mirrors them (a test
keeps the two equal). Every run directory gets the resolved config, which reads back identically.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from medvit.errors import ConfigError, suggest
from medvit.io import write_text


class CanvasSize:
    """Type of `data.image_size`: one side (256) or "HxW" ("512x256", or [512, 256]), checked by
    `medvit.canvas.parse_size`; a square stays an int, anything else becomes "HxW"."""


@dataclass
class DataConfig:
    kind: str = "mammo"  # mammo | cifar10 | mnist
    dir: str = "medvit-data"  # ingest output (mammo) or the folder holding the benchmark files
    fold: int = 0  # validate on this fold, train on the rest (mammo)
    image_size: Optional[CanvasSize] = None  # model input: 256 or HxW (512x256); None = the data's own:
    #                                          the ingest canvas (mammo), 32 (CIFAR-10), 28 (MNIST)
    batch_size: int = 8
    workers: int = 2  # DataLoader worker processes
    balanced: bool = True  # class-balanced batches (binary labels)
    pos_fraction: float = 0.25  # share of positives in each balanced batch
    label_noise: float = 0.0  # fraction of training labels replaced by another class (seed 000)
    train_size: int = 0  # 0 = all; else a stratified subset (learning curves)
    label_fraction: float = 1.0  # mammo: train on this share of the training patients (nested, stratified)
    val_size: float = 0.1  # cifar10/mnist: validation carved from the training file (fraction < 1 or count); 0 = none
    classes: list = field(default_factory=list)  # cifar10/mnist: keep these classes only, e.g. [5, 8]
    channels: Optional[int] = None  # cifar10/mnist: 1 (grey) or 3; None = the data's own
    verify_md5: bool = True  # cifar10/mnist: full-size files must match the published md5s; false: warn, use them
    augment: dict = field(default_factory=dict)  # albumentations settings, see medvit.data.transforms


@dataclass
class ModelConfig:
    backbone: str = "vit"
    patch_size: Optional[int] = None  # ViTs only; None = the backbone's own (vit: 16, seed ViTs: 4)
    pretrained: bool = False
    weights: str = ""  # a state dict on disk (3->1 channel stem adapted)
    drop_rate: Optional[float] = None  # None = the backbone's own default (vit_cifar: 0.2)
    kwargs: dict = field(default_factory=dict)  # extra builder arguments, e.g. {width: 64, depth: 4}


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    width_scaled_lr: bool = False  # seed 000: SGD lr = lr_eff * width (model.kwargs.width)
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    layer_decay: float = 0.0  # layer-wise lr decay (ViT fine-tuning, timm's param_groups_layer_decay); 0 = off


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 1.0
    step_epochs: int = 30  # step schedule: multiply lr by gamma every step_epochs ...
    milestones: list = field(default_factory=list)  # ... or at these epochs, e.g. [100, 150]
    gamma: float = 0.1
    min_lr_ratio: float = 0.01


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # 0 = no limit
    max_wall: float = 0.0  # seconds; 0 = no limit
    flat_epochs: int = 0  # stop when train error is unchanged for this many epochs (seed 000's delta_err); 0 = off
    flat_min_steps: int = 0  # the flat_epochs rule applies from this step on (tiny sets: an epoch is one step, and
    #                          an early plateau of 20 steps is not convergence)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto | bf16 | fp16 | off
    ema: float = 0.0  # EMA decay of weights; 0 = off
    loss: str = "auto"  # auto (bce for 2 classes, ce otherwise) | bce | ce
    label_smoothing: float = 0.0
    monitor: str = "val_auc"  # metric choosing best.pt
    monitor_mode: str = "max"  # max | min
    log_every: int = 10  # steps between step-level log lines
    val_every: int = 1  # validate every N epochs; 0 = never (best.pt is not written; studies that score last.pt)
    ckpt_every: int = 0  # also save last.pt every N steps inside an epoch (long mammography epochs); 0 = per epoch
    # seconds: skip an epoch's last.pt when one was saved more recently (tiny epochs); 0 = every epoch
    ckpt_min_interval: float = 0.0
    freeze_backbone: bool = False  # train the classifier only (linear probe); BatchNorm statistics frozen too
    sample_log: bool = False  # each rank writes the image ids it trained on to RUN_DIR/samples/ (audit, DDP tests)
    out: str = ""  # run directory; "" = runs/<backbone>-<time>


@dataclass
class PretrainConfig:
    """Self-supervised objectives (`medvit pretrain`); method "" = supervised training."""

    method: str = ""  # "" (supervised) | mae | dino | simclr
    extra_dirs: list = field(default_factory=list)  # more ingest folders besides data.dir
    include_test: bool = False  # also use the `ingest --test-share` images (they should stay unseen)
    mask_ratio: float = 0.75  # mae
    norm_pix_loss: bool = True  # mae: per-patch normalised pixel targets
    decoder_dim: int = 128  # mae: the light decoder
    decoder_depth: int = 2
    decoder_heads: int = 4
    crop_scale: list = field(default_factory=lambda: [0.3, 1.0])  # random resized crop (share of the breast box)
    local_crops: int = 0  # dino multi-crop: extra small views (CNNs)
    out_dim: int = 1024  # dino: prototypes
    hidden_dim: int = 512  # dino / simclr projection MLP
    bottleneck_dim: int = 128  # dino head bottleneck; simclr projection output
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # dino EMA teacher, raised to 1 along a cosine
    temperature: float = 0.2  # simclr NT-Xent
    show_every: int = 1  # mae: add a reconstruction row to the figure every N epochs


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


def _yaml():
    import yaml

    return yaml


# The YAML files of the repository's top-level configs/, shipped in the package: medvit/configs is
# a link to ../configs in a checkout (and in an editable install); the wheel holds the files.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped with medvit (`demo_cnn`, `mammo_vit16`, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file by path (relative to `relative_to` for a `base:`, else to the working
    directory) or, failing that, a packaged config by name (`demo_cnn` or `demo_cnn.yaml`)."""
    given = Path(name)
    path = (relative_to / given) if relative_to is not None and not given.is_absolute() else given
    if path.is_file():
        return path.resolve()
    stem = given.name[:-5] if given.name.endswith(".yaml") else given.name
    packaged = CONFIG_DIR / f"{stem}.yaml"
    if len(given.parts) == 1 and packaged.is_file():
        return packaged.resolve()
    raise ConfigError(f"{path}: config file not found, and no packaged config is named {stem!r}: "
                      f"{suggest(stem, packaged_configs())}")


def read_yaml_with_bases(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML file (a path, or a packaged config's name), merging it over its `base:`
    (a path relative to the file, else a packaged config's name) recursively."""
    path = find_config(path)
    if path in _seen:
        raise ConfigError(f"{path}: `base:` cycle ({' -> '.join(str(p) for p in _seen)})")
    with open(path, encoding="utf-8") as f:
        data = _yaml().safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return deep_merge(read_yaml_with_bases(find_config(base, relative_to=path.parent), _seen + (path,)), data)


def deep_merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict:
    """['optim.lr=3e-4', 'data.augment={vflip: 0.5}'] -> nested dict; values parsed as YAML scalars."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. optim.lr=3e-4")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _yaml().safe_load(raw) if raw.strip() else ""
    return tree


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return value coerced to the field's type, or raise naming the key."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is CanvasSize:
        from medvit.canvas import parse_size

        try:
            h, w = parse_size(value, key)
        except ValueError as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
        return h if h == w else f"{h}x{w}"
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool, dict, list) and isinstance(value, hint):
        return value
    raise ConfigError(f"config key {key!r}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key {full!r}: {suggest(key, names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r}: expected a section (mapping), got {value!r}")
            kwargs[key] = _build(hint, value, f"{full}.")
        else:
            kwargs[key] = _check_type(full, value, hint)
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'seed': 0}} -> {'train.seed': 0} (dotted keys, as overrides spell them); empty
    dicts kept as values. Used for MLflow params and for naming config differences."""
    out: dict = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file (with bases) <- dotted overrides."""
    data = read_yaml_with_bases(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides))
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return write_text(path, _yaml().safe_dump(config_to_dict(cfg), sort_keys=False))
