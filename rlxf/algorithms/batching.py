"""Deterministic batch schedules: the data a step sees depends only on (seed, step)."""

from __future__ import annotations

import numpy as np


def epoch_batches(n: int, batch_size: int, seed: int):
    """``make_batch(step)`` over ``n`` examples: shuffled epochs, each a fresh permutation."""
    if n <= 0:
        raise ValueError("there are no training examples")
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size

    def make_batch(step: int) -> list[int]:
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        return perm[k * batch_size : (k + 1) * batch_size].tolist()

    return make_batch


def visited_indices(make_batch, steps: int) -> list[int]:
    """The examples that ``steps`` batches of ``make_batch`` touch, sorted: what a precomputed
    reference must score (a short run over a large dataset touches only part of it)."""
    return sorted({i for step in range(steps) for i in make_batch(step)})


def step_rng(seed: int, step: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, step, salt])
