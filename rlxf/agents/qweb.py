"""QWeb and MetaQWeb ("Learning to Navigate the Web", Gur et al. 2019) on the synthetic websites of
:mod:`rlxf.agents.tasks.web`.

QWeb is a DQN whose action is composite: a page element (a link, a form field, the submit button), click or
type, and when typing, which instruction field's value to type. Its Q-function factorises over those parts,
``Q(s, e, click) = q_elem(e) + q_mode(e)[0]`` and ``Q(s, e, type j) = q_elem(e) + q_mode(e)[1] + q_field(e, j)``,
from encoders of the elements (name, current value, kind), the instruction fields (name, value) and their
alignment (whether the element's name / value equals the field's). Training is DQN: a replay buffer,
epsilon-greedy acting, double-Q targets from a Polyak-averaged target network, truncation bootstrapped;
the updates run on the shared loop (:func:`rlxf.algorithms.loop.train`), each optimiser step first
stepping ``n_envs`` environments once.

Guidance (each a :class:`QWebConfig` switch):

- ``shaping``: potential-based reward ``F = gamma Phi(s') - Phi(s)`` with ``Phi`` the fraction of the task's
  form fields that already hold their goal value (:meth:`WebEnv.matching_fields`);
- ``curriculum`` (warm start): an episode begins after the expert has played all but ``n`` of its actions,
  ``n`` drawn uniformly from 1 up to a limit that grows linearly to the whole episode over the first
  ``curriculum_frac`` of training; the expert's prefix turns are not counted as agent steps;
- ``meta`` (MetaQWeb, no demonstrations and no given instructions): ``meta_rollouts`` random-policy episodes
  are played first (their steps count towards the run's environment steps) and the instruction generator
  (:func:`hindsight_task`) reads each final state and writes an instruction that state satisfies; training
  episodes draw their instructions from that pool only. Every training episode that ends in a submission is
  then relabelled: its actions are replayed under the instruction its submitted form satisfies (the site's
  dynamics do not depend on the task, so this is the same episode, now a success) into the replay buffer,
  and that instruction joins the pool. Training uses the shaped (dense, "match the goal state") reward.

The paper's instruction generator (INET) is itself a learned network; here it is the exact relabelling it
learns to approximate (hindsight), applied to the agent's own rollouts as well as random ones.
:func:`train_qweb` returns a :class:`QWebAgent`, an actor for
:func:`rlxf.agents.episodes.run_episodes`.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from rlxf.agents.env import TextEnv
from rlxf.agents.episodes import TextEpisode
from rlxf.agents.tasks.web import EMPTY, Site, WebEnv, WebTask
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.policies.control import single_thread

LINK, FIELD, SUBMIT, PAD = 0, 1, 2, 3


@dataclass
class QWebConfig:
    """DQN settings and the guidance switches (``shaping``, ``curriculum``, ``meta``; see the module docstring)."""

    steps: int = 1500  # optimiser steps; each first steps n_envs environments once
    n_envs: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    gamma: float = 0.9
    tau: float = 0.05  # Polyak rate of the target network
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_frac: float = 0.5  # fraction of training over which epsilon decays linearly
    buffer: int = 20000
    hidden: int = 32
    dim: int = 16
    max_turns: int = 12
    shaping: bool = False
    curriculum: bool = False
    curriculum_frac: float = 0.6
    meta: bool = False
    meta_rollouts: int = 300
    seed: int = 0


class StateCodec:
    """Turns a :class:`WebEnv`'s structured state into fixed-size integer tensors (padded elements and
    instruction fields) and a composite action ``(element, column)`` back into action text; column 0 is
    click, column ``1 + j`` types instruction field ``j``'s value."""

    def __init__(self, site: Site):
        self.words = {w: i for i, w in enumerate(dict.fromkeys(["<pad>", "submit"] + WebEnv(site).words()))}
        self.n_elems = max(len(p.links) + (len(p.form.fields) + 1 if p.form else 0) for p in site.pages.values())
        self.n_fields = max((len(p.form.fields) for p in site.pages.values() if p.form), default=1)
        self.site = site

    def elements(self, env: WebEnv) -> list[tuple[str, str, int]]:
        page = env.site.pages[env.page]
        out = [(link, EMPTY, LINK) for link in page.links]
        if page.form:
            out += [(f, v, FIELD) for f, v in env.state()["forms"][env.page].items()] + [("submit", EMPTY, SUBMIT)]
        return out

    def encode(self, env: WebEnv) -> torch.Tensor:
        """One int64 row: names[E], values[E], kinds[E], instruction names[J], values[J], page, target,
        then the valid-action mask [E * (1 + J)] as 0/1."""
        E, J, w = self.n_elems, self.n_fields, self.words
        elems = self.elements(env)
        names, values, kinds = [0] * E, [0] * E, [PAD] * E
        valid = torch.zeros(E, 1 + J, dtype=torch.int64)
        instr = list(env.task.values)
        form = env.site.pages[env.page].form
        for i, (name, value, kind) in enumerate(elems):
            names[i], values[i], kinds[i] = w[name], w[value], kind
            if kind != FIELD:
                valid[i, 0] = 1
            else:
                for j, (_, v) in enumerate(instr):
                    valid[i, 1 + j] = int(v in form.fields[name])
        inames = [w[f] for f, _ in instr] + [0] * (J - len(instr))
        ivalues = [w[v] for _, v in instr] + [0] * (J - len(instr))
        head = torch.tensor(names + values + kinds + inames + ivalues + [w[env.page], w[env.task.page]])
        return torch.cat([head, valid.flatten()])

    def split(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        E, J = self.n_elems, self.n_fields
        cuts = [E, E, E, J, J, 1, 1, E * (1 + J)]
        parts = torch.split(rows, cuts, dim=-1)
        keys = ["names", "values", "kinds", "inames", "ivalues", "page", "target", "valid"]
        out = dict(zip(keys, parts))
        out["valid"] = out["valid"].reshape(*rows.shape[:-1], E, 1 + J).bool()
        return out

    def action_index(self, env: WebEnv, text: str) -> int | None:
        """The flat composite index (``element * (1 + J) + column``) of an action text, or None when the
        current task gives no column for it (typing a value the instruction lacks)."""
        C = 1 + self.n_fields
        valid = self.split(self.encode(env))["valid"].flatten()
        return next((a for a in valid.nonzero().flatten().tolist()
                     if self.action_text(env, a // C, a % C) == text), None)

    def action_text(self, env: WebEnv, elem: int, col: int) -> str:
        name, _, kind = self.elements(env)[elem]
        if kind == SUBMIT:
            return "submit"
        if kind == LINK:
            return f"click {name}"
        return f"type {name} {env.task.values[col - 1][1]}"


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


class QWebNet(nn.Module):
    """The factorised Q-function over (element, click/type, instruction field)."""

    def __init__(self, codec: StateCodec, hidden: int = 64, dim: int = 32):
        super().__init__()
        self.codec = codec
        self.emb = nn.Embedding(len(codec.words), dim)
        self.elem = _mlp(2 * dim + 4, hidden, dim)
        self.instr = _mlp(2 * dim + 1, hidden, dim)
        self.ctx = _mlp(4 * dim, hidden, dim)
        self.q_elem = _mlp(2 * dim, hidden, 3)  # q_elem and the two q_mode entries
        # q_field's first layer is linear in (element, field, alignment) parts, so each part is projected
        # once and the [E, J] grid is a broadcast sum rather than an MLP over every pair's concatenation
        self.pair_e = nn.Linear(2 * dim, hidden)
        self.pair_u = nn.Linear(dim, hidden, bias=False)
        self.pair_eq = nn.Linear(2, hidden, bias=False)
        self.pair_out = nn.Linear(hidden, 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """``[B, E, 1 + J]`` Q-values, -inf where the composite action is not available."""
        s = self.codec.split(rows)
        e_mask = (s["kinds"] != PAD).float().unsqueeze(-1)
        j_mask = (s["inames"] != 0).float().unsqueeze(-1)
        name_eq = (s["names"].unsqueeze(-1) == s["inames"].unsqueeze(-2)).float() * j_mask.transpose(1, 2)
        val_eq = (s["values"].unsqueeze(-1) == s["ivalues"].unsqueeze(-2)).float() * j_mask.transpose(1, 2)
        h = self.elem(torch.cat([self.emb(s["names"]), self.emb(s["values"]), F.one_hot(s["kinds"], 4).float()], -1))
        matched = (name_eq * val_eq).amax(1).unsqueeze(-1)  # [B, J, 1]: the field already holds its value
        u = self.instr(torch.cat([self.emb(s["inames"]), self.emb(s["ivalues"]), matched], -1))
        pooled_h = (h * e_mask).sum(1) / e_mask.sum(1).clamp(min=1)
        pooled_u = (u * j_mask).sum(1) / j_mask.sum(1).clamp(min=1)
        c = self.ctx(torch.cat([self.emb(s["page"][:, 0]), self.emb(s["target"][:, 0]), pooled_h, pooled_u], -1))
        he = torch.cat([h, c.unsqueeze(1).expand_as(h)], -1)
        qe = self.q_elem(he)  # [B, E, 3]
        pair = (self.pair_e(he).unsqueeze(2) + self.pair_u(u).unsqueeze(1)
                + self.pair_eq(torch.stack([name_eq, val_eq], -1)))
        qf = self.pair_out(torch.relu(pair)).squeeze(-1)  # [B, E, J]
        q = torch.cat([qe[..., :1] + qe[..., 1:2], qe[..., :1] + qe[..., 2:3] + qf], -1)
        return q.masked_fill(~s["valid"], float("-inf"))


def greedy(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best valid composite action per row of ``[B, E, C]`` Q-values: ``(element, column)``."""
    flat = q.flatten(1).argmax(1)
    return flat // q.shape[2], flat % q.shape[2]


def dqn_loss(net: QWebNet, target: QWebNet, batch: dict[str, torch.Tensor], gamma: float) -> torch.Tensor:
    """Double-DQN Huber loss: the online net picks ``a'``, the target net values it; no bootstrap after a
    terminal step (a truncated one bootstraps)."""
    q = net(batch["obs"]).flatten(1).gather(1, batch["action"].unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        a2 = net(batch["next"]).flatten(1).argmax(1, keepdim=True)
        v2 = target(batch["next"]).flatten(1).gather(1, a2).squeeze(1)
        y = batch["reward"] + gamma * (1.0 - batch["terminal"]) * v2
    return F.smooth_l1_loss(q, y)


class QWebAgent:
    """A trained (or training) QWeb net as an actor: ``agent(envs, episodes) -> actions`` (greedy, or
    epsilon-greedy with ``epsilon`` > 0)."""

    def __init__(self, net: QWebNet, epsilon: float = 0.0, seed: int = 0):
        self.net, self.epsilon, self.rng = net, epsilon, random.Random(seed)

    def choose(self, envs: list[WebEnv]) -> tuple[list[torch.Tensor], list[int]]:
        """The encoded states and the flat composite action index of each env."""
        rows = [self.net.codec.encode(env) for env in envs]
        with torch.no_grad():
            q = self.net(torch.stack(rows))
        e, c = greedy(q)
        C = q.shape[2]
        out = []
        for i, row in enumerate(rows):
            if self.rng.random() < self.epsilon:
                valid = self.net.codec.split(row)["valid"].flatten().nonzero().flatten().tolist()
                out.append(self.rng.choice(valid))
            else:
                out.append(int(e[i]) * C + int(c[i]))
        return rows, out

    def __call__(self, envs: list[TextEnv], episodes: list[TextEpisode]) -> list[str]:
        _, acts = self.choose(envs)
        C = 1 + self.net.codec.n_fields
        return [self.net.codec.action_text(env, a // C, a % C) for env, a in zip(envs, acts)]


def hindsight_task(env: WebEnv) -> WebTask | None:
    """MetaQWeb's instruction generator: the instruction the final state satisfies (the submitted form's
    filled values, or without a submission the form page with the most filled fields), or None when no
    field was filled."""
    forms = env.state()["forms"]
    if env.submitted:
        forms = {env.submitted[0]: env.submitted[1]}
    best = None
    for page, values in forms.items():
        filled = tuple((f, v) for f, v in values.items() if v != EMPTY)
        if filled and (best is None or len(filled) > len(best.values)) and env.site.path(env.site.start, page):
            best = WebTask(page, filled)
    return best


def generated_tasks(site: Site, n_rollouts: int, max_turns: int, seed: int) -> tuple[list[WebTask], int]:
    """Random-policy rollouts relabelled by :func:`hindsight_task`: the distinct tasks and the env steps used."""
    rng = random.Random(seed)
    tasks, steps = [], 0
    env = WebEnv(site, max_turns=max_turns)
    for k in range(n_rollouts):
        env.reset(seed * 1_000_003 + k)
        while not env.done:
            env.step(env.random_action(rng))
            steps += 1
            if env.submitted:
                break
        task = hindsight_task(env)
        if task is not None and task not in tasks:
            tasks.append(task)
    if not tasks:
        raise ValueError(f"MetaQWeb: no random rollout on site {site.name!r} filled a form field; raise meta_rollouts")
    return tasks, steps


def warm_start(env: WebEnv, seed: int, remaining: int) -> str:
    """Reset ``env`` and play the expert until ``remaining`` of its actions are left (or none played when the
    episode is shorter); the turn counter restarts so the agent keeps its whole budget. Returns the observation."""
    obs = env.reset(seed)
    probe = copy.deepcopy(env)
    plan = []
    while not probe.done:
        plan.append(probe.expert_action())
        probe.step(plan[-1])
    for action in plan[: max(0, len(plan) - remaining)]:
        obs = env.step(action)[0]
    env.turn = 0
    return obs


def train_qweb(site: Site, run: Run, cfg: QWebConfig, stage: str = "qweb", quiet: bool = True) -> tuple[QWebAgent, dict]:
    """Train QWeb (switches in ``cfg``) on ``site``'s random tasks; returns the greedy agent and counters
    (``env_steps``: every environment step taken, generated-task rollouts included)."""
    torch.manual_seed(cfg.seed)
    codec = StateCodec(site)
    net = QWebNet(codec, cfg.hidden, cfg.dim)
    target = copy.deepcopy(net).requires_grad_(False)
    agent = QWebAgent(net, cfg.eps_start, seed=cfg.seed)
    info = {"env_steps": 0, "episodes": 0, "successes": 0}
    tasks = None
    if cfg.meta:
        tasks, used = generated_tasks(site, cfg.meta_rollouts, cfg.max_turns, cfg.seed)
        info.update(env_steps=used, generated_tasks=len(tasks))
    rng = random.Random(cfg.seed + 7)
    envs = [WebEnv(site, tasks=tasks, max_turns=cfg.max_turns) for _ in range(cfg.n_envs)]
    envs[0].reset(0)
    width = codec.encode(envs[0]).shape[0]
    buf = {"obs": torch.zeros(cfg.buffer, width, dtype=torch.int64), "next": torch.zeros(cfg.buffer, width, dtype=torch.int64),
           "action": torch.zeros(cfg.buffer, dtype=torch.int64), "reward": torch.zeros(cfg.buffer),
           "terminal": torch.zeros(cfg.buffer)}
    size = [0]
    episode_seed = [cfg.seed * 1_000_003 + 500_000]

    def start(env: WebEnv, step: int) -> None:
        episode_seed[0] += 1
        if cfg.curriculum:
            limit = 1 + int((cfg.max_turns - 1) * min(1.0, step / max(1.0, cfg.curriculum_frac * cfg.steps)))
            warm_start(env, episode_seed[0], rng.randint(1, limit))
        else:
            env.reset(episode_seed[0])

    played: list[list[str]] = [[] for _ in envs]
    for env in envs:
        start(env, 0)

    def potential(env: WebEnv) -> float:
        return env.matching_fields() / len(env.goal_form()) if cfg.shaping else 0.0

    def push(row: torch.Tensor, action: int, env: WebEnv, phi: float, reward: float, term: bool) -> None:
        i = size[0] % cfg.buffer
        buf["obs"][i], buf["next"][i], buf["action"][i] = row, codec.encode(env), action
        buf["reward"][i] = reward + cfg.gamma * potential(env) - phi
        buf["terminal"][i] = float(term)
        size[0] += 1

    def relabel(env: WebEnv, actions: list[str]) -> None:
        """MetaQWeb: replay a submitted episode's actions under the instruction its submission satisfies
        (the site's dynamics do not depend on the task, so this is the same episode, now a success)."""
        task = hindsight_task(env) if env.submitted else None
        if task is None or task == env.task:
            return
        if task not in tasks:
            tasks.append(task)  # the pool the next episodes' instructions come from
        scratch = WebEnv(site, task=task, max_turns=cfg.max_turns)
        scratch.reset(0)
        for text in actions:
            row, a, phi = codec.encode(scratch), codec.action_index(scratch, text), potential(scratch)
            _, reward, term, _, _ = scratch.step(text)
            if a is not None:
                push(row, a, scratch, phi, reward, term)

    def collect(step: int) -> None:
        agent.epsilon = max(cfg.eps_end, cfg.eps_start - (cfg.eps_start - cfg.eps_end) * step / (cfg.eps_frac * cfg.steps))
        rows, acts = agent.choose(envs)
        C = 1 + codec.n_fields
        for k, (env, row, a) in enumerate(zip(envs, rows, acts)):
            phi, text = potential(env), codec.action_text(env, a // C, a % C)
            _, reward, term, trunc, _ = env.step(text)
            push(row, a, env, phi, reward, term)
            played[k].append(text)
            info["env_steps"] += 1
            if term or trunc:
                info["episodes"] += 1
                info["successes"] += int(env.success())
                if cfg.meta:
                    relabel(env, played[k])
                played[k] = []
                start(env, step)

    def make_batch(step: int) -> list[int]:
        collect(step)
        while size[0] < cfg.batch_size:
            collect(step)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return torch.randint(0, min(size[0], cfg.buffer), (cfg.batch_size,), generator=g).tolist()

    def loss_fn(micro: list[int], batch: list[int]):
        if len(micro) == len(batch) or micro[0] == batch[0]:  # once per optimiser step
            with torch.no_grad():
                for t, s in zip(target.parameters(), net.parameters()):
                    t.lerp_(s, cfg.tau)
        i = torch.tensor(micro)
        loss = dqn_loss(net, target, {k: v[i] for k, v in buf.items()}, cfg.gamma) * len(micro) / len(batch)
        return loss, {"td": loss.item()}

    optim = OptimConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, checkpoint_every=cfg.steps)
    with single_thread():
        train(run, stage, net, optim, make_batch, loss_fn, quiet=quiet)
    return QWebAgent(net, 0.0), info
