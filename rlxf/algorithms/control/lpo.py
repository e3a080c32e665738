"""LPO and TA-LPO inner loop: many PPO-style agents trained at once, each with its own drift.

Lu et al., "Discovered Policy Optimisation" (LPO), and Jackson et al., "Discovering Temporally-Aware
Reinforcement Learning Algorithms" (TA-LPO); notes in ALGORITHMS-control-prompts.md section C7. The
policy loss is :func:`rlxf.objectives.mirror.mirror_policy_loss`, ``-(r A - D(r, A))``; ``D`` is PPO's
clip, the closed-form DPO drift, or :class:`NeuralDrift`: ``ReLU(f_phi(x) - 1e-4)`` with ``f`` a bias-free
tanh MLP on :func:`~rlxf.objectives.mirror.drift_features` (TA-LPO adds ``n / N`` to its input).

Meta-learning evaluates a whole population of drifts per step, so :func:`train_agents` trains ``P``
agents side by side as batched tensors: agent ``p`` (actor and critic MLPs, weights in row ``p`` of one
``[P, D]`` tensor) plays ``n_envs`` copies of a :mod:`rlxf.tasks.torch_control` env (its own *level* of
physics if given) and is updated with drift row ``p``. The update is PPO's (GAE, advantages normalised
per minibatch, several epochs of minibatch Adam with per-agent gradient-norm clipping, a value loss);
simplifications: the lr is constant, and an episode end by the time limit is treated like a
termination (no bootstrap through it). The score of an agent is the mean greedy return of
``eval_envs`` fresh episodes after its last update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rlxf.algorithms.control.rollout import grid_advantages
from rlxf.objectives.mirror import clip_drift, dpo_drift, drift_features, mirror_policy_loss
from rlxf.policies.control import single_thread
from rlxf.tasks.torch_control import make_torch_env

# (ratio [P, M], adv [P, M], progress n/N) -> drift [P, M]
Drift = Callable[[Tensor, Tensor, float], Tensor]


class BatchedMLP:
    """The weights of ``P`` independent tanh MLPs with layer ``sizes`` as rows of one ``[P, dim]`` tensor."""

    def __init__(self, sizes: list[int], bias: bool = True):
        self.sizes, self.bias = sizes, bias
        self.layers = list(zip(sizes[:-1], sizes[1:]))
        self.dim = sum(a * b + (b if bias else 0) for a, b in self.layers)

    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        """``flat [P, dim]``, ``x [P, B, in] -> [P, B, out]``."""
        off, P = 0, flat.shape[0]
        for i, (a, b) in enumerate(self.layers):
            w = flat[:, off : off + a * b].view(P, a, b)
            off += a * b
            if self.bias:
                x = torch.baddbmm(flat[:, off : off + b].unsqueeze(1), x, w)
                off += b
            else:
                x = torch.bmm(x, w)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x

    def init(self, P: int, gen: torch.Generator, out_gain: float) -> Tensor:
        """Orthogonal weights (gain sqrt 2, last layer ``out_gain``), zero biases: the usual PPO recipe."""
        rows = []
        for _ in range(P):
            parts = []
            for i, (a, b) in enumerate(self.layers):
                w = torch.empty(b, a)
                torch.nn.init.orthogonal_(w, gain=out_gain if i == len(self.layers) - 1 else math.sqrt(2), generator=gen)
                parts.append(w.t().reshape(-1))
                if self.bias:
                    parts.append(torch.zeros(b))
            rows.append(torch.cat(parts))
        return torch.stack(rows)


class NeuralDrift:
    """LPO's learned drift ``ReLU(f_phi(x) - 1e-4)``; ``phi`` is ``[dim]`` (one drift for every agent) or
    ``[P, dim]`` (one per agent). ``temporal``: TA-LPO's ``[x, (n/N) x]`` input."""

    def __init__(self, phi: Tensor, hidden: int = 32, temporal: bool = False):
        self.temporal, self.hidden = temporal, hidden
        self.net = drift_net(hidden, temporal)
        if phi.shape[-1] != self.net.dim:
            raise ValueError(f"NeuralDrift: phi has {phi.shape[-1]} weights, a {'TA-' if temporal else ''}LPO drift "
                             f"of hidden {hidden} needs {self.net.dim}")
        self.phi = phi

    def __call__(self, ratio: Tensor, adv: Tensor, progress: float = 0.0) -> Tensor:
        x = drift_features(ratio, adv, progress if self.temporal else None)
        phi = self.phi if self.phi.dim() == 2 else self.phi.expand(x.shape[0], -1)
        return torch.relu(self.net.forward(phi, x).squeeze(-1) - 1e-4)


def drift_net(hidden: int, temporal: bool) -> BatchedMLP:
    return BatchedMLP([16 if temporal else 8, hidden, hidden, 1], bias=False)


def clip(eps: float = 0.2) -> Drift:
    return lambda r, a, progress=0.0: clip_drift(r, a, eps=eps)


BUILTIN_DRIFTS: dict[str, Drift] = {"clip": clip(0.2), "dpo": dpo_drift}


@dataclass
class InnerConfig:
    env: str = "cartpole"
    updates: int = 30  # N: the agent's lifetime in updates
    n_envs: int = 16  # per agent
    n_steps: int = 32  # per env per update
    epochs: int = 4
    minibatches: int = 2
    lr: float = 3e-3
    gamma: float = 0.99
    lam: float = 0.95
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 32
    eval_envs: int = 16
    max_steps: int | None = None  # episode time limit (None: the env's own, 500)


def _sample(logits: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    logp = torch.log_softmax(logits, -1)
    a = torch.multinomial(logp.exp().reshape(-1, logp.shape[-1]), 1, generator=gen).view(logp.shape[:-1])
    return a, logp.gather(-1, a.unsqueeze(-1)).squeeze(-1)


def _repeat_levels(levels: dict[str, Tensor] | None, per: int) -> dict | None:
    return None if levels is None else {k: torch.as_tensor(v).repeat_interleave(per) for k, v in levels.items()}


def train_agents(drift: Drift, n_agents: int, cfg: InnerConfig, seed: int = 0, levels: dict[str, Tensor] | None = None,
                 init_pairs: bool = False, init_groups: int = 1) -> dict[str, Tensor]:
    """Train ``n_agents`` agents for ``cfg.updates`` updates with ``drift``; returns ``final [P]`` (mean greedy
    eval return) and ``curve [updates, P]`` (mean return of the episodes each agent finished in each update,
    NaN where none did). ``levels``: per-agent env params (``[P]`` tensors). ``init_pairs``: agents ``i`` and
    ``i + P/2`` start from the same weights (common random numbers for antithetic ES pairs); ``init_groups = g``
    generalises it: agents ``i``, ``i + P/g``, ... share weights (one seed index under ``g`` methods)."""
    with single_thread():
        return _train(drift, n_agents, cfg, seed, levels, 2 if init_pairs else init_groups)


def _train(drift, P, cfg, seed, levels, groups):
    if P % groups:
        raise ValueError(f"train_agents: {P} agents do not split into {groups} groups of equal size")
    gen = torch.Generator().manual_seed(seed)
    E, T = cfg.n_envs, cfg.n_steps
    kw = {} if cfg.max_steps is None else {"max_steps": cfg.max_steps}
    env_kw = dict(kw, params=_repeat_levels(levels, E)) if levels is not None else kw
    env = make_torch_env(cfg.env, P * E, seed=seed, **env_kw)
    d, A = env.obs_dim, env.n_actions
    actor, critic = BatchedMLP([d, cfg.hidden, cfg.hidden, A]), BatchedMLP([d, cfg.hidden, cfg.hidden, 1])
    n_init = P // groups
    theta = torch.cat([actor.init(n_init, gen, 0.01), critic.init(n_init, gen, 1.0)], 1).repeat(groups, 1)
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=cfg.lr, eps=1e-5)
    split = actor.dim
    pi = lambda th, o: actor.forward(th[:, :split], o)  # noqa: E731
    vf = lambda th, o: critic.forward(th[:, split:], o).squeeze(-1)  # noqa: E731
    obs = env.reset().view(P, E, d)
    ep_ret = torch.zeros(P * E)
    curve = torch.full((cfg.updates, P), float("nan"))
    M = E * T
    mb = M // cfg.minibatches
    for n in range(cfg.updates):
        buf = {k: [] for k in ("obs", "act", "logp", "val", "rew", "done")}
        done_sum, done_cnt = torch.zeros(P * E), torch.zeros(P * E)
        with torch.no_grad():
            th = theta.detach()
            for _ in range(T):
                a, logp = _sample(pi(th, obs), gen)
                step = env.step(a.reshape(-1))
                ep_ret += step.reward.float()
                done_sum += ep_ret * step.done
                done_cnt += step.done.float()
                ep_ret = ep_ret * ~step.done
                for k, v in (("obs", obs), ("act", a), ("logp", logp), ("val", vf(th, obs)),
                             ("rew", step.reward.float().view(P, E)), ("done", step.done.float().view(P, E))):
                    buf[k].append(v)
                obs = step.obs.view(P, E, d)
            finished = done_cnt.view(P, E).sum(1)
            curve[n] = torch.where(finished > 0, done_sum.view(P, E).sum(1) / finished.clamp(min=1), float("nan"))
            adv = _advantages(buf, vf(th, obs), cfg.gamma, cfg.lam)  # [P, E, T]
            ret = adv + torch.stack(buf["val"], -1)
        flat = lambda k: torch.stack(buf[k], 2).reshape(P, M, *buf[k][0].shape[2:])  # noqa: E731
        b_obs, b_act, b_logp = flat("obs"), flat("act"), flat("logp")
        b_adv, b_ret = adv.reshape(P, M), ret.reshape(P, M)
        progress = n / cfg.updates
        for _ in range(cfg.epochs):
            perm = torch.randperm(M, generator=gen)
            for s in range(0, M, mb):
                idx = perm[s : s + mb]
                o, act, old, ad, rt = b_obs[:, idx], b_act[:, idx], b_logp[:, idx], b_adv[:, idx], b_ret[:, idx]
                ad = (ad - ad.mean(1, keepdim=True)) / (ad.std(1, keepdim=True) + 1e-8)
                logp = torch.log_softmax(pi(theta, o), -1).gather(-1, act.unsqueeze(-1)).squeeze(-1)
                ratio = torch.exp(logp - old)
                pg = mirror_policy_loss(ratio, ad, drift(ratio, ad, progress)).mean(1)
                vl = 0.5 * ((vf(theta, o) - rt) ** 2).mean(1)
                loss = (pg + cfg.vf_coef * vl).sum()  # agents are independent: the sum's gradient is each one's own
                opt.zero_grad(set_to_none=False)
                loss.backward()
                with torch.no_grad():
                    norm = theta.grad.norm(dim=1, keepdim=True)
                    theta.grad.mul_(torch.clamp(cfg.max_grad_norm / (norm + 1e-6), max=1.0))
                opt.step()
    final = evaluate_agents(lambda o: pi(theta.detach(), o), cfg, P, seed + 1, levels)
    return {"final": final, "curve": curve, "theta": theta.detach()}


def _advantages(buf: dict, last_value: Tensor, gamma: float, lam: float) -> Tensor:
    """GAE on the ``[P, E, T]`` rollout by the shared :func:`grid_advantages`; every episode end counts
    as a termination here (no bootstrap through the time limit: see the module docstring)."""
    rew, done, val = (torch.stack(buf[k], -1) for k in ("rew", "done", "val"))
    shape, rows = rew.shape, rew.shape[0] * rew.shape[1]
    flat = lambda t: t.reshape(rows, -1)  # noqa: E731
    zeros = torch.zeros(rows, shape[-1])
    adv, _ = grid_advantages(flat(rew), flat(val), flat(done), flat(done), zeros, zeros, last_value.reshape(rows),
                             gamma, lam)
    return adv.view(shape)


@torch.no_grad()
def evaluate_agents(policy: Callable[[Tensor], Tensor], cfg: InnerConfig, P: int, seed: int,
                    levels: dict[str, Tensor] | None = None) -> Tensor:
    """Mean undiscounted return of one greedy episode in each of ``cfg.eval_envs`` fresh envs per agent, ``[P]``."""
    E = cfg.eval_envs
    kw = {} if cfg.max_steps is None else {"max_steps": cfg.max_steps}
    env = make_torch_env(cfg.env, P * E, seed=seed, **(dict(kw, params=_repeat_levels(levels, E)) if levels is not None else kw))
    obs = env.reset()
    total, alive = torch.zeros(P * E), torch.ones(P * E, dtype=torch.bool)
    for _ in range(env.max_steps):
        step = env.step(policy(obs.view(P, E, -1)).argmax(-1).reshape(-1))
        total += step.reward.float() * alive
        alive &= ~step.done
        obs = step.obs
        if not alive.any():
            break
    return total.view(P, E).mean(1)


def grouped(drifts: list[Drift], per: int) -> Drift:
    """One drift for ``len(drifts) * per`` agents: agents ``[i * per, (i + 1) * per)`` use ``drifts[i]``
    (so several methods train in one batched run)."""
    def drift(ratio: Tensor, adv: Tensor, progress: float = 0.0) -> Tensor:
        return torch.cat([d(ratio[i * per : (i + 1) * per], adv[i * per : (i + 1) * per], progress)
                          for i, d in enumerate(drifts)])
    return drift
