"""ONI: intrinsic rewards learned online from an LM's judgements of event captions, added to PPO's reward.

Zheng, Henaff, Zhang, Grover, Amos, "Online Intrinsic Rewards for Decision Making Agents from Large
Language Model Feedback" (2024). While PPO trains, every new caption the agent produces is sent to an
LM labeller ("does this event make progress?"). The labeller is asynchronous: a reply arrives ``latency``
environment steps after the question, and at most ``per_step`` questions are answered per environment
step of throughput. Replies are distilled into an intrinsic reward model the learner reads on every
transition:

- ``hash`` (ONI-Retrieval): a table caption -> label; a caption not yet labelled earns 0;
- ``classifier`` (ONI-Classification): a logistic regression on the caption's bag of words, refit when
  labels arrive, rewarding 1 where its probability exceeds 0.5, so unlabelled captions that share words
  with labelled ones are rewarded too;
- ``none``: extrinsic-only PPO, the baseline.

The per-step reward is ``c_ext * r_env + c_llm * r_int(caption) / N(caption)^beta``
(:func:`oni_reward`), ``N`` the number of times the caption has occurred so far in the episode, this
step included: repeats of an easy event pay less and less. The task is
:mod:`rlxf.agents.tasks.caption_grid`; the labeller is any :class:`~rlxf.labelers.roles.TextModel`
(tests use :func:`progress_judge`, a :class:`~rlxf.labelers.roles.SimulatedRole` with a set error rate).
Differences from the paper: PPO on one process instead of APPO, a simulated labeller by default, and
the queue's latency counted in environment steps (deterministic) rather than wall-clock time.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from rlxf.agents.tasks.caption_grid import PROGRESS, CaptionGrid
from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import Rollout
from rlxf.labelers.roles import SimulatedRole, TextModel

VARIANTS = ("hash", "classifier", "none")
QUESTION = "In a dungeon game, does this event show progress toward finishing the level? Event: \"{caption}\". Answer yes or no."


def oni_reward(env_reward: Tensor, intrinsic: Tensor, counts: Tensor, c_ext: float, c_llm: float,
               beta: float) -> Tensor:
    """``c_ext * r_env + c_llm * r_int / N^beta`` elementwise; where ``counts`` is 0 (no caption) the
    intrinsic term is 0."""
    decay = counts.clamp(min=1).float().pow(-beta)
    return c_ext * env_reward + c_llm * torch.where(counts > 0, intrinsic * decay, torch.zeros_like(intrinsic))


def episode_counts(captions: list[list[str]], done: Tensor, running: list[Counter]) -> Tensor:
    """``N`` of each step's caption within its episode (0 for an empty caption), ``[n_envs, T]``.

    ``running`` holds each env's counts from earlier rollouts of the same episode; it is updated in
    place and cleared after a done step, so the counts carry across rollouts but not across episodes.
    """
    out = torch.zeros(done.shape, dtype=torch.long)
    for n, row in enumerate(captions):
        for t, caption in enumerate(row):
            if caption:
                running[n][caption] += 1
                out[n, t] = running[n][caption]
            if done[n, t]:
                running[n].clear()
    return out


def parse_label(reply: str) -> int | None:
    """1 for a reply that starts with yes, 0 for no, None otherwise."""
    words = reply.strip().lower().split()
    first = words[0].strip(".,!:;\"'") if words else ""
    return {"yes": 1, "no": 0}.get(first)


def caption_of(question: str) -> str:
    """The caption inside a :data:`QUESTION` (what a simulated judge reads)."""
    return question.split('Event: "', 1)[1].rsplit('"', 1)[0]


def progress_judge(error: float = 0.1, seed: int = 0) -> SimulatedRole:
    """A simulated LM judge: "yes" for captions of real progress (a key picked up, a door unlocked, the
    stairs), "no" otherwise; with probability ``error`` the answer is flipped."""
    def right(question: str) -> str:
        return "yes" if any(p in caption_of(question) for p in PROGRESS) else "no"

    def wrong(question: str, reply: str, rng: random.Random) -> str:
        return "no" if reply == "yes" else "yes"

    return SimulatedRole(right, wrong, error=error, seed=seed)


class AsyncLabeller:
    """A queue in front of a :class:`TextModel`: each new caption is asked once, and its label becomes
    available ``latency`` environment steps after it was asked, throughput-limited to ``per_step``
    answers per environment step (a backlog waits). Unparseable replies count as 0 and in ``bad_replies``."""

    def __init__(self, judge: TextModel, latency: int = 0, per_step: float = 1.0):
        if latency < 0 or per_step <= 0:
            raise ValueError(f"AsyncLabeller: latency must be >= 0 and per_step > 0, got {latency}, {per_step}")
        self.judge, self.latency, self.per_step = judge, latency, per_step
        self.asked: set[str] = set()
        self.pending: list[tuple[int, str]] = []  # (step asked, caption), oldest first
        self.served_until = 0.0  # the env step by which the queue has served everyone before
        self.bad_replies = 0

    def submit(self, captions, step: int) -> None:
        for c in captions:
            if c and c not in self.asked:
                self.asked.add(c)
                self.pending.append((step, c))

    def ready(self, step: int) -> dict[str, int]:
        """Labels of the pending captions whose answer time has come by env step ``step``."""
        due: list[str] = []
        while self.pending:
            asked_at, caption = self.pending[0]
            done_at = max(asked_at + self.latency, self.served_until + 1.0 / self.per_step)
            if done_at > step:
                break
            self.served_until = done_at
            due.append(caption)
            self.pending.pop(0)
        if not due:
            return {}
        labels = [parse_label(r) for r in self.judge.complete([QUESTION.format(caption=c) for c in due])]
        self.bad_replies += sum(label is None for label in labels)
        return {c: label or 0 for c, label in zip(due, labels)}


class HashReward:
    """ONI-Retrieval: the label of a caption the judge has answered, 0 for any other."""

    def __init__(self):
        self.table: dict[str, int] = {}

    def update(self, labels: dict[str, int]) -> None:
        self.table.update(labels)

    def __call__(self, captions: list[str]) -> Tensor:
        return torch.tensor([float(self.table.get(c, 0)) for c in captions])


class ClassifierReward(HashReward):
    """ONI-Classification: logistic regression on bag-of-words caption features over ``vocab`` (weights
    start at 0, so a word never seen in a labelled caption adds nothing), refit on every labelled caption
    by ``steps`` full-batch Adam steps whenever labels arrive; reward 1 where ``p > 0.5``."""

    def __init__(self, vocab: list[str], steps: int = 100, lr: float = 0.1):
        super().__init__()
        self.index = {w: i for i, w in enumerate(vocab)}
        self.weight = torch.zeros(len(vocab), requires_grad=True)
        self.bias = torch.zeros((), requires_grad=True)
        self.opt = torch.optim.Adam([self.weight, self.bias], lr=lr)
        self.steps = steps

    def features(self, captions: list[str]) -> Tensor:
        x = torch.zeros(len(captions), len(self.index))
        for i, c in enumerate(captions):
            for w in c.split():
                if w in self.index:
                    x[i, self.index[w]] = 1.0
        return x

    def probability(self, captions: list[str]) -> Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.features(captions) @ self.weight + self.bias)

    def update(self, labels: dict[str, int]) -> None:
        super().update(labels)
        if not labels:
            return
        captions = sorted(self.table)
        x, y = self.features(captions), torch.tensor([float(self.table[c]) for c in captions])
        for _ in range(self.steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ self.weight + self.bias, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    def __call__(self, captions: list[str]) -> Tensor:
        return (self.probability(captions) > 0.5).float()


@dataclass
class ONIConfig:
    """ONI on the caption grid. PPO: the control defaults except longer rollouts (8 x 64 steps), 4 epochs,
    gamma 0.99, lambda 0.95 and an entropy bonus of 0.01, for 40960 env steps; ``c_llm``, ``beta`` as in
    the paper (0.4 and 3), ``c_ext`` 1 since the grid's only reward is the +1 at the stairs."""

    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(n_envs=8, n_steps=64, total_steps=40_960, epochs=4,
                                                             minibatch_size=256, lr=1e-3, gamma=0.99, lam=0.95,
                                                             ent_coef=0.01, hidden=64))
    variant: str = "hash"
    c_ext: float = 1.0
    c_llm: float = 0.4
    beta: float = 3.0
    latency: int = 256  # env steps from question to answer
    per_step: float = 0.05  # answers per env step (one every 20 steps)
    judge_error: float = 0.1
    grid: dict = field(default_factory=dict)  # CaptionGrid keyword arguments
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"oni.variant: unknown {self.variant!r}; expected one of {VARIANTS}")


class ONI:
    """PPO whose reward hook adds the online intrinsic reward (see the module docstring)."""

    def __init__(self, cfg: ONIConfig, judge: TextModel | None = None):
        self.cfg = cfg
        self.ppo_cfg = PPOConfig(**{**cfg.ppo.__dict__, "seed": cfg.seed})
        self.ppo = PPO(self.ppo_cfg, lambda: CaptionGrid(**cfg.grid))
        self.grids: list[CaptionGrid] = [e.unwrapped for e in self.ppo.env.envs.envs]
        self.labeller = AsyncLabeller(judge or progress_judge(cfg.judge_error, cfg.seed), cfg.latency, cfg.per_step)
        self.model = (ClassifierReward(self.grids[0].words()) if cfg.variant == "classifier" else HashReward())
        self.running = [Counter() for _ in self.grids]
        self.intrinsic_paid = 0.0

    def rewards(self, ppo: PPO, ro: Rollout) -> Tensor:
        """PPO's reward hook: read the rollout's captions, queue new ones, take the labels that are due,
        and return the per-step ONI reward ``[n_envs, T]``."""
        width = ro.rewards.shape[1]
        captions = [g.take_captions(width) for g in self.grids]
        if self.cfg.variant == "none":
            return self.cfg.c_ext * ro.rewards
        start = ppo.steps_done - ro.n_steps
        for t in range(width):  # asked in the order the steps happened
            self.labeller.submit([row[t] for row in captions], start + (t + 1) * len(captions))
        self.model.update(self.labeller.ready(ppo.steps_done))
        counts = episode_counts(captions, ro.done, self.running)
        intrinsic = torch.stack([self.model(row) for row in captions])
        total = oni_reward(ro.rewards, intrinsic, counts, self.cfg.c_ext, self.cfg.c_llm, self.cfg.beta)
        self.intrinsic_paid += float((total - self.cfg.c_ext * ro.rewards).sum())
        return total

    def train(self, eval_every: int = 0, n_eval: int = 20) -> list[dict]:
        return self.ppo.learn(self.rewards, eval_every=eval_every, n_eval=n_eval)

    def success_rate(self, n_episodes: int = 100, seed: int = 10_000) -> np.ndarray:
        """Per-episode success (1 at the stairs, else 0) of the greedy policy on fresh seeded grids."""
        return self.ppo.evaluate(n_episodes, seed)


__all__ = ["AsyncLabeller", "ClassifierReward", "HashReward", "ONI", "ONIConfig", "episode_counts", "oni_reward",
           "parse_label", "progress_judge"]
