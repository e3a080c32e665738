"""Constrained recommendation RL on the ShortVideo simulator: TSCAC and its Lagrangian baseline.

The task (a constrained MDP): maximise the session's watch time while each auxiliary signal (likes,
shares) keeps a per-video rate at or above its target, ``sum_t signal_t >= target * length``; written
per step, the auxiliary reward ``signal_t - target`` must have a non-negative expected return.

- **Lagrangian** (primal-dual, RCPO-style): multi-critic PPO with one critic head per term (watch and
  each auxiliary reward), the actor's advantage ``(A_0 + sum_i lambda_i A_i) / (1 + sum_i lambda_i)``
  (per-term normalised, :func:`combine_advantages`), and after each rollout a projected dual step
  ``lambda_i <- max(0, lambda_i + eta (target_i - rate_i))`` (:func:`constraint_multipliers`).
- **TSCAC** (Cai et al., "Two-Stage Constrained Actor-Critic for Short Video Recommendation", 2023):
  stage one trains one actor-critic ``pi_i`` per auxiliary signal (PPO on that signal alone); stage
  two trains the watch-time policy ``pi_0`` with its own critic to maximise ``E[A_0] - sum_i lambda_i
  KL(pi || pi_i)``, whose solution ``pi* ∝ prod_i pi_i^(lambda_i / S) exp(A_0 / S)`` (``S = sum_i
  lambda_i``) is fitted by the importance-weighted likelihood of :func:`tscac_stage2_loss` on the
  behaviour policy's (here: the current ``pi_0``'s) on-policy samples. The exponents are our
  reconstruction; the lambdas are fixed hyperparameters (no dual search: the paper's point).

Both are scored by :func:`session_metrics` on fresh sessions: per-episode watch time, the pooled
per-video signal rates, and the constraint violation ``sum_i max(0, 1 - rate_i / target_i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rlxf.algorithms.control.ppo import PPO, PPOConfig
from rlxf.algorithms.control.rollout import ZeroCritic, advantages, collect
from rlxf.algorithms.online.constrained import dual_ascent_step
from rlxf.objectives.policy_gradient import value_loss
from rlxf.policies.control import single_thread
from rlxf.tasks.gym_envs import make_env
from rlxf.tasks.short_video import SIGNALS, TERMS

ENV = "rlxf/ShortVideo-v0"
TARGETS = (0.55, 0.26)  # per-video like and share rates; a watch-time-greedy ranker gets about 0.46 and 0.23


@dataclass
class ConstrainedConfig:
    steps: int = 30_000  # env steps per training stage (TSCAC: each stage-1 policy and stage 2; Lagrangian: 3x)
    targets: tuple[float, ...] = TARGETS
    n_envs: int = 8
    n_steps: int = 64
    epochs: int = 4
    minibatch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.95
    lam: float = 0.9
    hidden: int = 64
    dual_lr: float = 2.0  # Lagrangian: the multipliers' step per unit of rate shortfall
    kl_weights: tuple[float, ...] = (0.25, 0.25)  # TSCAC: lambda_i, the pull towards each stage-1 policy
    max_weight: float = 20.0  # TSCAC: the self-normalised importance weights are clipped here
    stage2_epochs: int = 10  # TSCAC: passes of the weighted likelihood over each rollout
    seed: int = 0

    def __post_init__(self):
        if len(self.targets) != len(SIGNALS) or len(self.kl_weights) != len(SIGNALS):
            raise ValueError(f"targets {self.targets} and kl_weights {self.kl_weights} need one entry per signal {SIGNALS}")
        if min(self.kl_weights) < 0 or sum(self.kl_weights) <= 0:
            raise ValueError(f"kl_weights {self.kl_weights} must be >= 0 with a positive sum")

    def ppo(self, steps: int, **kw) -> PPOConfig:
        kw = {"seed": self.seed, **kw}
        return PPOConfig(env=ENV, n_envs=self.n_envs, n_steps=self.n_steps, total_steps=steps, epochs=self.epochs,
                         minibatch_size=self.minibatch_size, lr=self.lr, gamma=self.gamma, lam=self.lam,
                         hidden=self.hidden, **kw)


# -- the two named pieces ---------------------------------------------------------------------


def constraint_multipliers(lambdas: list[float], rates, targets, lr: float) -> list[float]:
    """The Lagrangian's dual step per constraint ``rate_i >= target_i``: ``max(0, lambda_i + lr (target_i -
    rate_i))`` (the shared :func:`dual_ascent_step` with cost ``-rate`` and limit ``-target``)."""
    return [dual_ascent_step(lam, -float(r), -float(t), lr) for lam, r, t in zip(lambdas, rates, targets)]


def tscac_stage2_loss(logp: Tensor, aux_logps: Tensor, behaviour_logp: Tensor, adv: Tensor, kl_weights,
                      max_weight: float = 20.0) -> Tensor:
    """TSCAC's stage-2 loss per sample, ``[B]``: ``-w log pi_0(a|s)`` with

        w ∝ prod_i pi_i(a|s)^(lambda_i / S) / beta(a|s) * exp(A_0(s, a) / S),   S = sum_i lambda_i,

    self-normalised to mean 1 over the batch and clipped at ``max_weight`` (constants). Minimising it
    fits ``pi_0`` to ``pi* ∝ prod_i pi_i^(lambda_i/S) exp(A_0/S)``, the maximiser of ``E[A_0] - sum_i
    lambda_i KL(pi || pi_i)``, from samples of the behaviour policy ``beta``. ``logp [B]`` carries the
    gradient; ``aux_logps [n_aux, B]``, ``behaviour_logp [B]`` and ``adv [B]`` are data.
    """
    lam = torch.as_tensor(kl_weights, dtype=logp.dtype)
    if aux_logps.shape != (len(lam), logp.shape[0]):
        raise ValueError(f"tscac_stage2_loss: aux_logps must be [{len(lam)}, {logp.shape[0]}], got {tuple(aux_logps.shape)}")
    total = lam.sum()
    log_w = (lam[:, None] * aux_logps).sum(0) / total - behaviour_logp + adv / total
    w = torch.softmax(log_w.detach(), 0) * logp.shape[0]
    return -w.clamp(max=max_weight) * logp


# -- evaluation on fresh sessions ---------------------------------------------------------------


def session_metrics(policy, targets=TARGETS, n_episodes: int = 200, seed: int = 10_000, spec=ENV) -> dict:
    """The policy (sampling, as it was trained) on ``n_episodes`` fresh sessions, through the shared collector:
    per-episode ``watch`` (array), pooled per-video ``rates`` of each signal, and the ``violation``
    ``sum_i max(0, 1 - rate_i / target_i)``."""
    with single_thread():
        env = make_env(spec, n_envs=n_episodes, seed=seed, reward_terms=TERMS)
        ro, _ = collect(env, policy, ZeroCritic(), env.reset(), 10_000, until_done=True)
        env.close()
    valid = ro.valid.float()
    watch = (ro.raw_rewards * valid).sum(1).numpy()
    rates = ((ro.reward_terms[..., 1:] * valid[..., None]).sum((0, 1)) / valid.sum()).numpy()
    violation = float(np.maximum(0.0, 1.0 - rates / np.asarray(targets)).sum())
    return {"watch": watch, "rates": rates, "violation": violation, "length": float(valid.sum(1).mean())}


# -- training ------------------------------------------------------------------------------------


def _aux_rewards(ro, targets) -> Tensor:
    """``[N, T, 1 + n_aux]``: watch, then each signal minus its target."""
    return ro.reward_terms - torch.tensor((0.0, *targets))


def train_lagrangian(cfg: ConstrainedConfig) -> tuple[PPO, list[dict]]:
    """The primal-dual baseline, with as many env steps as TSCAC's stages together (``3 * cfg.steps``).
    Before each update the actor's term weights become ``(1, lambda_1, ..., lambda_n)``; after it the
    multipliers take their dual step on the rollout's per-video rates."""
    ppo = PPO(cfg.ppo(3 * cfg.steps, reward_terms=TERMS, term_weights=(1.0,) * len(TERMS)))
    lambdas, history = [0.0] * len(SIGNALS), []

    def primal_dual(agent: PPO, ro) -> Tensor:
        nonlocal lambdas
        agent.term_weights = torch.tensor([1.0, *lambdas])
        valid = ro.valid.float()
        rates = (ro.reward_terms[..., 1:] * valid[..., None]).sum((0, 1)) / valid.sum()
        lambdas = constraint_multipliers(lambdas, rates.tolist(), cfg.targets, cfg.dual_lr)
        history.append({"steps": agent.steps_done, "lambdas": list(lambdas), "rates": rates.tolist()})
        return _aux_rewards(ro, cfg.targets)

    ppo.learn(reward_fn=primal_dual)
    return ppo, history


def train_aux_policy(cfg: ConstrainedConfig, i: int) -> PPO:
    """TSCAC stage one for signal ``i``: PPO whose actor follows that signal's critic head alone."""
    weights = tuple(1.0 if k == i + 1 else 0.0 for k in range(len(TERMS)))
    ppo = PPO(cfg.ppo(cfg.steps, reward_terms=TERMS, term_weights=weights, seed=cfg.seed * 100 + i + 1))
    ppo.learn(reward_fn=lambda agent, ro: _aux_rewards(ro, cfg.targets))
    return ppo


def train_tscac(cfg: ConstrainedConfig, progress: bool = False) -> tuple[PPO, list[PPO]]:
    """Both stages; returns the watch-time agent (its ``policy`` is pi_0) and the stage-1 agents."""
    aux = [train_aux_policy(cfg, i) for i in range(len(SIGNALS))]
    aux_policies = [a.policy for a in aux]
    agent = PPO(cfg.ppo(cfg.steps))
    with single_thread(), tqdm(total=cfg.steps, desc="tscac stage 2", disable=not progress) as bar:
        while agent.steps_done < cfg.steps:
            ro = agent.collect()
            stage2_update(agent, ro, aux_policies, cfg)
            bar.update(ro.n_steps)
    return agent, aux


def stage2_update(agent: PPO, ro, aux_policies, cfg: ConstrainedConfig) -> dict:
    """Epochs of minibatch descent on :func:`tscac_stage2_loss` (actor) plus the watch-time critic's value loss."""
    adv, ret = advantages(ro, ro.raw_rewards, cfg.gamma, cfg.lam)
    real = ro.valid.flatten()
    obs, act = ro.obs.flatten(0, 1)[real], ro.actions.flatten(0, 1)[real]
    beh, old_v = ro.logps.flatten()[real], ro.values.flatten()[real]
    adv, ret = adv.flatten()[real], ret.flatten()[real]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # A_0 in units of its spread, so lambda's scale is the task's own
    with torch.no_grad():
        aux_logps = torch.stack([p.log_prob(obs, act) for p in aux_policies])
    n = obs.shape[0]
    for _ in range(cfg.stage2_epochs):
        perm = torch.randperm(n, generator=agent.gen)
        for start in range(0, n, cfg.minibatch_size):
            idx = perm[start : start + cfg.minibatch_size]
            pl = tscac_stage2_loss(agent.policy.log_prob(obs[idx], act[idx]), aux_logps[:, idx], beh[idx], adv[idx],
                                   cfg.kl_weights, cfg.max_weight).mean()
            ones = torch.ones(len(idx), 1)
            vl = value_loss(agent.critic.values(obs[idx])[:, None], old_v[idx][:, None], ret[idx][:, None], ones).mean()
            agent.flat.zero_grad()
            (pl + 0.5 * vl).backward()
            agent.flat.clip_grad_norm(0.5)
            agent.opt.step()
    return {"policy_loss": pl.item(), "value_loss": vl.item()}


# -- the comparison and the lab table -----------------------------------------------------------


def compare(seeds=(0, 1, 2), steps: int = 30_000, n_episodes: int = 400, progress: bool = True) -> list[dict]:
    """TSCAC vs the Lagrangian per seed: watch time, rates and violation on the same fresh sessions."""
    rows = []
    for seed in tqdm(seeds, desc="tscac vs lagrangian (seeds)", disable=not progress):
        cfg = ConstrainedConfig(steps=steps, seed=seed)
        tscac, _ = train_tscac(cfg, progress)
        lagr, _ = train_lagrangian(cfg)
        for name, agent in (("tscac", tscac), ("lagrangian", lagr)):
            m = session_metrics(agent.policy, cfg.targets, n_episodes, seed=50_000 + seed)
            rows.append({"method": name, "seed": seed, "watch": float(m["watch"].mean()), "rates": m["rates"].tolist(),
                         "violation": m["violation"], "length": m["length"]})
    return rows


def table_runner(task_name: str, score):
    """A control-lab runner ``run(task, seed, scale)`` that checks the task name, then returns ``score(seed, scale)``."""
    def run(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
        if task != task_name:
            raise ValueError(f"this recommendation method runs on task {task_name!r}, not {task!r}")
        return score(seed, scale)
    return run


def _watch(train, seed: int, scale: float) -> np.ndarray:
    cfg = ConstrainedConfig(steps=max(1024, int(30_000 * scale)), seed=seed)
    return session_metrics(train(cfg)[0].policy, cfg.targets, 100, seed=90_000 + seed)["watch"]


# control-lab runners on "short_video": per-episode watch time of 100 fresh sessions
table_run = table_runner("short_video", lambda seed, scale: _watch(train_tscac, seed, scale))
lagrangian_table_run = table_runner("short_video", lambda seed, scale: _watch(train_lagrangian, seed, scale))


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="TSCAC vs the Lagrangian on the ShortVideo simulator")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--episodes", type=int, default=400)
    ap.add_argument("--plot", default="", help="write a watch time vs violation scatter to this PNG")
    args = ap.parse_args(argv)
    rows = compare(tuple(args.seeds), args.steps, args.episodes)
    for r in rows:
        print(f"{r['method']:<11} seed {r['seed']}: watch {r['watch']:.3f}  like rate {r['rates'][0]:.3f}  "
              f"share rate {r['rates'][1]:.3f}  violation {r['violation']:.4f}  length {r['length']:.2f}")
    from rlxf.algorithms.evaluate import mean_se, paired_gain

    by = {m: [r for r in rows if r["method"] == m] for m in ("tscac", "lagrangian")}
    for key in ("watch", "violation"):
        t, lg = [r[key] for r in by["tscac"]], [r[key] for r in by["lagrangian"]]
        d, se = paired_gain(t, lg)
        print(f"{key}: tscac {mean_se(t)[0]:.4f}, lagrangian {mean_se(lg)[0]:.4f}, tscac - lagrangian {d:+.4f} +- {se:.4f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for m, mark in (("tscac", "o"), ("lagrangian", "s")):
            ax.scatter([r["violation"] for r in by[m]], [r["watch"] for r in by[m]], marker=mark, label=m)
        ax.set_xlabel("constraint violation (sum of relative rate shortfalls)")
        ax.set_ylabel("watch time per session")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
