"""Learning to Actively Learn (Zhang, Jain, Jamieson, arXiv 2010.15382), toy scale: train a
:class:`~rlxf.policies.query.QueryPolicy` by policy gradient on a distribution of threshold problems.

One training step rolls the policy out on a batch of problems (queries sampled from its softmax), then
- the guess head learns by cross-entropy on the true threshold after every answer (``guess_loss``);
- the queries learn by REINFORCE (``query_loss``): the answer to query ``s`` earns what it taught the guesser,
  ``log q_{s+1}(t) - log q_s(t)`` (``q_s`` the guess after ``s`` answers), and query ``s`` is credited with
  these rewards from ``s`` on, discounted by ``gamma``, less their batch mean; plus an entropy bonus. With
  ``gamma = 1`` the credit is ``log q_T(t) - log q_s(t)``, the final guess's log-likelihood less a baseline
  that depends only on the past; the shipped policy used ``gamma = 0`` (each query's own answer), which
  learned much faster on this toy.

Where the problems come from is the ``prior``:
- ``uniform``: threshold and noise level uniform (meta-learning with a user-chosen prior);
- ``robust``: the paper's objective, reconstructed in the algorithm notes (C5). Problems fall in difficulty
  classes, here the noise levels. ``RobustAdversary`` keeps a running loss for every instance and draws
  the class with the largest regret (its worst-case loss less ``best[r]``, the worst-case loss of the best
  policy trained on that class alone) and, within it, the instances the policy does worst on (softmax of
  the running losses), mixing in a share of uniform draws so no estimate goes stale.

``python -m rlxf.algorithms.active.learn_to_ask`` trains the per-class references (or, with
``--references rules``, takes them from the hand-designed rules told each class's flip rate), the uniform-prior
and the robust policies, and prints each one's held-out and per-class worst-case errors against the
hand-designed rules; ``--save PATH`` trains and saves the uniform-prior policy only.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rlxf.algorithms.active.threshold import NOISE_LEVELS, Problems, make_problems, run_rule, sample_problems
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.policies.control import single_thread
from rlxf.policies.query import QueryPolicy

PRIORS = ("uniform", "robust")
# a uniform-prior policy trained by ``python -m rlxf.algorithms.active.learn_to_ask --save PATH`` (its config inside)
SHIPPED = Path(__file__).with_name("threshold_policy.pt")


@dataclass
class ActiveConfig:
    n: int = 64  # points (and thresholds)
    budget: int = 12  # labels per problem
    noise_levels: tuple[float, ...] = NOISE_LEVELS  # one difficulty class per level
    prior: str = "uniform"  # uniform | robust
    hidden: int = 128
    batch: int = 256
    iterations: int = 3000
    lr: float = 1e-2
    entropy: float = 0.0
    gamma: float = 0.0  # discount of the per-answer information rewards (1: credit the final guess only)
    temperature: float = 1.0  # robust: softmax temperature over regrets and instance losses (0.1 cycled)
    explore: float = 0.25  # robust: share of each batch drawn uniformly
    decay: float = 0.99  # robust: how much of an instance's running loss survives each update (0.8 cycled)
    seed: int = 0

    def __post_init__(self):
        if self.prior not in PRIORS:
            raise ValueError(f"active.prior: unknown {self.prior!r}; expected one of {PRIORS}")
        if not 0.0 <= self.explore < 1.0 or self.temperature <= 0:
            raise ValueError(f"active: need 0 <= explore < 1 and temperature > 0, got {self.explore}, {self.temperature}")
        if self.budget < 1 or self.n < 2 or not self.noise_levels:
            raise ValueError(f"active: need budget >= 1, n >= 2 and a noise level, got {self.budget}, {self.n}, "
                             f"{self.noise_levels}")


def history_features(n: int) -> Tensor:
    """What the GRU reads about an asked point, ``[n, n + 1]``: the label each hypothesis gives it
    (``phi_x[t] = 1[x >= t]``, scaled by ``1/sqrt(n)``; an answer times ``phi_x`` says which thresholds it
    supports) and its position scaled to [0, 1]."""
    return torch.cat([torch.tril(torch.ones(n, n)) / n**0.5, torch.linspace(0, 1, n)[:, None]], 1)


def candidate_features(guess_logps: Tensor, counts: Tensor, budget: int) -> Tensor:
    """What the scorer reads about each point, ``[B, n, 2]``: the label the current guess predicts for it,
    ``P(y_x = 1) = P(t <= x)``, and the share of the budget already spent asking it."""
    return torch.stack([guess_logps.exp().cumsum(-1), counts / budget], -1)


CANDIDATE_FEATURES = 2


def make_query_policy(cfg: ActiveConfig) -> QueryPolicy:
    torch.manual_seed(cfg.seed)
    return QueryPolicy(CANDIDATE_FEATURES, history_dim=cfg.n + 1, n_guesses=cfg.n, hidden=cfg.hidden)


def rollout(policy: QueryPolicy, problems: Problems, greedy: bool = False, gen: torch.Generator | None = None):
    """Ask ``problems.budget`` queries. Returns ``(asked [B, T], query logps [B, T], query entropies [B, T],
    guess log-probs [B, T + 1, n])`` (the guess after 0..T answers)."""
    hist = history_features(problems.n)
    b = len(problems)
    h, counts = policy.start(b), torch.zeros(b, problems.n)
    asked, logps, ents, guesses = [], [], [], [policy.guess_logits(h).log_softmax(-1)]
    for step in range(problems.budget):
        feats = candidate_features(guesses[-1].detach(), counts, problems.budget)
        logp = policy.logits(h, feats).log_softmax(-1)
        x = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
        asked.append(x)
        logps.append(logp.gather(-1, x[:, None]).squeeze(-1))
        ents.append(-(logp.exp() * logp).sum(-1))
        counts = counts.scatter_add(1, x[:, None], torch.ones(b, 1))
        h = policy.observe(h, hist[x], problems.answer(x, step))
        guesses.append(policy.guess_logits(h).log_softmax(-1))
    return torch.stack(asked, 1), torch.stack(logps, 1), torch.stack(ents, 1), torch.stack(guesses, 1)


def guess_loss(guess_logps: Tensor, thresholds: Tensor) -> Tensor:
    """Cross-entropy of the guess after every answer, ``[B]`` (mean over the T + 1 guesses)."""
    idx = thresholds[:, None, None].expand(-1, guess_logps.shape[1], 1)
    return -guess_logps.gather(-1, idx).squeeze(-1).mean(1)


def query_loss(query_logps: Tensor, entropies: Tensor, guess_logps: Tensor, thresholds: Tensor,
               entropy_coef: float, gamma: float = 1.0) -> Tensor:
    """REINFORCE for the queries, ``[B]``. The answer to query ``s`` earns ``r_s = log q_{s+1}(t) - log q_s(t)``
    (``q_s`` the guess after ``s`` answers: what that answer taught the guesser); query ``s`` is credited with
    ``sum_k gamma^(k-s) r_k`` over ``k >= s``, less its batch mean. With ``gamma = 1`` that is
    ``log q_T(t) - log q_s(t)``, the final return less a baseline that depends only on the past."""
    idx = thresholds[:, None, None].expand(-1, guess_logps.shape[1], 1)
    truth = guess_logps.gather(-1, idx).squeeze(-1).detach().clamp(min=-10.0)  # [B, T + 1]
    return progress_loss(query_logps, entropies, truth, entropy_coef, gamma)


def progress_loss(query_logps: Tensor, entropies: Tensor, quality: Tensor, entropy_coef: float,
                  gamma: float = 1.0) -> Tensor:
    """REINFORCE on progress, ``[B]``: ``quality [B, T + 1]`` scores what is known after 0..T answers; the
    answer to query ``s`` earns ``r_s = quality[s + 1] - quality[s]`` and query ``s`` is credited with
    ``sum_k gamma^(k-s) r_k`` over ``k >= s``, less its batch mean; plus an entropy bonus."""
    rewards = quality[:, 1:] - quality[:, :-1]
    adv, running = torch.zeros_like(rewards), torch.zeros(len(rewards))
    for s in reversed(range(rewards.shape[1])):
        running = rewards[:, s] + gamma * running
        adv[:, s] = running
    adv = adv - adv.mean(0, keepdim=True)
    return -(adv * query_logps).sum(1) - entropy_coef * entropies.sum(1)


class RobustAdversary:
    """Picks training problems for the robust objective: the class with the largest regret, and within it the
    thresholds the policy does worst on. ``losses[r, t]`` is a running mean of the 0/1 error on instance
    ``(r, t)``; ``best[r]`` the per-class reference (0 when unknown: then the objective is plain minimax)."""

    def __init__(self, n_classes: int, n: int, best=None, temperature: float = 0.1, explore: float = 0.25,
                 decay: float = 0.8):
        self.losses = torch.full((n_classes, n), 0.5)
        self.best = torch.zeros(n_classes) if best is None else torch.as_tensor(best, dtype=torch.float32)
        if self.best.shape != (n_classes,):
            raise ValueError(f"robust adversary: best must have one value per class ({n_classes}), got "
                             f"{list(self.best.shape)}")
        self.temperature, self.explore, self.decay = temperature, explore, decay

    def regret(self) -> Tensor:
        """Per class: worst-case running loss less the class's reference, ``[C]``."""
        return self.losses.max(1).values - self.best

    def sample(self, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(classes [batch], thresholds [batch])``: a share ``explore`` uniform, the rest adversarial."""
        c, n = self.losses.shape
        k = int(round(batch * self.explore))
        cls = torch.multinomial(torch.softmax(self.regret() / self.temperature, 0), batch - k, True, generator=gen)
        t = torch.multinomial(torch.softmax(self.losses[cls] / self.temperature, 1), 1, generator=gen).squeeze(1)
        return (torch.cat([cls, torch.randint(0, c, (k,), generator=gen)]),
                torch.cat([t, torch.randint(0, n, (k,), generator=gen)]))

    def update(self, classes: Tensor, thresholds: Tensor, errors: Tensor) -> None:
        """Move the running loss of every instance in the batch toward its mean error there."""
        c, n = self.losses.shape
        flat = classes * n + thresholds
        total = torch.zeros(c * n).index_add_(0, flat, errors.float())
        count = torch.zeros(c * n).index_add_(0, flat, torch.ones(len(flat)))
        seen = count > 0
        view = self.losses.view(-1)
        view[seen] = self.decay * view[seen] + (1 - self.decay) * total[seen] / count[seen]


def train_query_policy(cfg: ActiveConfig, best=None, progress: bool = False, log=None) -> QueryPolicy:
    """A query policy trained on ``cfg.prior``'s problems (``best``: the robust prior's per-class references).
    ``log(iteration, policy, running_error)`` is called every 100 iterations when given."""
    policy = make_query_policy(cfg)
    running = 1.0
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    levels = torch.as_tensor(cfg.noise_levels, dtype=torch.float32)
    adversary = RobustAdversary(len(levels), cfg.n, best, cfg.temperature, cfg.explore, cfg.decay)
    with single_thread():
        for it in tqdm(range(cfg.iterations), desc=f"learn to ask ({cfg.prior})", disable=not progress):
            seed = cfg.seed * 1_000_003 + it
            if cfg.prior == "uniform":
                problems = sample_problems(cfg.batch, cfg.budget, cfg.n, cfg.noise_levels, seed)
                classes = None
            else:
                classes, t = adversary.sample(cfg.batch, gen)
                problems = make_problems(t, levels[classes], cfg.budget, cfg.n, seed)
            _, logps, ents, guesses = rollout(policy, problems, gen=gen)
            loss = (guess_loss(guesses, problems.thresholds)
                    + query_loss(logps, ents, guesses, problems.thresholds, cfg.entropy, cfg.gamma)).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            errors = problems.error(guesses[:, -1].argmax(-1).detach())
            running = 0.95 * running + 0.05 * float(errors.mean())
            if classes is not None:
                adversary.update(classes, problems.thresholds, errors)
            if log is not None and (it + 1) % 100 == 0:
                log(it + 1, policy, running)
    return policy


def save_query_policy(policy: QueryPolicy, cfg, path: str | Path) -> None:
    """A query policy's weights with the config (a dataclass) it was trained with."""
    torch.save({"config": asdict(cfg), "state": policy.state_dict()}, path)


def read_query_policy(path: str | Path, config_type: type, make: Callable) -> tuple[QueryPolicy, Any]:
    """A policy saved by :func:`save_query_policy`: its config as ``config_type`` (lists back to tuples)
    and the policy ``make(cfg)`` builds, with the saved weights."""
    blob = torch.load(path, weights_only=True)
    cfg = config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items()})
    policy = make(cfg)
    policy.load_state_dict(blob["state"])
    return policy, cfg


def load_query_policy(path: str | Path = SHIPPED) -> tuple[QueryPolicy, ActiveConfig]:
    """A saved threshold-toy policy and the config it was trained with."""
    return read_query_policy(path, ActiveConfig, make_query_policy)


@torch.no_grad()
def policy_guess(policy: QueryPolicy, problems: Problems) -> tuple[Tensor, Tensor]:
    """Greedy queries and the final guess (the guess head's mode): ``(asked [B, T], guess [B])``."""
    asked, _, _, guesses = rollout(policy, problems, greedy=True)
    return asked, guesses[:, -1].argmax(-1)


def class_errors(answer, cfg: ActiveConfig, repeats: int = 100, seed: int = 10_000) -> Tensor:
    """Mean 0/1 error of ``answer(problems) -> guess`` on every instance, ``[classes, n]`` (``repeats`` noise
    draws per instance); its row maxima are the per-class worst cases."""
    t = torch.arange(cfg.n).repeat(repeats)
    rows = []
    for i, p in enumerate(cfg.noise_levels):
        problems = make_problems(t, p, cfg.budget, cfg.n, seed + i)
        rows.append(problems.error(answer(problems)).view(repeats, cfg.n).mean(0))
    return torch.stack(rows)


def answerers(p_hat: float = 0.1) -> dict:
    """The hand-designed rules as ``problems -> guess`` functions."""
    return {rule: (lambda pr, r=rule: run_rule(r, pr, p_hat)[1]) for rule in ("uncertainty", "bisection")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Learning to Actively Learn on the noisy threshold toy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--references", choices=("trained", "rules"), default="trained",
                    help="per-class references: a policy trained on each class alone, or (cheaper) the best "
                         "hand-designed rule told the class's true flip rate")
    ap.add_argument("--held-out", type=int, default=1000, help="held-out problems for the paired comparison")
    ap.add_argument("--plot", default=None, help="save per-class worst-case errors as a bar chart (PNG)")
    ap.add_argument("--save", default=None, help="only train the uniform-prior policy and save it to this file")
    args = ap.parse_args(argv)
    if args.save:
        cfg = ActiveConfig(iterations=args.iterations, seed=args.seed)
        save_query_policy(train_query_policy(cfg, progress=True), cfg, args.save)
        print(f"saved {args.save}")
        return 0
    base = ActiveConfig(iterations=args.iterations, seed=args.seed)
    best = []
    for p in base.noise_levels:
        one = ActiveConfig(iterations=args.iterations, seed=args.seed, noise_levels=(p,), prior="robust")
        if args.references == "trained":
            ref = train_query_policy(one, progress=True)
            refs = [lambda pr, ref=ref: policy_guess(ref, pr)[1]]
        else:
            refs = list(answerers(p_hat=max(p, 1e-3)).values())
        best.append(min(float(class_errors(fn, one)[0].max()) for fn in refs))
    methods = dict(answerers())
    for prior in PRIORS:
        pol = train_query_policy(ActiveConfig(iterations=args.iterations, seed=args.seed, prior=prior),
                                 best=best if prior == "robust" else None, progress=True)
        methods[f"learned ({prior})"] = lambda pr, pol=pol: policy_guess(pol, pr)[1]
    held = sample_problems(args.held_out, base.budget, base.n, base.noise_levels, seed=1_000_000 + args.seed)
    errors = {name: held.error(fn(held)).numpy() for name, fn in methods.items()}
    tables = {name: class_errors(fn, base) for name, fn in methods.items()}
    print(f"per-class reference worst-case errors: {np.round(best, 3).tolist()}")
    print(f"{'method':22s} held-out error     " + "  ".join(f"worst p={p}" for p in base.noise_levels)
          + "  worst regret")
    for name, err in errors.items():
        m, se = mean_se(err)
        worst = tables[name].max(1).values
        print(f"{name:22s} {m:.3f} +- {se:.3f}    " + "  ".join(f"{w:11.3f}" for w in worst.tolist())
              + f"  {float((worst - torch.tensor(best)).max()):12.3f}")
    for name in ("learned (uniform)", "learned (robust)"):
        g, se = paired_gain(errors["uncertainty"], errors[name])
        print(f"{name} vs uncertainty sampling, paired error reduction: {g:.3f} +- {se:.3f}")
    if args.plot:
        from rlxf.lab.report import plt, save_figure  # plotting only for the command-line report

        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.8 / len(tables)
        for i, (name, table) in enumerate(tables.items()):
            ax.bar(np.arange(len(base.noise_levels)) + i * width, table.max(1).values.numpy(), width, label=name)
        ax.set_xticks(np.arange(len(base.noise_levels)) + 0.4 - width / 2, [f"p = {p}" for p in base.noise_levels])
        ax.set_ylabel("worst-case 0/1 error in class")
        ax.legend(fontsize=8)
        save_figure(fig, Path(args.plot))
        print(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
