"""Active query selection vs uniform: labels needed to reach the same reward-model accuracy.

A simulated Bradley-Terry labeler (beta = 1) answers through the feedback app's HTTP API
(the real FastAPI app under uvicorn on 127.0.0.1). Items are prompts of the built-in
hidden-preference task, each with ``--responses`` fluent responses. After every batch of
labels the owner refits the reward model: an ensemble of ``--members`` linear
Bradley-Terry models (bag of words, on-topic count, repeats, length one-hot), each fit on
a bootstrap resample of the labels. Ensemble-disagreement selection asks about the pair
whose members disagree most; uniform asks a random pair. Accuracy is agreement with the
gold preference on held-out pairs of test prompts, averaged over ``--seeds`` runs.

    .venv/bin/python benchmarks/active_queries.py            # about 25 minutes on one core

The labeler's coin for a question is fixed by (seed, prompt, responses), so both rules get the
same answer to the same question. The ratio is noisy: at 600 labels uniform gains under 0.01
accuracy per 100 labels, so 0.005 of accuracy moves it by about 0.1; use 24 seeds or more.
The saving grows with the budget. In an offline replica of this loop (same rule, 48 seeds),
the ratio was 0.90 at 200 labels, 0.82 at 400, 0.78 at 600, 0.75 at 800 and 0.73 at 1000
(bootstrap over seeds, 10-90%: 0.70-0.76). Hence the default budget of 1000.

The last line is ``label_ratio X``: labels the active rule needed to reach the accuracy
uniform reaches with the full budget, divided by the labels uniform needed for it.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rlxf.app.client import LabelClient, serve_in_background, simulate_labeler
from rlxf.app.server import create_app
from rlxf.data.label_store import Item, LabelStore
from rlxf.tasks.hidden_pref import HiddenPreferenceTask


class Featurizer:
    """Features of a (prompt, response) for a linear reward model."""

    def __init__(self, task: HiddenPreferenceTask):
        self.task = task
        c = task.cfg
        self.lengths = list(range(c.min_len, c.max_len + 2))  # the last bucket takes anything longer
        self.dim = len(task.words) + 2 + len(self.lengths)

    def __call__(self, prompt: str, response: str) -> np.ndarray:
        t = self.task
        topic = t.topics.index(prompt.split()[0])
        words = response.split()
        x = np.zeros(self.dim)
        for w in words:
            i = t.index.get(w)
            if i is not None:
                x[i] += 1
                x[len(t.words)] += t.topic_of[i] == topic
        x[len(t.words) + 1] = len(words) - len(set(words))
        x[len(t.words) + 2 + self.lengths.index(min(max(len(words), self.lengths[0]), self.lengths[-1]))] = 1
        return x


def fit_bt(diffs: np.ndarray, l2: float = 1.0, iters: int = 25) -> np.ndarray:
    """L2-regularised Bradley-Terry (logistic) fit of w on chosen-minus-rejected features, by Newton."""
    w = np.zeros(diffs.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-diffs @ w))
        grad = diffs.T @ (p - 1) + l2 * w
        hess = (diffs * (p * (1 - p))[:, None]).T @ diffs + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


class EnsembleScorer:
    """K bootstrap fits; the app's scorer reads their scores of each item's responses."""

    def __init__(self, feats: dict[int, np.ndarray], members: int, rng: np.random.Generator):
        self.feats, self.members, self.rng = feats, members, rng
        self.weights = None  # no model before the first labels: the app then asks uniformly

    def refit(self, diffs: np.ndarray) -> None:
        n = len(diffs)
        self.weights = np.stack([fit_bt(diffs[self.rng.integers(0, n, n)]) for _ in range(self.members)])

    def __call__(self, items: list[Item]) -> list[np.ndarray] | None:
        if self.weights is None:
            return None
        return [self.weights @ self.feats[it.id].T for it in items]  # [K, n_responses] each


def paired_answer(gold, beta: float, seed: int):
    """A Bradley-Terry (beta) labeler whose coin for a question depends only on (seed, prompt, the
    two responses): both rules get the same answer to the same question (common random numbers),
    so the comparison measures the selection rule rather than the labeler's luck."""

    def answer(a: dict) -> dict:
        prompt, (r0, r1) = a["prompt"], a["responses"]
        lo, hi = sorted((r0, r1))
        digest = hashlib.sha256(f"{seed}\0{prompt}\0{lo}\0{hi}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        lo_wins = u < 1 / (1 + math.exp(-beta * (gold(prompt, lo) - gold(prompt, hi))))
        return {"choice": "a" if (r0 == lo) == lo_wins else "b"}

    return answer


def run_one(rule: str, seed: int, args, task: HiddenPreferenceTask, feat: Featurizer,
            held_out: tuple[np.ndarray, np.ndarray]) -> list[float]:
    """Label ``args.budget`` pairs with ``rule``; accuracy after each batch."""
    pool_rng = np.random.default_rng([seed, 2])
    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore.open(Path(tmp) / "labels.sqlite")
        project, _ = store.create_project("bench", "preference", selection=rule, seed=seed)
        prompts = task.sample_prompts(args.items, "train", pool_rng)
        rows = [(p, [task.sample_response(p, pool_rng) for _ in range(args.responses)], {}) for p in prompts]
        ids = store.add_items(project, rows)
        feats = {i: np.stack([feat(p, r) for r in rs]) for i, (p, rs, _) in zip(ids, rows)}
        scorer = EnsembleScorer(feats, args.members, np.random.default_rng([seed, 3]))
        token = store.add_labeler(project, "sim")
        answer = paired_answer(task.gold, 1.0, seed)
        curve = []
        with serve_in_background(create_app(store, project, scorer)) as url:
            client = LabelClient(url, token)
            done = 0
            while done < args.budget:
                n = args.start if done == 0 else args.batch
                log = simulate_labeler(client, answer, max_labels=n)
                if log.errors:
                    raise RuntimeError(f"labeling failed: {log.errors[:3]}")
                done += len(log.acked)
                diffs = _label_diffs(store, project, feat)
                scorer.refit(diffs)
                w = fit_bt(diffs)
                curve.append((done, float(np.mean((held_out[0] @ w > 0) == held_out[1]))))
            client.close()
        store.close()
    return curve


def _label_diffs(store: LabelStore, project, feat: Featurizer) -> np.ndarray:
    """Chosen-minus-rejected features of every a/b label in the store."""
    rows = []
    for label in store.labels(project):
        a, b = (label.item.responses[i] for i in label.shown)
        d = feat(label.item.prompt, a) - feat(label.item.prompt, b)
        rows.append(d if label.value["choice"] == "a" else -d)
    return np.stack(rows)


def held_out_pairs(task: HiddenPreferenceTask, feat: Featurizer, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(999)
    xs, ys = [], []
    for p in task.sample_prompts(n, "test", rng):
        a, b = task.sample_response(p, rng), task.sample_response(p, rng)
        ga, gb = task.gold(p, a), task.gold(p, b)
        if ga == gb:
            continue
        xs.append(feat(p, a) - feat(p, b))
        ys.append(ga > gb)
    return np.stack(xs), np.array(ys)


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    """Labels at which a curve first reaches ``target`` (linear between measurements); inf if never."""
    prev_n, prev_a = 0, 0.5
    for n, a in curve:
        if a >= target:
            if a == prev_a:
                return float(n)
            return prev_n + (n - prev_n) * (target - prev_a) / (a - prev_a)
        prev_n, prev_a = n, a
    return float("inf")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--budget", type=int, default=1000, help="labels per run")
    ap.add_argument("--start", type=int, default=20, help="labels before the first refit")
    ap.add_argument("--batch", type=int, default=20, help="labels between refits")
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--held-out", type=int, default=3000)
    ap.add_argument("--rule", default="disagreement", choices=["disagreement", "apohf", "randomized"])
    args = ap.parse_args(argv)

    task = HiddenPreferenceTask()
    feat = Featurizer(task)
    held_out = held_out_pairs(task, feat, args.held_out)
    t0 = time.time()
    curves = {"uniform": [], args.rule: []}
    for seed in range(args.seeds):
        for rule in curves:
            curves[rule].append(run_one(rule, seed, args, task, feat, held_out))
        print(f"seed {seed} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    ns = [n for n, _ in curves["uniform"][0]]
    mean = {rule: [float(np.mean([c[k][1] for c in cs])) for k in range(len(ns))] for rule, cs in curves.items()}
    print(f"reward-model accuracy vs gold on {len(held_out[1])} held-out pairs, mean of {args.seeds} seeds "
          f"(beta=1 labeler through the HTTP API, {args.members}-member bootstrap ensemble)")
    print(f"{'labels':>7} {'uniform':>9} {args.rule:>13}")
    for k, n in enumerate(ns):
        print(f"{n:>7} {mean['uniform'][k]:>9.4f} {mean[args.rule][k]:>13.4f}")
    earlier = [k for k, n in enumerate(ns) if k + 1 < len(ns) and n % 200 == 0]
    if earlier:
        print("label ratio if uniform stopped earlier (labels the active rule needs for uniform's accuracy there):")
    for k in earlier:
        t = mean["uniform"][k]
        r = labels_to_reach(list(zip(ns, mean[args.rule])), t) / labels_to_reach(list(zip(ns, mean["uniform"])), t)
        print(f"  at {ns[k]:>5} labels: {r:.3f}")
    target = mean["uniform"][-1]
    n_uniform = labels_to_reach(list(zip(ns, mean["uniform"])), target)
    n_active = labels_to_reach(list(zip(ns, mean[args.rule])), target)
    print(f"target accuracy {target:.4f} (uniform at {ns[-1]} labels): uniform needs {n_uniform:.0f} labels, "
          f"{args.rule} needs {n_active:.0f}")
    if n_active == float("inf"):
        print(f"{args.rule} never reached uniform's final accuracy within {ns[-1]} labels: the ratio is "
              f"unbounded (a larger --budget or more --seeds gives a finite one)")
    print(f"label_ratio {n_active / n_uniform:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
