"""SCoRe's comparison on the arithmetic task: the two-attempt start, then SCoRe, plain two-turn RL,
stage 2 without stage 1, and naive SFT on correction traces, each from the same start with the same
number of sampled attempt pairs, scored greedily on test problems (:mod:`rlxf.algorithms.online.score`).

``python -m rlxf.lab.self_correction [run_dir [seed]]`` trains the weak prover, its two-attempt start and
every arm, and prints the table of ``docs/critique.md``.
"""

from __future__ import annotations

import copy

import numpy as np

from rlxf.algorithms.evaluate import paired_gain as project_paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.score import (
    evaluate_self_correction,
    score_config,
    train_pair_sft,
    train_score,
    two_turn_corpus,
)
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.policies.language import LanguagePolicy
from rlxf.tasks.arithmetic import ArithmeticTask

ARMS = ("score", "two_turn_rl", "stage2_only", "pair_sft")


def two_turn_start(run: Run, prover: LanguagePolicy, task: ArithmeticTask, steps: int = 600, seed: int = 0,
                   quiet: bool = True) -> LanguagePolicy:
    """A copy of ``prover`` SFT'd (batch 16, lr 3e-3) on :func:`two_turn_corpus`: on its second attempt
    it learned to keep a right first answer and to answer a (synthetically) corrupted one anew."""
    policy = prover.copy()
    rows = two_turn_corpus(task, 2000, seed=seed)
    train_sft(run, "two_turn_start", policy, policy.encode([r["prompt"] for r in rows]),
              policy.encode_responses([r["completion"] for r in rows]),
              OptimConfig(steps=steps, batch_size=16, lr=3e-3, checkpoint_every=10**6), seed, quiet)
    return policy


def train_arm(run: Run, arm: str, start: LanguagePolicy, problems: list[str], steps: int, stage1_steps: int,
              batch_size: int = 16, attempts: int = 2, lr: float = 3e-4, sft_steps: int = 100,
              sft_lr: float = 1e-3, seed: int = 0) -> LanguagePolicy:
    """``arm`` (one of :data:`ARMS`) trained from a copy of ``start``. The RL arms take ``steps``
    rollouts of ``batch_size`` prompts x ``attempts`` pairs; ``pair_sft`` samples as many pairs, then
    takes ``sft_steps`` SFT steps (batch 32) on their correction traces."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {', '.join(ARMS)}, got {arm!r}")
    policy = start.copy()
    cfg = score_config(steps, batch_size, attempts, lr)
    if arm == "pair_sft":
        train_pair_sft(run, arm, policy, problems, steps * batch_size * attempts,
                       OptimConfig(steps=sft_steps, batch_size=32, lr=sft_lr, checkpoint_every=10**6), seed)
    else:
        s1, alpha = {"score": (stage1_steps, 10.0), "two_turn_rl": (0, 0.0), "stage2_only": (0, 10.0)}[arm]
        train_score(run, arm, policy, problems, cfg, s1, seed, alpha=alpha)
    return policy


def paired_gain(a: dict, b: dict) -> tuple[float, float]:
    """Mean and standard error over problems of ``(r2 - r1)`` under ``a`` minus under ``b``."""
    return project_paired_gain(np.subtract(a["r2"], a["r1"], dtype=float), np.subtract(b["r2"], b["r1"], dtype=float))


def compare(run: Run, start: LanguagePolicy, task: ArithmeticTask, arms=ARMS, n_test: int = 500, steps: int = 60,
            stage1_steps: int = 20, seed: int = 0) -> dict[str, dict]:
    """Greedy two-attempt metrics of the start and of each arm on ``n_test`` test problems."""
    train, test = task.prompts(2000, "train"), task.prompts(n_test, "test")
    out = {"start": evaluate_self_correction(start, test)}
    for arm in arms:
        out[arm] = evaluate_self_correction(train_arm(run, arm, start, train, steps, stage1_steps, seed=seed), test)
    return out


def demo(run_dir: str = "runs/self_correction", seed: int = 0) -> dict[str, dict]:
    from rlxf.lab.rlvr import train_prover

    task = ArithmeticTask(seed=0)
    run = Run(run_dir, f"self-correction demo {seed}", fresh=True)
    prover = train_prover(run, task, OptimConfig(steps=1000, batch_size=32, lr=3e-3, checkpoint_every=10**6),
                          corpus_size=4000)
    return compare(run, two_turn_start(run, copy.deepcopy(prover), task, seed=seed), task, seed=seed)


if __name__ == "__main__":
    import sys

    table = demo(*sys.argv[1:2], *map(int, sys.argv[2:3]))
    cols = ("acc_t1", "acc_t2", "delta", "i_to_c", "c_to_i", "changed", "edit_ratio")
    print(f"{'':12}" + "".join(f"{c:>11}" for c in cols))
    for name, m in table.items():
        print(f"{name:12}" + "".join(f"{m[c]:11.3f}" for c in cols))
    for arm in ARMS[1:]:
        mean, se = paired_gain(table["score"], table[arm])
        print(f"delta(score) - delta({arm}) = {mean:+.3f} (se {se:.3f})")
