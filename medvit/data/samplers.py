"""Batch samplers with exact mid-epoch resume: class-balanced (binary) and plain shuffled, both rank-sharded.

An epoch's batches are a pure function of (seed, epoch, num_replicas, rank). The sampler also keeps
the position inside the epoch (batches yielded so far), so `state_dict()` taken mid-epoch and
`load_state_dict()` in a fresh process make `iter(sampler)` yield exactly the remaining batches.

torch's BatchSampler/DistributedSampler have no class balance and no mid-epoch position, so the
index bookkeeping is written here with numpy.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from medvit.errors import MedvitError


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(stream)])


def _wrap_to(indices: np.ndarray, size: int) -> np.ndarray:
    """`indices` repeated cyclically (or cut) to `size` elements; DistributedSampler-style padding."""
    return np.resize(indices, size)


class _ResumableBatchSampler(Sampler):
    """Epoch + position bookkeeping shared by both samplers; subclasses build one epoch's batches."""

    def __init__(self, batch_size: int, seed: int, num_replicas: int, rank: int, drop_last: bool) -> None:
        if batch_size < 1:
            raise MedvitError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise MedvitError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._start = 0  # where the next iteration starts (set by load_state_dict)
        self._pos = 0  # batches of this epoch yielded so far

    def _epoch_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (like DistributedSampler) and rewind to its first batch."""
        self.epoch = int(epoch)
        self._start = self._pos = 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        start, self._start = self._start, 0  # a resume position is used once
        self._pos = start
        for batch in batches[start:]:
            self._pos += 1
            yield batch

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Epoch and position. A trainer whose DataLoader prefetches should pass the number of
        batches it has actually consumed, since the sampler runs ahead of the training step."""
        return {
            "epoch": self.epoch,
            "batch": self._pos if batches_done is None else int(batches_done),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size", "num_replicas", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise MedvitError(
                    f"sampler state has {key}={state[key]}, this sampler has {getattr(self, key)}: "
                    "an exact resume needs the same seed, batch size, number of processes and last-batch rule")
        batch = int(state["batch"])
        if not 0 <= batch <= len(self):
            raise MedvitError(f"sampler state position {batch} is outside the epoch's {len(self)} batches")
        self.epoch = int(state["epoch"])
        self._start = self._pos = batch


class ShuffleBatchSampler(_ResumableBatchSampler):
    """Shuffled batches of range(n); with num_replicas > 1 each rank gets a disjoint shard
    (padded by wrapping so every rank has the same number of batches)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(batch_size, seed, num_replicas, rank, drop_last)
        if n < 1:
            raise MedvitError("ShuffleBatchSampler: the dataset is empty")
        self.n = int(n)
        self.per_rank = -(-self.n // self.num_replicas)  # ceil
        if len(self) == 0:
            raise MedvitError(
                f"batch_size {batch_size} is larger than the {self.per_rank} samples each of the "
                f"{num_replicas} process(es) gets and drop_last is set: lower the batch size")

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def _epoch_batches(self) -> list[list[int]]:
        perm = _rng(self.seed, self.epoch, 0).permutation(self.n)
        mine = _wrap_to(perm, self.per_rank * self.num_replicas)[self.rank::self.num_replicas]
        b = self.batch_size
        return [mine[i * b:(i + 1) * b].tolist() for i in range(len(self))]


class BalancedBatchSampler(_ResumableBatchSampler):
    """Binary class-balanced batches: each holds round(pos_fraction * B) >= 1 positives.

    An epoch is one shuffled pass over the negatives (each once; with drop_last the last, partial
    batch's negatives wait for a later epoch; without it the last batch is smaller, same ratio);
    positives are oversampled by cycling through fresh shuffles of them. With num_replicas > 1 the
    negatives are split disjointly across ranks and the positive stream is dealt out round-robin,
    so ranks draw distinct positives within each pass over them.
    """

    def __init__(self, labels, batch_size: int, pos_fraction: float = 0.25, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = True) -> None:
        super().__init__(batch_size, seed, num_replicas, rank, drop_last)
        labels = np.asarray(labels)
        extra = sorted(set(np.unique(labels).tolist()) - {0, 1})
        if extra:
            raise MedvitError(f"BalancedBatchSampler needs binary 0/1 labels, found {extra[:5]}: "
                              "use ShuffleBatchSampler (data.balanced: false) for multiclass data")
        if not 0.0 < pos_fraction < 1.0:
            raise MedvitError(f"pos_fraction must be in (0, 1), got {pos_fraction}")
        self.pos = np.flatnonzero(labels == 1)
        self.neg = np.flatnonzero(labels == 0)
        if len(self.pos) == 0:
            raise MedvitError("BalancedBatchSampler: the labels have no positives (label 1); "
                              "a balanced batch is impossible — check the manifest/fold or set data.balanced: false")
        if len(self.neg) == 0:
            raise MedvitError("BalancedBatchSampler: the labels have no negatives (label 0)")
        self.pos_fraction = float(pos_fraction)
        self.n_pos = max(1, round(self.pos_fraction * self.batch_size))
        self.n_neg = self.batch_size - self.n_pos
        if self.n_neg < 1:
            raise MedvitError(f"batch_size {batch_size} with pos_fraction {pos_fraction} leaves no room "
                              "for negatives: raise the batch size or lower pos_fraction")
        self.neg_per_rank = -(-len(self.neg) // self.num_replicas)
        if len(self) == 0:
            raise MedvitError(
                f"{len(self.neg)} negatives over {num_replicas} process(es) do not fill one batch of "
                f"{self.n_neg} negatives: lower the batch size")

    def __len__(self) -> int:
        if self.drop_last:
            return self.neg_per_rank // self.n_neg
        return -(-self.neg_per_rank // self.n_neg)

    def _batch_shapes(self) -> list[tuple[int, int]]:
        """(positives, negatives) per batch; only a last partial batch differs."""
        full, rest = divmod(self.neg_per_rank, self.n_neg)
        shapes = [(self.n_pos, self.n_neg)] * full
        if rest and not self.drop_last:
            shapes.append((max(1, round(rest * self.n_pos / self.n_neg)), rest))
        return shapes

    def _positive_stream(self, count: int) -> np.ndarray:
        """`count` positive draws: successive shuffles of all positives, each seeded by (seed, epoch, pass)."""
        passes = -(-count // len(self.pos))
        rounds = [_rng(self.seed, self.epoch, 2 + k).permutation(self.pos) for k in range(passes)]
        return np.concatenate(rounds)[:count]

    def _epoch_batches(self) -> list[list[int]]:
        r, world = self.rank, self.num_replicas
        neg = _rng(self.seed, self.epoch, 1).permutation(self.neg)
        neg = _wrap_to(neg, self.neg_per_rank * world)[r::world]
        shapes = self._batch_shapes()
        pos_total = sum(p for p, _ in shapes)
        pos = self._positive_stream(pos_total * world)[r::world]
        batches, i, j = [], 0, 0
        for p, q in shapes:
            batches.append(pos[i:i + p].tolist() + neg[j:j + q].tolist())
            i, j = i + p, j + q
        return batches
