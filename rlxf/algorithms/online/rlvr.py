"""RL with verifiable rewards (the RLVR stage of Tulu 3) on the arithmetic task.

Lambert et al., "Tulu 3: Pushing Frontiers in Open Language Model Post-Training" (2024): the
reward is ``alpha`` when a deterministic verifier accepts the final answer and 0 otherwise,
optimised with a KL penalty to the starting policy. Here the starting policy is a small
character-level "prover" fine-tuned on worked solutions, and the verifier is
:func:`rlxf.tasks.arithmetic.check_answer`; any controller method can optimise it.
"""

from __future__ import annotations

import numpy as np
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import OnlineConfig, train_online
from rlxf.algorithms.online.scoring import Scorer, verifier_reward
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer

ALPHABET = list("0123456789+-*=:\n answer")


def arithmetic_tokenizer():
    """Character-level tokenizer over the arithmetic task's alphabet."""
    return tiny_tokenizer(ALPHABET, split="chars")


def train_prover(run: Run, task: ArithmeticTask, cfg: OptimConfig, corpus_size: int = 4000, seed: int = 0,
                 n_layer: int = 2, n_embd: int = 64, quiet: bool = True) -> LanguagePolicy:
    """A tiny char-level LM fine-tuned on ``corpus_size`` worked solutions (the SFT prover)."""
    tok = arithmetic_tokenizer()
    policy = LanguagePolicy(tiny_causal_lm(tok, "gpt2", n_layer, n_embd, 4, 128, seed=seed), tok)
    corpus = task.corpus(corpus_size)
    prompts = policy.encode([c["prompt"] for c in corpus])
    responses = policy.encode_responses([c["completion"] for c in corpus])
    train_sft(run, "sft", policy, prompts, responses, cfg, seed, quiet)
    return policy


@torch.no_grad()
def exact_match(policy: LanguagePolicy, problems: list[str], temperature: float = 1.0, n: int = 4,
                max_new_tokens: int = 48, seed: int = 0) -> np.ndarray:
    """Per-problem exact-match accuracy of the final answer: the mean over ``n`` samples at
    ``temperature`` (``temperature=1e-4, n=1`` is greedy decoding), ``[len(problems)]``."""
    ro = policy.sample(policy.encode(problems), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                       generator=torch.Generator().manual_seed(seed))
    expanded = [q for q in problems for _ in range(n)]
    ok = [float(check_answer(p, policy.decode(r))) for p, r in zip(expanded, ro.response_ids)]
    return np.array(ok).reshape(len(problems), n).mean(1)


def train_rlvr(run: Run, stage: str, policy: LanguagePolicy, task: ArithmeticTask, cfg: OnlineConfig,
               n_prompts: int = 2000, alpha: float = 1.0, seed: int = 0, quiet: bool = True, executor=None):
    """Optimise the verifiable reward ``alpha * [answer correct]`` with ``cfg.method`` from ``policy``."""
    ref = policy.reference()
    scorer = Scorer({"verifier": (verifier_reward(policy.decode, check_answer, alpha), 1.0)})
    prompts = policy.encode(task.prompts(n_prompts, "train"))
    return train_online(run, stage, policy, ref, prompts, scorer, cfg, seed, executor=executor, quiet=quiet)
