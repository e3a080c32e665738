"""Process verifiers on the verifiable arithmetic task: outcome RM vs process RM vs PAV.

At the same label budget, each verifier (the same tiny transformer over step tokens) is trained
on one label per solution (outcome RM), on per-step correctness (PRM), or on per-step success
rates of a prover under Monte-Carlo rollouts (PAV, Setlur et al. 2025, "Rewarding Progress").
They are compared on ranking partial solutions and on best-of-N accuracy.

``python -m rlxf.lab.verifiers --n-train 300 --n-test 100 --steps 80 --seed 0`` prints the comparison.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.reward_training import train_process_reward_model
from rlxf.core.runs import Run
from rlxf.lab.best_of_n import bon_curve
from rlxf.policies.tiny import tiny_scorer, tiny_tokenizer
from rlxf.rewards.process import ProcessRewardModel, progress, rollout_values, step_text
from rlxf.tasks.arithmetic import ArithmeticProver, ArithmeticTask, check_answer, check_steps, corrupt, solve


def _policy_sample(problem: str, rng, slip: float = 0.2) -> str:
    """The base policy being verified: half the time a solver that slips by +-1 on each line with
    probability ``slip``, half the time a correct solution with one plausible error (``corrupt``)."""
    if rng.random() < 0.5:
        return "\n".join(ArithmeticProver(problem, slip).complete([], rng))
    return corrupt(problem, solve(problem), rng)


def _sigmoid(x: list[float]) -> list[float]:
    return (1 / (1 + np.exp(-np.asarray(x)))).tolist()


def verifier_comparison(n_train: int = 300, n_test: int = 100, n_candidates: int = 16, steps: int = 80,
                        rollouts: int = 8, prover_slip: float = 0.1, seed: int = 0, unit: str = "line",
                        max_operand: int = 5) -> dict:
    """Outcome RM vs process RM vs PAV at the same label budget (``n_train`` labelled solutions)
    on the arithmetic task: AUC of ranking partial solutions (is the prefix still right?) and the
    gold accuracy of best-of-N picks. Each verifier is the same tiny transformer over step tokens."""
    task, rng = ArithmeticTask(seed, max_operand=max_operand), random.Random(seed)
    train_p, test_p = task.prompts(n_train, "train"), task.prompts(n_test, "test")
    train_s = [_policy_sample(p, rng) for p in train_p]
    pool = [_policy_sample(p, rng) for p in task.prompts(4 * n_train, "train")]
    # words seen at least twice in an unlabelled pool; rarer ones are <unk>, in training too
    counts: dict[str, int] = {}
    for s in pool + train_s:
        for w in step_text("0", s, unit)[1].split():
            counts[w] = counts.get(w, 0) + 1
    tok = tiny_tokenizer(list("0123456789+-*=") + sorted(w for w, c in counts.items() if c >= 2))

    def encode(p, s):
        pt, st = step_text(p, s, unit)
        p_ids, r_ids = tok(pt, add_special_tokens=False).input_ids, tok(st, add_special_tokens=False).input_ids
        if unit == "line":
            return p_ids, r_ids, list(range(len(r_ids)))
        end = tok.convert_tokens_to_ids(";")
        return p_ids, r_ids, [i for i, t in enumerate(r_ids) if t == end]

    targets = {
        "orm": [[float(check_answer(p, s))] for p, s in zip(train_p, train_s)],
        "prm": [np.cumprod(check_steps(p, s)).astype(float).tolist() for p, s in zip(train_p, train_s)],
        "pav": [],
    }
    for p, s in zip(train_p, train_s):
        prover = ArithmeticProver(p, prover_slip)
        targets["pav"].append(rollout_values(s.split("\n"), prover.complete, prover.is_correct, rollouts, rng))
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ys in targets.items():
            rows = []
            for p, s, y in zip(train_p, train_s, ys):
                p_ids, r_ids, ends = encode(p, s)
                ends = [ends[-1]] if name == "orm" else ([-1] + ends if name == "pav" else ends)
                rows.append((p_ids, r_ids, ends, y))
            prm = ProcessRewardModel(tiny_scorer(tok, n_layer=2, n_embd=64, n_head=4, seed=seed), tok)
            cfg = OptimConfig(steps=steps, batch_size=32, lr=3e-3, warmup_steps=10, checkpoint_every=0)
            train_process_reward_model(Run(Path(tmp) / name, name), name, prm, rows, cfg, seed, quiet=True)
            models[name] = prm

    def step_scores(name, problems, sols):
        enc = [encode(p, s) for p, s in zip(problems, sols)]
        ends = [([-1] if name == "pav" else []) + e[2] for e in enc]
        return models[name].step_scores([e[0] for e in enc], [e[1] for e in enc], ends)

    # ranking partial solutions of held-out problems
    test_s = [_policy_sample(p, rng) for p in test_p]
    gold = np.concatenate([np.cumprod(check_steps(p, s)) for p, s in zip(test_p, test_s)])
    auc = {}
    for name in models:
        sc = np.concatenate([row[1:] if name == "pav" else row for row in step_scores(name, test_p, test_s)])
        pos, neg = sc[gold == 1], sc[gold == 0]
        auc[name] = float(np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])))
    # best-of-N on gold accuracy
    cands = [[_policy_sample(p, rng) for _ in range(n_candidates)] for p in test_p]
    flat_p = [p for p in test_p for _ in range(n_candidates)]
    flat_s = [s for c in cands for s in c]
    correct = np.array([check_answer(p, s) for p, s in zip(flat_p, flat_s)]).reshape(len(test_p), -1)
    solution_score = {
        "orm": [row[-1] for row in step_scores("orm", flat_p, flat_s)],
        "prm": [min(row) for row in step_scores("prm", flat_p, flat_s)],
        # the largest cumulative drop in the prover's success, min_h sum_{i<=h} A_i (as probabilities)
        "pav": [min(np.cumsum(progress(_sigmoid(row)))) for row in step_scores("pav", flat_p, flat_s)],
    }
    bon = {}
    for name, sc in solution_score.items():
        sc = np.array(sc).reshape(len(test_p), -1)
        bon[name] = {n: float(bon_curve(correct.astype(float), sc, [n])[n]["gold"])
                     for n in (1, 4, n_candidates)}
    bon["oracle"] = {n: float(bon_curve(correct.astype(float), correct.astype(float), [n])[n]["gold"])
                     for n in (1, 4, n_candidates)}
    return {"label_budget": n_train, "prefix_auc": auc, "best_of_n_accuracy": bon,
            "prefix_positive_rate": float(gold.mean())}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Outcome RM vs PRM vs PAV on the arithmetic task.")
    ap.add_argument("--n-train", type=int, default=300, help="labelled solutions (the label budget)")
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unit", default="line", choices=["number", "line"])
    ap.add_argument("--max-operand", type=int, default=5)
    a = ap.parse_args()
    print(json.dumps(verifier_comparison(a.n_train, a.n_test, steps=a.steps, seed=a.seed, unit=a.unit,
                                         max_operand=a.max_operand), indent=1))
