"""One training step and one pass of inference, shared by the trainer, evaluate and the benchmarks."""
from __future__ import annotations

import contextlib


def autocast(device, dtype):
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def loss_and_probs(logits, labels, binary: bool, label_smoothing: float = 0.0):
    """BCE on one logit for two classes, cross-entropy otherwise. Returns (loss, probs, predictions)."""
    import torch.nn.functional as F

    logits = logits.float()
    if binary:
        logit = logits.reshape(-1)
        target = labels.float() * (1 - label_smoothing) + 0.5 * label_smoothing
        loss = F.binary_cross_entropy_with_logits(logit, target)
        probs = logit.sigmoid()
        return loss, probs, (probs >= 0.5).long()
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    probs = logits.softmax(dim=1)
    return loss, probs, probs.argmax(dim=1)


def train_step(trainer, images, labels) -> dict:
    """The objective's forward and loss, then backward, clip, step, schedule, EMA (and the
    objective's own after-step update). Returns plain numbers for the logs."""
    import torch

    loss, out = trainer.objective.loss(trainer, images, labels)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    if trainer.cfg.optim.grad_clip:
        trainer.scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.net.parameters(), trainer.cfg.optim.grad_clip)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    if trainer.ema is not None:
        trainer.ema.update_parameters(trainer.model)
    trainer.objective.after_step(trainer)
    return {"loss": float(loss.detach()), **out}


def predict_loader(trainer, loader):
    """Run the (EMA, if any) model over a loader: ids, labels, probs (N,) or (N,C), mean loss."""
    model = trainer.ema.module if trainer.ema is not None else trainer.model
    return predict(model, loader, trainer.device, trainer.amp, trainer.binary)


def predict(model, loader, device, amp_dtype, binary: bool):
    import numpy as np
    import torch

    model.eval()
    labels_all, probs_all, loss_sum, n = [], [], 0.0, 0
    with torch.inference_mode():
        for images, labels in loader:
            with autocast(device, amp_dtype):
                logits = model(images.to(device, non_blocking=True))
            labels = labels.to(device)
            known = labels >= 0  # unlabelled items (label -1) get probabilities but no loss
            if known.any():
                loss, _, _ = loss_and_probs(logits[known], labels[known], binary)
                loss_sum += float(loss) * int(known.sum())
                n += int(known.sum())
            _, probs, _ = loss_and_probs(logits, labels.clamp(min=0), binary)
            labels_all.append(labels.cpu().numpy())
            probs_all.append(probs.float().cpu().numpy())
    ids = list(getattr(loader.dataset, "ids", range(sum(len(x) for x in labels_all))))
    return ids, np.concatenate(labels_all), np.concatenate(probs_all), loss_sum / max(n, 1)
