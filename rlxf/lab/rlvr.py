"""The RLVR demonstration on the arithmetic task: a small character-level prover fine-tuned on
worked solutions whose demonstrations mix two answer formats, scored before and after RLVR
(:func:`rlxf.algorithms.online.rlvr.train_rlvr`) against the strict verifier.

``python -m rlxf.lab.rlvr [run_dir]`` runs it and prints the table of ``docs/online_rl.md``.
"""

from __future__ import annotations

import numpy as np
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import KLSettings, OnlineConfig
from rlxf.algorithms.online.rlvr import train_rlvr
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.tasks.arithmetic import ALT_ANSWER, ArithmeticTask, check_answer, split_steps

ALPHABET = list("0123456789+-*=:\n answer")


def arithmetic_tokenizer():
    """Character-level tokenizer over the arithmetic task's alphabet."""
    return tiny_tokenizer(ALPHABET, split="chars")


def train_prover(run: Run, task: ArithmeticTask, cfg: OptimConfig, corpus_size: int = 4000, seed: int = 0,
                 n_layer: int = 2, n_embd: int = 64, mixed_format: float = 0.0, quiet: bool = True) -> LanguagePolicy:
    """A tiny char-level LM fine-tuned on ``corpus_size`` worked solutions (the SFT prover);
    ``mixed_format`` of them end ``answer = N`` (see :meth:`ArithmeticTask.corpus`)."""
    return prover_on_rows(run, task.corpus(corpus_size, mixed_format), cfg, seed, n_layer, n_embd, quiet)


def prover_on_rows(run: Run, rows: list[dict[str, str]], cfg: OptimConfig, seed: int = 0, n_layer: int = 2,
                   n_embd: int = 64, quiet: bool = True) -> LanguagePolicy:
    """A fresh tiny char-level LM (stage ``sft``) fine-tuned on ``{"prompt", "completion"}`` rows."""
    tok = arithmetic_tokenizer()
    policy = LanguagePolicy(tiny_causal_lm(tok, "gpt2", n_layer, n_embd, 4, 128, seed=seed), tok)
    prompts = policy.encode([r["prompt"] for r in rows])
    responses = policy.encode_responses([r["completion"] for r in rows])
    train_sft(run, "sft", policy, prompts, responses, cfg, seed, quiet)
    return policy


def sample_responses(policy: LanguagePolicy, prompts: list[str], n: int, seed: int = 0, *, temperature: float = 1.0,
                     max_new_tokens: int = 48) -> list[list[str]]:
    """``n`` decoded samples per prompt at ``temperature`` (in eval mode, without gradients), grouped by prompt."""
    was_training = policy.model.training
    policy.model.eval()
    with torch.no_grad():
        ro = policy.sample(policy.encode(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                           generator=torch.Generator(device=policy.device).manual_seed(seed))
    policy.model.train(was_training)
    texts = [policy.decode(r) for r in ro.response_ids]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def evaluate_prover(policy: LanguagePolicy, problems: list[str], temperature: float = 1.0, n: int = 8,
                    max_new_tokens: int = 48, seed: int = 0) -> dict[str, float]:
    """Mean over ``problems`` x ``n`` samples at ``temperature`` (``1e-4`` with ``n=1``: greedy):
    ``exact_match`` (the strict verifier), ``lenient_match`` (either answer format: the
    arithmetic alone) and ``second_format`` (share of answers written ``answer = N``)."""
    groups = sample_responses(policy, problems, n, seed, temperature=temperature, max_new_tokens=max_new_tokens)
    expanded = [q for q in problems for _ in range(n)]
    texts = [t for g in groups for t in g]
    return {"exact_match": float(np.mean([check_answer(p, t) for p, t in zip(expanded, texts)])),
            "lenient_match": float(np.mean([check_answer(p, t, lenient=True) for p, t in zip(expanded, texts)])),
            "second_format": float(np.mean([split_steps(t)[-1].startswith(ALT_ANSWER) for t in texts]))}


def prover_scores(policy: LanguagePolicy, problems: list[str]) -> dict[str, dict[str, float]]:
    """:func:`evaluate_prover` at temperature 1 (8 samples per problem) and greedily."""
    return {"t1": evaluate_prover(policy, problems), "greedy": evaluate_prover(policy, problems, 1e-4, n=1)}


def rlvr_config(method: str = "grpo", steps: int = 100, lr: float = 1e-4, batch_size: int = 32) -> OnlineConfig:
    """The demonstration's settings: 8 samples per problem, no KL term, no reference pass."""
    return OnlineConfig(method=method, samples_per_prompt=8, max_new_tokens=48,
                        kl=KLSettings(mode="none", monitor=method == "sharpening"),
                        optim=OptimConfig(steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=10**6))


def demo_prover(run: Run, task: ArithmeticTask, mixed_format: float = 0.4, sft_steps: int = 2000, seed: int = 0,
                quiet: bool = True) -> LanguagePolicy:
    """The demonstration's SFT prover: 8000 demonstrations, batch 32, lr 3e-3."""
    return train_prover(run, task, OptimConfig(steps=sft_steps, batch_size=32, lr=3e-3, checkpoint_every=10**6),
                        corpus_size=8000, seed=seed, mixed_format=mixed_format, quiet=quiet)


def demo(run_dir: str = "runs/rlvr", mixed_format: float = 0.4, sft_steps: int = 2000, rl_steps: int = 100,
         method: str = "grpo", lr: float = 1e-4, n_test: int = 200, seed: int = 0, quiet: bool = True) -> dict:
    """SFT prover on ``mixed_format`` demonstrations, then RLVR; the prover's scores on ``n_test``
    test problems before and after (temperature 1, 8 samples each, and greedy)."""
    task = ArithmeticTask(seed=seed)
    run = Run(run_dir, f"rlvr demo {mixed_format} {sft_steps} {rl_steps} {method} {lr} {seed}", fresh=True)
    policy = demo_prover(run, task, mixed_format, sft_steps, seed, quiet)
    test = task.prompts(n_test, "test")
    before = prover_scores(policy, test)
    train_rlvr(run, "rlvr", policy, task, rlvr_config(method, rl_steps, lr), seed=seed, quiet=quiet)
    return {"sft": before, "rlvr": prover_scores(policy, test)}


if __name__ == "__main__":
    import sys

    out = demo(quiet=False, **({"run_dir": sys.argv[1]} if len(sys.argv) > 1 else {}))
    print(f"{'':8} {'decoding':9} {'exact_match':>11} {'lenient':>8} {'answer = N':>10}")
    for stage, by in out.items():
        for dec, r in by.items():
            print(f"{stage:8} {dec:9} {r['exact_match']:11.3f} {r['lenient_match']:8.3f} {r['second_format']:10.3f}")
    gain = out["rlvr"]["t1"]["exact_match"] - out["sft"]["t1"]["exact_match"]
    print(f"exact_match_gain_t1 {gain:+.3f}")
