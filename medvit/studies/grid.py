"""The seed studies as grids of independent training runs: which studies exist, how a study YAML
(`study:` section + trainer sections, with `base:`) and the command's budget flags expand into
one resolved trainer config per run, and each run's stable id (its config hash)."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from medvit.canvas import size_text
from medvit.config import (CONFIG_DIR, config_from_dict, config_to_dict, deep_merge, parse_overrides,
                           read_yaml_with_bases)
from medvit.errors import ConfigError, suggest

# swept axis -> the trainer config key it sets
AXES = {"p_train": "data.train_size", "width": "model.kwargs.width", "patch": "model.patch_size",
        "heads": "model.kwargs.heads", "layers": "model.kwargs.depth", "fraction": "data.label_fraction",
        "none": None}


@dataclass(frozen=True)
class StudyDef:
    name: str
    summary: str
    axis: str  # what --points sets

    @property
    def config(self) -> Path:
        return CONFIG_DIR / f"study_{self.name.replace('-', '_')}.yaml"


STUDIES = {s.name: s for s in [
    StudyDef("vit-vs-cnn", "003: ViT (embed 256, MLP 512, 8 heads, 6 layers, patch 4, dropout 0.2) vs the "
             "VGG-like CNN with BatchNorm on CIFAR-10; train/val curves, test loss + accuracy table", "none"),
    StudyDef("patch-size", "002 Table 1: the same ViT with patch 2 / 4 / 8 on CIFAR-10, 50 epochs; training "
             "time, train/test accuracy and loss", "patch"),
    StudyDef("double-descent", "000 figs 8-11: width sweep (C1 / h_embed) x label noise 0/10/20% x seeds; "
             "train and test error vs width, peak width per noise", "width"),
    StudyDef("learning-curve", "000 fig 12: p_train sweep (nested subsets) x seeds, trained to flat train "
             "error; fit eps_test ~ p^alpha with CI; CNN (C1=10) vs ViT (h=128, H=1, L=1)", "p_train"),
    StudyDef("heads-layers", "000 figs 13-15: learning curves for ViT heads H and layers L (--points), and "
             "(H, L) combinations against the CNN; alpha per variant", "heads"),
    StudyDef("mammo-patch", "002 section VI: the mammography ViT with patch 32 / 16 / 8 on an ingested "
             "folder (--data); test AUC with 95% CI per patch size", "patch"),
    StudyDef("label-efficiency", "issue 15: scratch vs `medvit pretrain` encoders (--pretrained) at label "
             "fractions of the training patients; test AUC with CI, paired DeLong per fraction", "fraction"),
]}


@dataclass
class StudySettings:
    """The `study:` section of a study YAML."""

    seeds: int = 1
    points: list = field(default_factory=list)
    # label-noise levels crossed with the grid (double descent); None = leave data.label_noise
    noise: Optional[list] = None
    arms: dict = field(default_factory=dict)  # arm name -> trainer-config overrides (models, optimizers)
    checkpoint: str = "last"  # scored at the end: last (seed 000: no early stopping) | best (by train.monitor)
    cpus_per_run: float = 1.0  # Ray resources each run asks for; also its torch threads
    gpus_per_run: Any = "auto"  # auto: 1 when the Ray cluster has GPUs, else 0; or a number (fractions pack runs)
    n_boot: int = 1000  # bootstrap resamples of the test AUC CI (two-class data)
    local_cpus: int = 0  # CPUs of the local Ray started when no --address is given; 0 = all
    # heads-layers only
    sweep: list = field(default_factory=lambda: ["heads", "layers", "combined"])
    layers: list = field(default_factory=list)  # L values of the layers sweep (--points sets them when sweep=[layers])
    p_train: list = field(default_factory=list)
    combined: list = field(default_factory=list)  # [[H, L], ...] ViT variants compared with the CNN
    # label-efficiency only: `medvit pretrain` run folders; each gives a pretrained arm and a scratch arm
    pretrained: list = field(default_factory=list)


@dataclass
class RunSpec:
    study: str
    arm: str
    axis: str
    point: Any
    noise: Optional[float]
    seed: int
    config: dict  # resolved trainer config (train.out set)
    run_id: str
    group: str = ""  # heads-layers: the sweeps the arm belongs to, e.g. "heads|combined"

    @property
    def run_dir(self) -> Path:
        return Path(self.config["train"]["out"])


def load_study(name: str, config: str | Path | None = None, overrides: list[str] = ()) -> tuple[StudySettings, dict]:
    """(study settings, trainer-config dict without `study`) from the study's YAML and overrides
    (`study.seeds=2`, `train.max_steps=100`, ...)."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}: {suggest(name, STUDIES)}")
    data = read_yaml_with_bases(config or STUDIES[name].config)
    data = deep_merge(data, parse_overrides(overrides))
    section = data.pop("study", {}) or {}
    names = set(StudySettings.__dataclass_fields__)
    for key in section:
        if key not in names:
            raise ConfigError(f"unknown config key 'study.{key}': {suggest(key, names)}")
    settings = StudySettings(**section)
    if settings.checkpoint not in ("last", "best"):
        raise ConfigError(f"study.checkpoint {settings.checkpoint!r}: valid: best, last")
    if name == "label-efficiency":  # no runs at all until --pretrained names some (run_grid says so)
        settings.arms = pretrained_arms(settings.pretrained, settings.arms)
    elif not settings.arms:
        raise ConfigError(f"study {name}: no arms (study.arms: name -> model/optim settings) in its config")
    config_from_dict(data)  # fail early on a bad trainer key
    return settings, data


def pretrained_arms(runs: list, arms: dict) -> dict:
    """label-efficiency: for each pretraining run, an arm fine-tuning its encoder ("<method>-<backbone>")
    and a scratch arm of the same backbone, patch and canvas ("scratch-<backbone>"); `arms` are kept."""
    from medvit.config import load_config

    out = dict(arms)
    for run in runs:
        path = Path(run).resolve()
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path}: not a `medvit pretrain` run folder (no config.yaml)")
        cfg = load_config(path / "config.yaml")
        if not cfg.pretrain.method:
            raise ConfigError(f"{path}: a supervised run, not a `medvit pretrain` run")
        m = cfg.model
        canvas = f"-{size_text(cfg.data.image_size)}" if cfg.data.image_size else ""
        tag = m.backbone + (f"-p{m.patch_size}" if m.patch_size else "") + canvas  # one scratch arm per canvas
        model = {"backbone": m.backbone, "patch_size": m.patch_size}
        same = {"data": {"image_size": cfg.data.image_size}}
        out[f"scratch-{tag}"] = {"model": model, **same, "group": tag}
        name = f"{cfg.pretrain.method}-{tag}"
        name = f"{name}-{path.name}" if name in out else name
        out[name] = {"model": {**model, "weights": str(path)}, **same, "group": tag}
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _arms(name: str, s: StudySettings) -> list[tuple[str, dict, str, list, str]]:
    """(arm name, overrides, axis, points, group) for every arm of the study; group names the
    heads-layers sweeps an arm belongs to ("heads|combined"), "" elsewhere."""
    axis = STUDIES[name].axis
    if axis == "none" and s.points:
        raise ConfigError(f"study {name} sweeps no axis: drop --points / study.points")
    if name != "heads-layers":  # an arm may carry its own `points` (e.g. CNN and ViT widths); --points wins
        out = []
        for arm, over in s.arms.items():
            if over is None:  # `study.arms.vit=null` drops an inherited arm
                continue
            over = dict(over)
            own = over.pop("points", None)
            group = str(over.pop("group", "") or "")  # label-efficiency: the backbone pairing the arms
            out.append((arm, over, axis, [None] if axis == "none" else list(s.points or own or []), group))
        return out
    if not s.arms.get("vit"):
        raise ConfigError("heads-layers: study.arms needs a 'vit' arm (and 'cnn' for the combined comparison)")
    out = []
    vit = s.arms["vit"]
    for sweep in s.sweep:
        if sweep == "heads":
            out += [(f"vit_H{h}_L1", deep_merge(vit, {"model": {"kwargs": {"heads": int(h), "depth": 1}}}),
                     "p_train", list(s.p_train), sweep) for h in s.points]
        elif sweep == "layers":
            layers = s.points if list(s.sweep) == ["layers"] and s.points else s.layers
            out += [(f"vit_H1_L{n}", deep_merge(vit, {"model": {"kwargs": {"heads": 1, "depth": int(n)}}}),
                     "p_train", list(s.p_train), sweep) for n in layers]
        elif sweep == "combined":
            if s.arms.get("cnn"):
                out.append(("cnn", s.arms["cnn"], "p_train", list(s.p_train), sweep))
            out += [(f"vit_H{h}_L{n}", deep_merge(vit, {"model": {"kwargs": {"heads": int(h), "depth": int(n)}}}),
                     "p_train", list(s.p_train), sweep) for h, n in s.combined]
        else:
            raise ConfigError(f"study.sweep {sweep!r}: valid: heads, layers, combined")
    seen: dict[str, tuple] = {}
    for arm in out:  # the same variant from two sweeps (e.g. H1 L1) runs once, in both groups
        first = seen.setdefault(arm[0], arm)
        if first is not arm and arm[4] not in first[4].split("|"):
            seen[arm[0]] = (*first[:4], f"{first[4]}|{arm[4]}")
    return list(seen.values())


def config_hash(cfg: dict) -> str:
    cfg = copy.deepcopy(cfg)
    cfg["train"].pop("out", None)
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def expand(name: str, settings: StudySettings, base: dict, out: str | Path) -> list[RunSpec]:
    """Every run of the study: arms x points x noise x seeds, each a resolved trainer config."""
    if settings.seeds < 1:
        raise ConfigError(f"--seeds {settings.seeds}: at least 1")
    runs = []
    for arm, over, axis, points, group in _arms(name, settings):
        if not points:
            raise ConfigError(f"study {name}: no points for arm {arm} (give --points"
                              f"{' or study.p_train' if name == 'heads-layers' else ''})")
        for point in points:
            for noise in (settings.noise if settings.noise is not None else [None]):
                for seed in range(settings.seeds):
                    tree = copy.deepcopy(deep_merge(base, over))  # _set must not touch the shared base
                    if AXES[axis]:
                        _set(tree, AXES[axis], point)
                    if noise is not None:
                        _set(tree, "data.label_noise", float(noise))
                    _set(tree, "train.seed", seed)
                    size, batch = tree.get("data", {}).get("train_size"), tree.get("data", {}).get("batch_size")
                    if size and batch and batch > size:  # p_train below the batch: one full-batch step per epoch
                        _set(tree, "data.batch_size", int(size))
                    _set(tree, "train.out", "")
                    cfg = config_to_dict(config_from_dict(tree))
                    cfg["data"]["dir"] = str(Path(cfg["data"]["dir"]).resolve())  # workers may start elsewhere
                    label = "-".join(x for x in (arm, f"{axis}{point}" if AXES[axis] else "",
                                                 f"noise{noise:g}" if noise is not None else "", f"seed{seed}") if x)
                    run_id = f"{label}-{config_hash(cfg)}"
                    cfg["train"]["out"] = str(Path(out).resolve() / "runs" / run_id)
                    runs.append(RunSpec(name, arm, axis, point, None if noise is None else float(noise), seed,
                                        cfg, run_id, group))
    return runs


def parse_points(text: str) -> list:
    """'128,256,512' -> [128, 256, 512] (ints where integral)."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError as e:
            raise ConfigError(f"--points {text!r}: expected numbers separated by commas, e.g. 128,256,512") from e
        out.append(int(value) if value.is_integer() else value)
    return out
