"""What the one trainer optimises: supervised classification, or a self-supervised objective.

The trainer (medvit.train.loop) owns the machinery: epochs, steps, stopping rules, the
optimizer step, checkpoints and exact resume, DDP, logs. An `Objective` owns only what differs:

- `data(cfg)`: the datasets (supervised: labelled folds; self-supervised: unlabelled views);
- `build(trainer)`: adapt `trainer.model` and return the module the optimizer trains and DDP
  wraps (supervised: the model itself; MAE: encoder + decoder; DINO: student + head);
- `loss(trainer, images, labels)`: a forward pass -> (loss tensor, {"n", "errors"});
- `after_step(trainer)`: after each optimizer step (DINO: the EMA teacher);
- `validate(trainer)`: the epoch row's validation columns;
- `end_epoch(trainer, row)`: after an epoch is logged (MAE: the reconstruction figure);
- `state_dict()` / `load_state_dict()`: its own state in every checkpoint (teacher, centre);
- `payload()`: plain keys added to checkpoints (the pretraining provenance).
"""
from __future__ import annotations

from typing import Any

from medvit.config import Config


class Objective:
    """Supervised classification: today's behaviour of the trainer, unchanged."""

    name = "supervised"
    classifies = True  # train_error is meaningful (self-supervised objectives: False, the column stays empty)

    def data(self, cfg: Config):
        from medvit.train import setup

        return setup.build_data(cfg)

    def build(self, trainer):
        return trainer.model

    def loss(self, trainer, images, labels) -> tuple[Any, dict]:
        from medvit.train.steps import autocast, loss_and_probs

        dev = trainer.device
        images = images.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        with autocast(dev, trainer.amp):
            logits = trainer.ddp_model(images)
        loss, _, pred = loss_and_probs(logits, labels, trainer.binary, trainer.cfg.train.label_smoothing)
        return loss, {"n": int(labels.numel()), "errors": int((pred != labels).sum())}

    def after_step(self, trainer) -> None:
        pass

    def validate(self, trainer) -> dict:
        """val_loss / val_accuracy / val_auc on the validation fold; sets the trainer's threshold."""
        from medvit.metrics import classification_metrics
        from medvit.train.steps import predict_loader

        ids, labels, probs, val_loss = predict_loader(
            trainer, trainer._loader(trainer.data.val, batch_size=trainer.cfg.data.batch_size))
        m = classification_metrics(labels, probs, loss=val_loss, n_boot=0)
        if m.get("best_f1_threshold") is not None:  # the validation operating point predict uses
            trainer.threshold = m["best_f1_threshold"]
        return {"val_loss": m["loss"], "val_accuracy": m["accuracy"],
                "val_auc": m.get("auc", m.get("auc_macro_ovr"))}

    def end_epoch(self, trainer, row: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def payload(self) -> dict:
        return {}


METHODS = ("mae", "dino", "simclr")


def build_objective(cfg: Config) -> Objective:
    """The objective `cfg.pretrain.method` names ("" = supervised)."""
    from medvit.errors import ConfigError, suggest

    method = cfg.pretrain.method
    if not method:
        return Objective()
    if method not in METHODS:
        raise ConfigError(f"pretrain.method {method!r}: {suggest(method, METHODS)}")
    from medvit import pretrain

    return pretrain.objective(method, cfg)
