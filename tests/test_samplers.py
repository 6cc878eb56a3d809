"""Balanced and shuffled batch samplers: balance, coverage, determinism, exact resume, rank sharding."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medvit.data.samplers import BalancedBatchSampler, ShuffleBatchSampler
from medvit.errors import MedvitError


def binary_labels(n_neg=100, n_pos=7, seed=0):
    labels = np.array([0] * n_neg + [1] * n_pos)
    return np.random.default_rng(seed).permutation(labels)


# ---------------------------------------------------------------- balanced

@pytest.mark.parametrize("batch_size,frac", [(8, 0.25), (10, 0.5), (4, 0.1)])
def test_balanced_ratio_in_every_batch(batch_size, frac):
    labels = binary_labels()
    s = BalancedBatchSampler(labels, batch_size, pos_fraction=frac, seed=1)
    want_pos = max(1, round(frac * batch_size))
    batches = list(s)
    assert len(batches) == len(s) == 100 // (batch_size - want_pos)
    for b in batches:
        assert len(b) == batch_size
        assert sum(labels[b]) == want_pos >= 1


def test_balanced_each_negative_once_per_epoch():
    labels = binary_labels(n_neg=100, n_pos=7)
    neg = set(np.flatnonzero(labels == 0).tolist())
    # without drop_last: every negative exactly once, the last (smaller) batch still has a positive
    s = BalancedBatchSampler(labels, 8, pos_fraction=0.25, drop_last=False)
    drawn = [i for b in s for i in b if labels[i] == 0]
    assert Counter(drawn) == Counter(neg)
    assert sum(labels[list(s)[-1]]) >= 1
    # with drop_last: no negative twice, and only the partial batch's worth is left for another epoch
    s = BalancedBatchSampler(labels, 8, pos_fraction=0.25, drop_last=True)
    drawn = [i for b in s for i in b if labels[i] == 0]
    assert len(drawn) == len(set(drawn)) == 96 and set(drawn) <= neg


def test_positives_are_oversampled_evenly():
    labels = binary_labels(n_neg=120, n_pos=6)
    counts = Counter(i for b in BalancedBatchSampler(labels, 8, seed=3) for i in b if labels[i] == 1)
    assert set(counts) == set(np.flatnonzero(labels == 1).tolist())
    assert sum(counts.values()) == 20 * 2 and max(counts.values()) - min(counts.values()) <= 1


def test_balanced_deterministic_per_seed_and_epoch():
    labels = binary_labels()
    a, b = BalancedBatchSampler(labels, 8, seed=4), BalancedBatchSampler(labels, 8, seed=4)
    for e in (0, 1):
        a.set_epoch(e), b.set_epoch(e)
        assert list(a) == list(b)
    a.set_epoch(0)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(BalancedBatchSampler(labels, 8, seed=5)) != first


def resume_check(make):
    """Kill after k batches, rebuild from state_dict: the remaining batches are exactly the rest."""
    full = make()
    full.set_epoch(2)
    expected = list(full)
    for k in (0, 3, len(expected)):
        run = make()
        run.set_epoch(2)
        it = iter(run)
        head = list(itertools.islice(it, k))
        state = run.state_dict()
        assert state["epoch"] == 2 and state["batch"] == k
        fresh = make()  # a new process: epoch 0, position 0 until the state is loaded
        fresh.load_state_dict(state)
        assert head + list(fresh) == expected
        assert list(fresh) == expected  # the resume position is used once; the next pass is whole
        fresh.set_epoch(3)
        assert fresh.state_dict()["batch"] == 0


def test_balanced_resume_mid_epoch():
    labels = binary_labels()
    resume_check(lambda: BalancedBatchSampler(labels, 8, seed=9))


def test_resume_rejects_a_different_setup():
    labels = binary_labels()
    state = BalancedBatchSampler(labels, 8, seed=9).state_dict()
    with pytest.raises(MedvitError, match="batch_size=8"):
        BalancedBatchSampler(labels, 16, seed=9).load_state_dict(state)
    with pytest.raises(MedvitError, match="num_replicas"):
        BalancedBatchSampler(labels, 8, seed=9, num_replicas=2).load_state_dict(state)


@pytest.mark.parametrize("world", [2, 3])
def test_balanced_distributed(world):
    labels = binary_labels(n_neg=101, n_pos=9)
    samplers = [BalancedBatchSampler(labels, 8, seed=2, num_replicas=world, rank=r) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    negs = [[i for b in batches for i in b if labels[i] == 0] for batches in per_rank]
    for a, b in itertools.combinations(negs, 2):
        assert set(a).isdisjoint(b)  # ranks draw distinct negatives
    for batches in per_rank:
        assert all(sum(labels[b]) == 2 for b in batches)  # balance on every rank
    # positives: the first `9` draws over all ranks (one pass over the positives) are distinct
    first_draws = [per_rank[r][j][p] for j in range(len(per_rank[0])) for p in range(2) for r in range(world)]
    assert len(set(first_draws[:9])) == 9


def test_balanced_errors():
    with pytest.raises(MedvitError, match="no positives"):
        BalancedBatchSampler(np.zeros(10, int), 4)
    with pytest.raises(MedvitError, match="binary"):
        BalancedBatchSampler(np.array([0, 1, 2, 0]), 2)
    with pytest.raises(MedvitError, match="lower the batch size"):
        BalancedBatchSampler(binary_labels(n_neg=5, n_pos=2), 16)


# ---------------------------------------------------------------- shuffle

def test_shuffle_covers_all_once_and_is_deterministic():
    s = ShuffleBatchSampler(23, 5, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 5 and [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert list(ShuffleBatchSampler(23, 5, seed=1)) == batches
    s.set_epoch(1)
    assert list(s) != batches
    dropped = ShuffleBatchSampler(23, 5, seed=1, drop_last=True)
    assert len(dropped) == 4 and list(dropped) == batches[:4]


def test_shuffle_resume_mid_epoch():
    resume_check(lambda: ShuffleBatchSampler(50, 4, seed=3))


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffle_distributed_disjoint_equal_batches(drop_last):
    world = 3
    per_rank = [list(ShuffleBatchSampler(31, 4, seed=0, num_replicas=world, rank=r, drop_last=drop_last))
                for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    flat = [[i for b in batches for i in b] for batches in per_rank]
    if not drop_last:
        assert set().union(*map(set, flat)) == set(range(31))  # everything seen; 2 padded repeats
        assert sum(map(len, flat)) == 33
    # disjoint apart from the wrap-around padding (31 is not a multiple of 3)
    overlap = sum(len(set(a) & set(b)) for a, b in itertools.combinations(flat, 2))
    assert overlap <= 2


def test_sampler_drives_a_dataloader():
    ds = TensorDataset(torch.arange(30))
    s = ShuffleBatchSampler(30, 4, seed=0)
    got = [x.tolist() for (x,) in DataLoader(ds, batch_sampler=s)]
    assert got == list(ShuffleBatchSampler(30, 4, seed=0))
