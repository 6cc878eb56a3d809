"""The one trainer: CIFAR-10, MNIST and mammograms, ViTs and CNNs alike.

A run directory holds config.yaml, metrics_step.csv, metrics_epoch.csv, train.log and
checkpoints/{best,last}.pt. Resume restores model, optimizer, scheduler, scaler, EMA, sampler
position, RNG and counters, so an interrupted run ends exactly where an uninterrupted one does.
"""
from __future__ import annotations

import contextlib

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from medvit.config import Config, config_to_dict, save_config
from medvit.errors import ConfigError, shorten
from medvit.train import logs, setup
from medvit.canvas import size_text
from medvit.train.checkpoint import count_parameters, load_checkpoint, save_checkpoint
from medvit.tracking import Tracking
from medvit.train.distributed import Dist, all_sum, barrier, init_distributed, shutdown
from medvit.train.objectives import build_objective
from medvit.train.steps import train_step
from medvit.workers import worker_context


@dataclass
class Counters:
    """Everything that says where training stands; saved in every checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps in total
    elapsed: float = 0.0  # training wall seconds across resumes
    best: float | None = None
    epoch_loss: float = 0.0  # running sums of the current epoch
    epoch_errors: int = 0
    epoch_seen: int = 0
    train_errors: list = field(default_factory=list)  # per finished epoch (flat_epochs rule)
    stop_reason: str = ""


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, track: Tracking | None = None) -> None:
        import torch

        from medvit.models import backbone_kind

        backbone_kind(cfg.model.backbone)  # an unknown name fails before any data is read
        self.ingest_size = setup.ingest_size_of(cfg)  # in checkpoints: predict/explain preprocess at it
        self.data_identity = setup.data_identity(cfg)  # in checkpoints: compare refuses mismatched runs
        self.cfg, self.run_dir = setup.resolve_sizes(cfg, self.ingest_size), Path(run_dir)
        cfg = self.cfg
        self.device = setup.pick_device(cfg.train.device)
        self.dist: Dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = setup.pick_device(cfg.train.device, self.dist.local_rank)
        torch.manual_seed(cfg.train.seed)
        self.objective = build_objective(cfg)  # supervised, or self-supervised (`medvit pretrain`)
        with warnings.catch_warnings(record=True) as data_warnings:  # e.g. data.verify_md5: false
            warnings.simplefilter("always")
            self.data = self.objective.data(cfg)
        self.binary = setup.uses_bce(cfg, self.data.num_classes)
        self.sampler = setup.build_sampler(cfg, self.data.train.labels, self.dist.rank,
                                           self.dist.world_size, self.binary)
        self.spec = setup.model_spec(cfg, self.data.num_classes, self.data.in_chans, self.binary)
        self.model = setup.build_model(cfg, self.spec).to(self.device)
        self.init = setup.init_provenance(cfg)  # which pretraining run the weights came from, if any
        self.net = self.objective.build(self)  # what is optimised: the model (+ the objective's parts)
        self.optimizer = setup.build_optimizer(cfg, self.net)
        self.scheduler = setup.build_scheduler(cfg, self.optimizer, len(self.sampler))
        self.amp = setup.amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.ema = self._build_ema()
        self.c = Counters()
        self._last_save = time.perf_counter()
        self.threshold = 0.5
        self.log = logs.RunLog(self.run_dir, enabled=self.dist.main)
        notes = [f"warning: {w.message}" for w in data_warnings] + [setup.aspect_note(cfg, self.ingest_size)]
        for note in filter(None, notes):  # into train.log, not only onto a terminal
            self.log.info(note)
        self.track = track  # MLflow tracking (medvit.tracking), started by fit() on the main rank
        if resume:
            self._restore(load_checkpoint(self.run_dir / "checkpoints" / "last.pt"))
        self.ddp_model = self._wrap_ddp()

    # ---- set-up -------------------------------------------------------------------------
    def _build_ema(self):
        if not self.cfg.train.ema:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.train.ema),
                             use_buffers=True)

    def _wrap_ddp(self):
        if not self.dist.enabled:
            return self.net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.net, device_ids=ids)

    def _loader(self, dataset, batch_sampler=None, batch_size=None):
        import torch
        from torch.utils.data import DataLoader

        # A private generator: creating the loader's iterator must not consume the global RNG,
        # or a resumed run would draw different dropout masks than an uninterrupted one.
        g = torch.Generator().manual_seed(self.cfg.train.seed + self.c.epoch)
        workers = self.cfg.data.workers
        kw = dict(num_workers=workers, generator=g, pin_memory=self.device.type == "cuda",
                  multiprocessing_context=worker_context() if workers else None,
                  collate_fn=getattr(dataset, "collate_fn", None))  # batch-by-index datasets pass batches through
        if batch_sampler is not None:
            return DataLoader(dataset, batch_sampler=batch_sampler, **kw)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kw)

    # ---- checkpoints --------------------------------------------------------------------
    def _payload(self) -> dict:
        import torch

        from medvit.models.inputs import input_norm_of

        c = self.c
        return {
            "format": "medvit-checkpoint-1",
            "model_spec": self.spec,
            "input_norm": input_norm_of(self.model),  # ImageNet weights' normalisation, else None
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "ema_state": self.ema.state_dict() if self.ema else None,
            "sampler": self.sampler.state_dict(batches_done=c.batch),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "counters": dict(vars(c)),
            "threshold": self.threshold,
            "binary": self.binary,
            "canvas": size_text(self.ingest_size) if self.ingest_size else None,  # what predict preprocesses to
            "params": count_parameters(self.model),
            "data_identity": self.data_identity,
            "config": config_to_dict(self.cfg),
            "objective": self.objective.state_dict(),
            "init": self.init,
            **self.objective.payload(),
        }

    def _restore(self, ck: dict) -> None:
        import torch

        self.model.load_state_dict(ck["model"])
        try:
            self.objective.load_state_dict(ck.get("objective") or {})
        except (KeyError, RuntimeError, ConfigError) as err:  # another objective or set-up: name the file
            raise ConfigError(f"{self.run_dir / 'checkpoints' / 'last.pt'}: cannot resume the "
                              f"{self.objective.name} objective from it ({shorten(str(err), 300)})") from None
        if self.ema and ck.get("ema_state"):
            self.ema.load_state_dict(ck["ema_state"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.sampler.load_state_dict(ck["sampler"])  # refuses a different seed, batch size or world size
        torch.set_rng_state(ck["rng_cpu"])
        if ck["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng_cuda"])
        self.c = Counters(**{**ck["counters"], "stop_reason": ""})
        self.threshold = ck["threshold"]
        self.log.trim(self.c.step, self.c.epoch, self.dist.rank)

    def _save(self, name: str) -> None:
        if name == "last":
            self._last_save = time.perf_counter()
        if self.dist.main:
            save_checkpoint(self._payload(), self.run_dir / "checkpoints" / f"{name}.pt")

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, c = self.cfg, self.c
        if self.dist.main:
            save_config(cfg, self.run_dir / "config.yaml")
            self.log.data_ids(self.data.train.ids, self.data.val.ids)
            self.log.start_tracking(self.track, cfg, self.spec, self.data_identity)
        self.log.info(f"backbone {self.spec['name']} ({count_parameters(self.model):,} "
                      f"parameters) on {self.device}, {len(self.data.train)} train / {len(self.data.val)} val images")
        t0 = time.perf_counter() - c.elapsed
        while not c.stop_reason:
            c.stop_reason = self._limit_reason(t0)
            if c.stop_reason:
                break
            self._train_epoch(t0)
            if c.batch < len(self.sampler):  # stopped inside the epoch (max_steps / max_wall)
                break
            self._end_epoch(t0)
        self.log.info(f"stopped: {c.stop_reason} (epoch {c.epoch}, step {c.step})")
        c.elapsed = time.perf_counter() - t0
        self._save("last")
        barrier(self.dist)
        summary = {"stop_reason": c.stop_reason, "epoch": c.epoch, "step": c.step, "best": c.best,
                   "run_dir": str(self.run_dir)}
        self.log.end_tracking(summary)
        shutdown(self.dist)
        return summary

    def _wall_hit(self, t0: float) -> bool:
        return bool(self.cfg.train.max_wall) and time.perf_counter() - t0 >= self.cfg.train.max_wall

    def _limit_reason(self, t0: float, wall: bool | None = None) -> str:
        """Why to stop now, or "". `wall`: max_wall as all ranks agreed on it (each has its own
        clock; one rank stopping alone would leave the others waiting in a collective)."""
        t = self.cfg.train
        if t.max_steps and self.c.step >= t.max_steps:
            return f"max_steps={t.max_steps}"
        if wall is None:
            wall = all_sum(self.dist, [self._wall_hit(t0)], self.device)[0] > 0
        if wall:
            return f"max_wall={t.max_wall:g}s"
        if self.c.epoch >= t.epochs:
            return f"epochs={t.epochs}"
        return ""

    def _train_epoch(self, t0: float) -> None:
        from medvit.progress import progress_bar

        c = self.c
        # The sampler is a pure function of (seed, epoch, rank) plus a start position, so a
        # resumed run gets exactly the batches an uninterrupted one had left.
        self.sampler.set_epoch(c.epoch)
        self.sampler.load_state_dict(self.sampler.state_dict(batches_done=c.batch))
        batches = list(self.sampler)
        self.data.train.set_epoch(c.epoch)
        setup.train_mode(self.model, self.cfg)  # the backbone stays in eval mode for a linear probe
        loader = self._loader(self.data.train, batch_sampler=batches)
        # a bar on a terminal; off one nothing here: the log's line per epoch is the progress
        with contextlib.closing(progress_bar(total=len(self.sampler), desc=f"epoch {c.epoch}", unit="batch",
                                            initial=c.batch, enabled=None if self.dist.main else False,
                                            every=0, leave=False)) as bar:  # closed on errors too
            tick, n_tick = time.perf_counter(), 0
            for batch, (images, labels) in zip(batches, loader):
                out = train_step(self, images, labels)
                bar.update(1)
                # this step over all ranks, so every rank holds (and checkpoints) the same counters
                loss_sum, errors, n, wall = all_sum(
                    self.dist, [out["loss"] * out["n"], out["errors"], out["n"], self._wall_hit(t0)], self.device)
                c.batch, c.step = c.batch + 1, c.step + 1
                c.epoch_loss += loss_sum
                c.epoch_errors += int(errors)
                c.epoch_seen += int(n)
                n_tick += int(n)
                if self.cfg.train.sample_log:
                    self.log.samples(self.dist.rank, c.epoch, c.step, [self.data.train.ids[i] for i in batch])
                if c.step % self.cfg.train.log_every == 0:
                    rate = n_tick / max(time.perf_counter() - tick, 1e-9)
                    self.log.step(c.step, c.epoch, loss_sum / max(n, 1), self.optimizer.param_groups[0]["lr"], rate)
                    tick, n_tick = time.perf_counter(), 0
                if self.cfg.train.ckpt_every and c.step % self.cfg.train.ckpt_every == 0:
                    c.elapsed = time.perf_counter() - t0
                    self._save("last")
                c.stop_reason = self._limit_reason(t0, wall > 0) if c.batch < len(self.sampler) else ""
                if c.stop_reason:
                    break

    def _end_epoch(self, t0: float) -> None:
        c = self.c
        every = self.cfg.train.val_every
        validate = bool(every) and (c.epoch + 1) % every == 0 and len(self.data.val) > 0
        row = {
            "epoch": c.epoch, "step": c.step,
            "train_loss": c.epoch_loss / max(c.epoch_seen, 1),
            "train_error": c.epoch_errors / max(c.epoch_seen, 1) if self.objective.classifies else None,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if validate:
            row.update(self.objective.validate(self))
        row["elapsed"] = time.perf_counter() - t0
        c.train_errors.append(c.epoch_errors)
        c.epoch, c.batch, c.epoch_loss, c.epoch_errors, c.epoch_seen = c.epoch + 1, 0, 0.0, 0, 0
        c.elapsed = row["elapsed"]
        if validate:
            self._update_best(row)
        self.log.epoch(row)
        self.objective.end_epoch(self, row)
        if time.perf_counter() - self._last_save >= self.cfg.train.ckpt_min_interval:
            self._save("last")  # resume is exact from any saved epoch, so skipping some only costs redone work
        flat = self.cfg.train.flat_epochs
        if (flat and self.objective.classifies and len(c.train_errors) > flat
                and len(set(c.train_errors[-flat - 1:])) == 1 and c.step >= self.cfg.train.flat_min_steps):
            c.stop_reason = f"train error unchanged for {flat} epochs"

    def _update_best(self, row: dict) -> None:
        name, value = self.cfg.train.monitor, row.get(self.cfg.train.monitor)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            # e.g. val_auc with one class in the validation fold: fall back to the loss, and say so
            self.log.info(f"epoch {row['epoch']}: {name} is undefined; judging best by val_loss")
            name = "val_loss (negated)" if self.cfg.train.monitor_mode == "max" else "val_loss"
            value = -row["val_loss"] if self.cfg.train.monitor_mode == "max" else row["val_loss"]
        sign = 1 if self.cfg.train.monitor_mode == "max" else -1
        if self.c.best is None or sign * value > sign * self.c.best:
            self.c.best = float(value)
            self._save("best")
            self.log.info(f"epoch {row['epoch']}: new best {name}={value:.4f}")


def fit(cfg: Config, run_dir: str | Path, resume: bool = False, track: Tracking | None = None) -> dict:
    """Train (or resume) one run; `track`: also log it to MLflow. Returns a small summary."""
    return run_trainer(Trainer(cfg, run_dir, resume=resume, track=track))


def run_trainer(trainer: Trainer) -> dict:
    """trainer.fit(); on an error or Ctrl-C its MLflow run (if tracked) ends FAILED / KILLED, not RUNNING."""
    try:
        return trainer.fit()
    except BaseException as err:
        trainer.log.end_tracking(None, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
