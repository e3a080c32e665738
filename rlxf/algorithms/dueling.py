"""The dueling rule of APOHF (Lin et al. 2024, "Prompt Optimization with Human Feedback"): which two
candidates to show a person next, given a utility estimate of every candidate and the uncertainty of
its difference to the best one.

- Arm 1 (exploit): the candidate with the highest estimated utility (ties broken at random).
- Arm 2 (explore against arm 1): the other candidate maximising utility(x) + sqrt(nu * var(x)), where
  var(x) is the variance of x's estimated utility difference to arm 1.
- ``nu = -1`` draws both arms at random (the paper's random-pair ablation).

One implementation serves everyone who duels: the APOHF prompt loop
(:mod:`rlxf.algorithms.prompts.apohf`, where var comes from the utility network's gradients) and the
feedback app's ``apohf`` selection (:mod:`rlxf.app.selection`, where it is an ensemble's variance).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RANDOM_PAIRS = -1.0  # the value of nu that draws both arms at random


def check_nu(nu: float) -> float:
    """nu >= 0, or -1 for random pairs; anything else is an error naming the option."""
    if not (nu >= 0 or nu == RANDOM_PAIRS):
        raise ValueError(f"nu (APOHF's exploration weight) must be >= 0, or -1 for random pairs; got {nu}")
    return float(nu)


def duel_pair(utility: np.ndarray, variance_against: Callable[[int], np.ndarray], nu: float,
              rng: np.random.Generator) -> tuple[int, int, float]:
    """(arm 1, arm 2, value) among ``len(utility)`` >= 2 candidates. ``variance_against(a)`` gives, for
    every candidate, the variance of its utility difference to candidate ``a`` (``[n]``, >= 0). The
    value is arm 2's optimistic utility minus arm 1's utility (0 for random pairs)."""
    utility = np.asarray(utility, dtype=float)
    if utility.ndim != 1 or len(utility) < 2:
        raise ValueError(f"a duel needs the utility of 2 or more candidates, got shape {utility.shape}")
    if check_nu(nu) == RANDOM_PAIRS:
        a, b = rng.choice(len(utility), size=2, replace=False)
        return int(a), int(b), 0.0
    arm1 = int(np.argmax(utility + 1e-9 * rng.random(utility.shape)))
    optimistic = utility + np.sqrt(nu * np.maximum(np.asarray(variance_against(arm1), dtype=float), 0.0))
    optimistic[arm1] = -np.inf
    arm2 = int(np.argmax(optimistic))
    return arm1, arm2, float(optimistic[arm2] - utility[arm1])
