"""Learning to Actively Learn for preference pairs: a :class:`~rlxf.policies.query.QueryPolicy` that reads
exactly the candidate features the feedback app and PbRL pass (``pair_features`` of an ensemble's
``P_k(a beats b)``), trained by the threshold toy's policy gradient (``progress_loss``) on simulated
preference problems.

A problem: ``n_items`` items with features ``x_i ~ N(0, I / dim)`` and hidden utilities ``u = x w*``
(``w* ~ N(0, I)``); a Bradley-Terry labeler with rationality ``beta`` (drawn per problem from ``betas``)
prefers ``a`` over ``b`` with probability ``sigmoid(beta (u_a - u_b))``. The reward estimate is an ensemble
of ``members`` linear Bradley-Terry models, refit (a few Newton steps, warm-started) after every answer:
member ``k`` is anchored to its own prior draw ``w0_k ~ N(0, I)`` (ridge ``ridge``) and weighs every label
by its own Poisson(1) bootstrap weight, so the members disagree where the labels leave room. Every
candidate is one of the ``n_items (n_items - 1) / 2`` pairs. Labeler coins and bootstrap weights are drawn
up front per (problem, answer number), so two rules run on the same problems are paired.

The quality of what is known after ``s`` answers is the ensemble mean's pairwise ranking accuracy (the
share of item pairs it orders like the hidden utilities); each answer earns its gain in that accuracy.

``python -m rlxf.algorithms.active.pairs --save PATH`` trains and saves a policy (the shipped
``pair_policy.pt``: ``--seed 0 --iterations 600``); without ``--save`` it compares the shipped policy
with uniform, disagreement and uncertainty sampling on held-out problems.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rlxf.algorithms.active.learn_to_ask import progress_loss, read_query_policy, save_query_policy
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.policies.control import single_thread
from rlxf.policies.query import PAIR_FEATURES, LearnedRule, QueryPolicy, pair_features

# trained by ``python -m rlxf.algorithms.active.pairs --seed 0 --iterations 600 --save PATH`` (config inside)
SHIPPED_PAIRS = Path(__file__).with_name("pair_policy.pt")
RULES = ("uniform", "disagreement", "uncertainty", "learned")


@dataclass
class PairConfig:
    n_items: int = 8
    dim: int = 4
    members: int = 4
    budget: int = 10  # labels per problem
    betas: tuple[float, ...] = (1.0, 3.0, 10.0)
    ridge: float = 1.0
    newton: int = 3  # Newton steps per refit
    hidden: int = 32
    batch: int = 128
    iterations: int = 600
    lr: float = 1e-2
    entropy: float = 0.01
    gamma: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.n_items < 2 or self.members < 2 or self.budget < 1 or not self.betas:
            raise ValueError(f"pairs: need n_items >= 2, members >= 2, budget >= 1 and a beta, got {self.n_items}, "
                             f"{self.members}, {self.budget}, {self.betas}")


@dataclass
class PairProblems:
    """A batch: ``x [B, n, d]``, ``utility [B, n]``, ``beta [B]``, ``coins [B, T]``, ``boot [B, T, K]``,
    ``anchor [B, K, d]`` (the members' prior draws)."""

    x: Tensor
    utility: Tensor
    beta: Tensor
    coins: Tensor
    boot: Tensor
    anchor: Tensor

    def __len__(self) -> int:
        return len(self.x)

    def answer(self, a: Tensor, b: Tensor, step: int) -> Tensor:
        """1.0 where the labeler prefers item ``a [B]`` over ``b [B]`` at answer ``step``."""
        rows = torch.arange(len(self))
        p = torch.sigmoid(self.beta * (self.utility[rows, a] - self.utility[rows, b]))
        return (self.coins[:, step] < p).float()

    def ranking_accuracy(self, scores: Tensor) -> Tensor:
        """Share of item pairs that ``scores [B, n]`` order like the hidden utilities, ``[B]``."""
        i, j = torch.triu_indices(scores.shape[1], scores.shape[1], 1)
        return ((scores[:, i] > scores[:, j]) == (self.utility[:, i] > self.utility[:, j])).float().mean(1)


def sample_pair_problems(cfg: PairConfig, batch: int, seed: int) -> PairProblems:
    g = torch.Generator().manual_seed(seed)
    b, n, d, k, t = batch, cfg.n_items, cfg.dim, cfg.members, cfg.budget
    x = torch.randn(b, n, d, generator=g) / d**0.5
    w = torch.randn(b, d, generator=g)
    betas = torch.as_tensor(cfg.betas, dtype=torch.float32)
    beta = betas[torch.randint(0, len(betas), (b,), generator=g)]
    coins = torch.rand(b, t, generator=g)
    boot = torch.poisson(torch.ones(b, t, k), generator=g)
    anchor = torch.randn(b, k, d, generator=g)
    return PairProblems(x, (x @ w[:, :, None]).squeeze(-1), beta, coins, boot, anchor)


def fit_members(w: Tensor, diffs: Tensor, labels: Tensor, weights: Tensor, anchor: Tensor, ridge: float,
                steps: int) -> Tensor:
    """Newton steps on each member's weighted, anchored Bradley-Terry loss. ``w, anchor [B, K, d]``,
    ``diffs [B, S, d]`` (x_a - x_b of the asked pairs), ``labels [B, S]``, ``weights [B, S, K]``."""
    eye = torch.eye(w.shape[-1])
    c = weights.transpose(1, 2)  # [B, K, S]
    for _ in range(steps):
        p = torch.sigmoid(torch.einsum("bkd,bsd->bks", w, diffs))
        grad = torch.einsum("bks,bsd->bkd", c * (p - labels[:, None, :]), diffs) + ridge * (w - anchor)
        hess = torch.einsum("bks,bsd,bse->bkde", c * p * (1 - p), diffs, diffs) + ridge * eye
        w = w - torch.linalg.solve(hess, grad[..., None]).squeeze(-1)
    return w


def all_pairs(n: int) -> tuple[Tensor, Tensor]:
    return tuple(torch.triu_indices(n, n, 1))


def batch_pair_features(scores: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``pair_features`` of every problem in the batch: ``scores [B, K, n]`` -> ``[B, pairs, 3]``."""
    p = torch.sigmoid(scores[:, :, a] - scores[:, :, b])  # [B, K, P]
    return torch.as_tensor(pair_features(p.numpy()))


def rollout_pairs(problems: PairProblems, cfg: PairConfig, rule: str = "learned", policy: QueryPolicy | None = None,
                  greedy: bool = True, gen: torch.Generator | None = None):
    """Ask ``cfg.budget`` pairs by ``rule``. Returns ``(quality [B, T + 1], query logps [B, T], entropies [B, T])``
    (logps and entropies are zeros except for a sampling learned rule)."""
    if rule not in RULES:
        raise ValueError(f"pair rule {rule!r}: expected one of {RULES}")
    bsz, T = len(problems), cfg.budget
    a, b = all_pairs(cfg.n_items)
    rows = torch.arange(bsz)
    w = problems.anchor.clone()
    diffs, labels = torch.zeros(bsz, 0, cfg.dim), torch.zeros(bsz, 0)
    h = policy.start(bsz) if policy is not None else None
    pick = torch.Generator().manual_seed(0)  # the uniform rule's draws
    quality, logps, ents = [], torch.zeros(bsz, T), torch.zeros(bsz, T)
    for step in range(T):
        scores = torch.einsum("bnd,bkd->bkn", problems.x, w)
        quality.append(problems.ranking_accuracy(scores.mean(1)))
        feats = batch_pair_features(scores, a, b)
        if rule == "uniform":
            j = torch.randint(0, len(a), (bsz,), generator=pick)
        elif rule == "disagreement":
            j = feats[..., 1].argmax(-1)
        elif rule == "uncertainty":
            j = feats[..., 2].argmax(-1)
        else:
            logp = policy.logits(h, feats).log_softmax(-1)
            j = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
            logps[:, step] = logp.gather(-1, j[:, None]).squeeze(-1)
            ents[:, step] = -(logp.exp() * logp).sum(-1)
        y = problems.answer(a[j], b[j], step)
        if policy is not None:
            h = policy.observe(h, feats[rows, j], y)
        diffs = torch.cat([diffs, (problems.x[rows, a[j]] - problems.x[rows, b[j]])[:, None]], 1)
        labels = torch.cat([labels, y[:, None]], 1)
        with torch.no_grad():
            w = fit_members(w, diffs, labels, problems.boot[:, : step + 1], problems.anchor, cfg.ridge, cfg.newton)
    quality.append(problems.ranking_accuracy(torch.einsum("bnd,bkd->bkn", problems.x, w).mean(1)))
    return torch.stack(quality, 1), logps, ents


def make_pair_policy(cfg: PairConfig) -> QueryPolicy:
    torch.manual_seed(cfg.seed)
    return QueryPolicy(PAIR_FEATURES, hidden=cfg.hidden)


def train_pair_policy(cfg: PairConfig, progress: bool = False) -> QueryPolicy:
    """REINFORCE (``progress_loss``) on the gain in ranking accuracy each answer brings."""
    policy = make_pair_policy(cfg)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    with single_thread():
        bar = tqdm(range(cfg.iterations), desc="learn to ask (pairs)", disable=not progress)
        for it in bar:
            problems = sample_pair_problems(cfg, cfg.batch, cfg.seed * 1_000_003 + it)
            quality, logps, ents = rollout_pairs(problems, cfg, "learned", policy, greedy=False, gen=gen)
            loss = progress_loss(logps, ents, quality, cfg.entropy, cfg.gamma).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            bar.set_postfix(accuracy=f"{float(quality[:, -1].mean()):.3f}")
    return policy


def save_pair_policy(policy: QueryPolicy, cfg: PairConfig, path: str | Path) -> None:
    save_query_policy(policy, cfg, path)


def load_pair_policy(path: str | Path | None = None, option: str = "query_policy") -> tuple[QueryPolicy, PairConfig]:
    """A saved pair policy (default: the shipped one) and its config; a bad file is a ValueError naming
    ``option`` and the file."""
    path = Path(path) if path else SHIPPED_PAIRS
    if not path.is_file():
        raise ValueError(f"{option}: no query policy file {str(path)!r}")
    try:
        policy, cfg = read_query_policy(path, PairConfig, make_pair_policy)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{option}: {str(path)!r} is not a pair query policy saved by "
                         f"rlxf.algorithms.active.pairs ({type(e).__name__}: {e})") from e
    return policy, cfg


def pair_rule(path: str | Path | None = None, option: str = "query_policy") -> LearnedRule:
    """A fresh questioning session of the saved (default: shipped) pair policy."""
    return LearnedRule(load_pair_policy(path, option)[0])


@torch.no_grad()
def compare_rules(policy: QueryPolicy, cfg: PairConfig, problems: int = 500, seed: int = 2_000_000) -> dict:
    """Final ranking accuracy of every rule on the same held-out problems, ``{rule: [problems]}``."""
    held = sample_pair_problems(cfg, problems, seed)
    return {r: rollout_pairs(held, cfg, r, policy if r == "learned" else None)[0][:, -1].numpy() for r in RULES}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Learning to Actively Learn for preference pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=PairConfig.iterations)
    ap.add_argument("--save", default=None, help="train a policy and save it to this file")
    ap.add_argument("--held-out", type=int, default=500, help="held-out problems for the paired comparison")
    ap.add_argument("--held-out-seed", type=int, default=2_000_000)
    args = ap.parse_args(argv)
    if args.save:
        cfg = PairConfig(iterations=args.iterations, seed=args.seed)
        save_pair_policy(train_pair_policy(cfg, progress=True), cfg, args.save)
        print(f"saved {args.save}")
        return 0
    policy, cfg = load_pair_policy()
    acc = compare_rules(policy, cfg, args.held_out, args.held_out_seed)
    for rule, a in acc.items():
        m, se = mean_se(a)
        print(f"{rule:13s} ranking accuracy {m:.3f} +- {se:.3f}")
    for rule in ("uniform", "disagreement", "uncertainty"):
        g, se = paired_gain(acc["learned"], acc[rule])
        print(f"learned vs {rule}: {g:+.4f} +- {se:.4f} (paired)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
