"""SCoRe: two-attempt self-correction trained by RL on the controller.

Kumar et al., "Training Language Models to Self-Correct via Reinforcement Learning" (ICLR 2025).
The policy answers a problem (attempt 1, ``y1``), then answers again on the problem, its first
attempt and a fixed self-correction instruction (attempt 2, ``y2``; :func:`second_prompt`). The
reward is a binary checker on each attempt. Training is REINFORCE with a KL penalty to the fixed
start, in two stages:

- stage 1: turn 2 earns ``r(y2)``; turn 1 earns nothing and carries a strong KL (``beta2``), so
  the first attempt stays near the start while the second learns (a small ``beta1`` KL on turn 2);
- stage 2: both turns with ``beta1``; turn 1 earns ``r(y1)``, turn 2 the shaped
  ``r(y2) + alpha (r(y2) - r(y1))`` (alpha = 10: wrong -> right 11, right -> wrong -10).

Each turn is its own bandit (turn 2's reward is not credited to turn 1's tokens: with the shaping
that credit would pay turn 1 for being wrong). :meth:`SCoRe.rollout` samples both attempts, so a
rollout's rows for one prompt are its ``m`` first attempts then their ``m`` second attempts
(``batch.k = 2m``); each row's ``Samples.prompt_index`` is its problem, which is how
:func:`problem_reward` scores a second attempt against the original problem. ``stage = 2`` with
``alpha = 0`` and no stage 1 is plain two-turn RL (the single-stage baseline).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import KLSettings, Method, OnlineConfig, OnlineError, train_online
from rlxf.core.runs import Run
from rlxf.executors.local import merge_rollouts
from rlxf.objectives.policy_gradient import rloo_advantages
from rlxf.policies.language import LanguagePolicy, Rollout
from rlxf.rewards.scoring import Samples, Scorer
from rlxf.tasks.arithmetic import check_answer

# "there might be errors: answer again", in the characters of the arithmetic tokenizer's alphabet
INSTRUCTION = "\nerrs - answer anew:\n"


def second_prompt(problem: str, first: str) -> str:
    """The second attempt's prompt: the problem, the first attempt, the fixed instruction, and the
    problem again (so the second answer starts where a first answer does)."""
    return f"{problem}{first}{INSTRUCTION}{problem}"


def problem_reward(problems: list[str], decode: Callable[[list[int]], str],
                   check: Callable[[str, str], bool] = check_answer):
    """A reward component ``[check(problem of the row, response)]``, the row's problem looked up by
    ``Samples.prompt_index`` in ``problems`` (the run's prompt list), not read from the row's prompt,
    which for a second attempt holds the first attempt and the instruction too."""

    def score(s: Samples) -> list[float]:
        if s.prompt_index is None:
            raise ValueError("problem_reward: the samples carry no prompt_index to look their problems up by")
        return [float(bool(check(problems[i], decode(r)))) for i, r in zip(s.prompt_index, s.response_ids)]

    return score


def shaped_rewards(r1: torch.Tensor, r2: torch.Tensor, stage: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-turn rewards: stage 1 ``(0, r2)``; stage 2 ``(r1, r2 + alpha (r2 - r1))``."""
    if stage == 1:
        return torch.zeros_like(r1), r2
    return r1, r2 + alpha * (r2 - r1)


class SCoRe(Method):
    """SCoRe's stage ``stage`` (1 or 2). ``cfg.samples_per_prompt`` first attempts per prompt, each
    continued by one second attempt; the method applies its own per-turn KL, so it needs
    ``kl.mode = "none"`` with the reference pass on (``kl.monitor = true``)."""

    reduction = "sum"
    min_samples = 2

    def __init__(self, stage: int = 2, alpha: float = 10.0, beta1: float = 0.01, beta2: float = 0.1,
                 clip: float = 0.2):
        if stage not in (1, 2):
            raise OnlineError(f"method_args.stage: SCoRe has stages 1 and 2, got {stage!r}")
        self.stage, self.alpha, self.beta1, self.beta2, self.clip = stage, alpha, beta1, beta2, clip

    def rollout(self, executor, policy: LanguagePolicy, index: int, prompts: list[list[int]], cfg,
                seed: int) -> Rollout:
        if cfg.kl.mode != "none" or not cfg.kl.monitor:
            raise OnlineError("kl: SCoRe applies its own per-turn KL; set kl.mode = \"none\" and kl.monitor = true")
        m, P = cfg.samples_per_prompt, len(prompts)
        first = executor.sample(policy, index, prompts, m, cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed)
        again = policy.encode([second_prompt(policy.decode(p), policy.decode(r))
                               for p, r in zip(first.prompt_ids, first.response_ids)])
        second = executor.sample(policy, index, again, 1, cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed + 1)
        both = merge_rollouts([first, second])
        # prompt i's rows: its m first attempts, then the m second attempts that continue them
        order = [t * P * m + i * m + j for i in range(P) for t in (0, 1) for j in range(m)]
        return Rollout([both.prompt_ids[o] for o in order], [both.response_ids[o] for o in order],
                       [both.finished[o] for o in order], both.steps[torch.tensor(order)])

    def prepare(self, batch, ctx) -> None:
        m = batch.k // 2
        r = batch.scores.view(-1, 2, m)
        turn1, turn2 = shaped_rewards(r[:, 0], r[:, 1], self.stage, self.alpha)
        kl = batch.steps.seq_logratio().view(-1, 2, m)  # k1: log pi(y|x) - log pi_ref(y|x)
        beta_first = self.beta2 if self.stage == 1 else self.beta1
        total = torch.stack([turn1 - beta_first * kl[:, 0], turn2 - self.beta1 * kl[:, 1]], 1)
        batch.extra["adv"] = rloo_advantages(total.reshape(-1, m)).reshape(-1)  # baseline within (prompt, turn)
        batch.stats.update(acc_t1=float(r[:, 0].mean()), acc_t2=float(r[:, 1].mean()),
                           kl_t1=float(kl[:, 0].mean()), kl_t2=float(kl[:, 1].mean()))


def score_config(steps: int, batch_size: int = 16, attempts: int = 2, lr: float = 3e-4,
                 max_new_tokens: int = 40) -> OnlineConfig:
    """Controller settings for SCoRe: ``attempts`` first attempts per prompt (each with one second
    attempt), the method's own per-turn KL (``kl.mode = "none"``, reference pass on)."""
    return OnlineConfig(method="score", samples_per_prompt=attempts, max_new_tokens=max_new_tokens,
                        kl=KLSettings(mode="none", monitor=True),
                        optim=OptimConfig(steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=10**6))


def train_score(run: Run, stage: str, policy: LanguagePolicy, problems: list[str], cfg: OnlineConfig,
                stage1_steps: int, seed: int = 0, alpha: float = 10.0, beta1: float = 0.01, beta2: float = 0.1,
                quiet: bool = True, executor=None) -> None:
    """SCoRe from ``policy``: stage 1 for ``stage1_steps`` optimiser steps, then stage 2 for the rest
    of ``cfg.optim.steps``, both against the start as the fixed reference. ``stage1_steps = 0`` and
    ``alpha = 0`` is plain two-turn RL; ``stage1_steps = 0`` alone is stage 2 without stage 1."""
    if not 0 <= stage1_steps <= cfg.optim.steps:
        raise OnlineError(f"stage1_steps must be in 0..optim.steps ({cfg.optim.steps}), got {stage1_steps}")
    ref = policy.reference()
    scorer = Scorer({"correct": (problem_reward(problems, policy.decode), 1.0)})
    prompts = policy.encode(problems)
    for part, steps in ((1, stage1_steps), (2, cfg.optim.steps - stage1_steps)):
        if steps:
            part_cfg = replace(cfg, optim=replace(cfg.optim, steps=steps))
            train_online(run, f"{stage}_stage{part}", policy, ref, prompts, scorer, part_cfg, seed + part,
                         method=SCoRe(part, alpha, beta1, beta2), executor=executor, quiet=quiet)


# -- evaluation ------------------------------------------------------------------------------


def two_attempts(policy: LanguagePolicy, problems: list[str], seed: int = 0, *, temperature: float = 1e-4,
                 max_new_tokens: int = 40) -> tuple[list[str], list[str]]:
    """One first and one second attempt per problem (greedy by default, as SCoRe evaluates)."""
    from rlxf.lab.rlvr import sample_responses

    first = [g[0] for g in sample_responses(policy, problems, 1, seed, temperature=temperature,
                                            max_new_tokens=max_new_tokens)]
    again = [second_prompt(q, y) for q, y in zip(problems, first)]
    second = [g[0] for g in sample_responses(policy, again, 1, seed + 1, temperature=temperature,
                                             max_new_tokens=max_new_tokens)]
    return first, second


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of characters)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_distance_ratio(a: str, b: str) -> float:
    """``edit_distance(a, b) / max(len(a), len(b))``: 0 for a copy, 1 for nothing in common."""
    return edit_distance(a, b) / max(len(a), len(b), 1)


def acc_at(correct) -> float:
    """Accuracy of one attempt: the share of problems it gets right."""
    return float(np.mean(np.asarray(correct, dtype=float)))


def delta_i_to_c(r1, r2) -> float:
    """Share of problems wrong at attempt 1 and right at attempt 2 (fixed)."""
    return float(np.mean(~np.asarray(r1, bool) & np.asarray(r2, bool)))


def delta_c_to_i(r1, r2) -> float:
    """Share of problems right at attempt 1 and wrong at attempt 2 (broken)."""
    return float(np.mean(np.asarray(r1, bool) & ~np.asarray(r2, bool)))


def changed_share(first: list[str], second: list[str]) -> float:
    """Share of second attempts whose text differs from the first (stripped)."""
    return float(np.mean([a.strip() != b.strip() for a, b in zip(first, second)]))


def self_correction_metrics(r1, r2, first: list[str], second: list[str]) -> dict[str, float]:
    """SCoRe's table: Acc@t1, Acc@t2, Delta = Acc@t2 - Acc@t1, Delta i->c, Delta c->i, the share
    of changed answers and the mean edit-distance ratio between the attempts."""
    return {"acc_t1": acc_at(r1), "acc_t2": acc_at(r2), "delta": acc_at(r2) - acc_at(r1),
            "i_to_c": delta_i_to_c(r1, r2), "c_to_i": delta_c_to_i(r1, r2),
            "changed": changed_share(first, second),
            "edit_ratio": float(np.mean([edit_distance_ratio(a, b) for a, b in zip(first, second)]))}


def evaluate_self_correction(policy: LanguagePolicy, problems: list[str], seed: int = 0,
                             check: Callable[[str, str], bool] = check_answer) -> dict:
    """:func:`self_correction_metrics` of greedy attempts on ``problems``, with the per-problem
    correctness ``r1``/``r2`` (lists of bools, for paired comparisons)."""
    first, second = two_attempts(policy, problems, seed)
    r1 = [bool(check(q, y)) for q, y in zip(problems, first)]
    r2 = [bool(check(q, y)) for q, y in zip(problems, second)]
    return {**self_correction_metrics(r1, r2, first, second), "r1": r1, "r2": r2}


# -- the naive SFT baseline --------------------------------------------------------------------


def correction_traces(problems: list[str], first: list[str], second: list[str],
                      check: Callable[[str, str], bool] = check_answer) -> list[dict[str, str]]:
    """Pair-SFT rows from sampled attempt pairs (row i: problem, y1, y2): a wrong first attempt
    paired with a right attempt at the same problem (its own second one, or any right attempt
    sampled for it), and a right first attempt kept as its own second one (right -> right)."""
    right: dict[str, list[str]] = {}
    for q, y in [*zip(problems, first), *zip(problems, second)]:
        if check(q, y):
            right.setdefault(q, []).append(y)
    rows = []
    for i, (q, y1, y2) in enumerate(zip(problems, first, second)):
        if check(q, y1):
            rows.append({"prompt": second_prompt(q, y1), "completion": y1})
        elif q in right:
            fix = y2 if check(q, y2) else right[q][i % len(right[q])]
            rows.append({"prompt": second_prompt(q, y1), "completion": fix})
    return rows


def train_pair_sft(run: Run, stage: str, policy: LanguagePolicy, problems: list[str], n_pairs: int,
                   cfg: OptimConfig, seed: int = 0, quiet: bool = True) -> int:
    """The naive baseline: sample ``n_pairs`` attempt pairs from ``policy`` at temperature 1 on
    problems drawn from ``problems``, SFT it on their :func:`correction_traces`; returns the rows."""
    from rlxf.algorithms.sft import train_sft

    rng = np.random.default_rng(seed)
    drawn = [problems[i] for i in rng.integers(0, len(problems), n_pairs)]
    first, second = two_attempts(policy, drawn, seed, temperature=1.0)
    rows = correction_traces(drawn, first, second)
    if not rows:
        raise ValueError(f"train_pair_sft: none of the {n_pairs} sampled pairs gave a correction trace")
    train_sft(run, stage, policy, policy.encode([r["prompt"] for r in rows]),
              policy.encode_responses([r["completion"] for r in rows]), cfg, seed, quiet)
    return len(rows)


# -- the toy's start: a prover that keeps a right first attempt and answers a wrong one anew --


def two_turn_corpus(task, n: int, wrong_share: float = 0.5, seed: int = 0) -> list[dict[str, str]]:
    """``2n`` SFT rows from ``task.corpus(n)``: each worked solution as a first attempt, and again as
    a second attempt after a shown first attempt at the same problem: the solution itself (kept), or
    with probability ``wrong_share`` the solution with one step corrupted (answered anew with the
    solution). This is the start SCoRe assumes, a model whose second attempt mostly keeps a right
    answer; it learns when to keep from the shown attempt alone, never from gold at test time."""
    import random

    from rlxf.tasks.arithmetic import corrupt

    rng = random.Random(f"score|{seed}")
    rows = task.corpus(n)
    out = [dict(r) for r in rows]
    for r in rows:
        shown = corrupt(r["prompt"], r["completion"], rng) if rng.random() < wrong_share else r["completion"]
        out.append({"prompt": second_prompt(r["prompt"], shown), "completion": r["completion"]})
    return out
