"""Policy-Guided Diffusion (Jackson, Matthews, Lu, Ellis, Whiteson, Foerster, 2024): synthetic experience for
offline RL from a trajectory diffusion model whose samples are steered toward the agent's own policy.

A denoiser (:mod:`rlxf.algorithms.control.diffusion`, EDM log-normal training noise) models windows of
``horizon`` steps ``(s_t, a_t, r_t)`` plus the last next state, standardised per feature, from the offline
data. Sampling adds, after each DDIM step ``k`` of ``K``, ``lambda_k * unit(grad_a log pi(a_t | s_t))`` to the
action coordinates (``pgd_guidance_scale``, ``unit_norm``): the behaviour distribution tilted toward the
target policy while the states and rewards stay the model's. Windows become :class:`Episode` s (truncated, not
terminated), and the agent (IQL) trains on real plus synthetic transitions.

Toy scale: a "medium-replay-style" Pendulum-v1 dataset, recorded with ``record_dataset`` from a
partly trained SAC policy with a mix of exploration rates. One round: IQL on the real data gives the target
policy; guided samples from it are added and IQL is trained again (same budget) on the union; both are scored
on the same held-out episodes. ``python -m rlxf.algorithms.control.pgd`` prints the figures.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rlxf.algorithms.control.diffusion import Denoiser, DiffusionConfig, sample, train_denoiser
from rlxf.algorithms.control.iql import IQLConfig, train_iql
from rlxf.algorithms.control.offline import record_dataset
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.control.sac import SAC, SACConfig
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.data.transitions import Episode, TransitionDataset
from rlxf.objectives.diffusion import pgd_guidance_scale, unit_norm

ENV_ID = "Pendulum-v1"


@dataclass
class PGDConfig:
    horizon: int = 8
    n_synthetic: int = 500  # windows sampled (x horizon transitions)
    guidance: float = 1.0  # the coefficient c of lambda_k (0: unguided)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        OptimConfig(steps=3000, batch_size=256, lr=1e-3, checkpoint_every=0, max_grad_norm=1.0),
        sigma_data=1.0, sigma_min=0.002, sigma_max=20.0, rho=7.0, steps=16, train_sigmas="lognormal",
        sigma_loc=-1.2, sigma_scale=1.2, hidden=256))
    seed: int = 0


@dataclass
class WindowCodec:
    """Flattens ``horizon``-step windows to vectors and back; standardises every feature."""

    obs_dim: int
    act_dim: int
    horizon: int
    mean: Tensor
    std: Tensor

    @property
    def step_dim(self) -> int:
        return self.obs_dim + self.act_dim + 1

    def encode(self, raw: Tensor) -> Tensor:
        return (raw - self.mean) / self.std

    def decode(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def split(self, raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(obs [B, H+1, d], actions [B, H, a], rewards [B, H])`` of raw (unstandardised) window vectors."""
        h, d, a = self.horizon, self.obs_dim, self.act_dim
        steps = raw[:, : h * self.step_dim].view(-1, h, self.step_dim)
        obs = torch.cat([steps[..., :d], raw[:, h * self.step_dim:].view(-1, 1, d)], dim=1)
        return obs, steps[..., d: d + a], steps[..., d + a]

    def action_mask(self) -> Tensor:
        m = torch.zeros(self.horizon * self.step_dim + self.obs_dim, dtype=torch.bool)
        for t in range(self.horizon):
            m[t * self.step_dim + self.obs_dim: t * self.step_dim + self.obs_dim + self.act_dim] = True
        return m


def windows(dataset: TransitionDataset, horizon: int) -> Tensor:
    """Every ``horizon``-step window of every episode as a raw vector ``[(s, a, r) x H, s_H]``."""
    out = []
    for e in dataset.episodes:
        steps = torch.cat([e.obs[:-1].float(), e.actions.float().view(len(e), -1), e.rewards.float()[:, None]], dim=1)
        for t in range(len(e) - horizon + 1):
            out.append(torch.cat([steps[t: t + horizon].flatten(), e.obs[t + horizon].float()]))
    if not out:
        raise ValueError(f"windows: no episode has {horizon} steps; use a shorter horizon")
    return torch.stack(out)


def train_world_model(dataset: TransitionDataset, cfg: PGDConfig, quiet: bool = True) -> tuple[Denoiser, WindowCodec]:
    raw = windows(dataset, cfg.horizon)
    codec = WindowCodec(dataset.obs_shape[0], dataset.episodes[0].actions.view(len(dataset.episodes[0]), -1).shape[1],
                        cfg.horizon, raw.mean(0), raw.std(0).clamp_min(1e-3))
    model = train_denoiser(codec.encode(raw), torch.zeros(len(raw), 0), replace(cfg.diffusion, seed=cfg.seed),
                           quiet=quiet)
    return model, codec


def policy_guide(policy, codec: WindowCodec, coef: float):
    """The guidance shift after step ``k`` of ``K``: ``lambda_k`` times the unit-norm gradient, in standardised
    action coordinates, of ``sum_t log pi(a_t | s_t)`` at the current (unstandardised) sample."""
    mask = codec.action_mask()

    def guide(x: Tensor, k: int, n_steps: int) -> Tensor:
        lam = pgd_guidance_scale(k, n_steps, coef)
        if lam == 0.0:
            return torch.zeros_like(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            obs, acts, _ = codec.split(codec.decode(xg))
            logp = policy.log_prob(obs[:, :-1].reshape(-1, codec.obs_dim), acts.reshape(-1, codec.act_dim))
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        return lam * unit_norm(grad * mask) * mask

    return guide


def synthesize(model: Denoiser, codec: WindowCodec, policy, cfg: PGDConfig) -> list[Episode]:
    """``cfg.n_synthetic`` sampled windows (guided by ``policy`` with coefficient ``cfg.guidance``) as episodes."""
    gen = torch.Generator().manual_seed(cfg.seed + 77)
    guide = policy_guide(policy, codec, cfg.guidance) if cfg.guidance > 0 else None
    x = sample(model, torch.zeros(cfg.n_synthetic, 0), cfg.diffusion, gen, guide=guide)
    obs, acts, rew = codec.split(codec.decode(x.detach()))
    return [Episode(o, a, r, False, True) for o, a, r in zip(obs, acts, rew)]


def expert_dataset(seed: int, sac_steps: int = 5000, n_episodes: int = 20) -> TransitionDataset:
    """The named task: a partly trained SAC policy (``sac_steps`` env steps) recorded on Pendulum-v1 for
    ``n_episodes`` episodes with exploration rates 0, 0.25, 0.5 and 1 (a quarter each): medium-replay-style."""
    sac = SAC(SACConfig(total_steps=sac_steps, warmup_steps=min(1000, sac_steps // 2), seed=seed))
    sac.learn()
    return record_dataset(sac.actor, ENV_ID, n_episodes, eps=(0.0, 0.25, 0.5, 1.0), seed=seed + 31)


def iql_config(steps: int, seed: int) -> IQLConfig:
    return IQLConfig(optim=OptimConfig(steps=steps, batch_size=256, lr=3e-4, checkpoint_every=0, max_grad_norm=0.0),
                     seed=seed)


def _iql(dataset: TransitionDataset, steps: int, seed: int, tmp: str, stage: str):
    run = Run(f"{tmp}/{stage}", f"seed = {seed}\n", fresh=True)
    return train_iql(dataset, run, iql_config(steps, seed), stage=stage)


def study(seed: int, iql_steps: int = 3000, n_episodes: int = 30, cfg: PGDConfig | None = None,
          sac_steps: int = 5000, quiet: bool = True) -> dict:
    """IQL on the real data vs IQL on real + policy-guided synthetic data (seed ``seed``), scored on the same
    ``n_episodes`` held-out episodes; with ``cfg.guidance = 0`` the synthetic data is unguided."""
    import tempfile

    cfg = replace(cfg or PGDConfig(), seed=seed)
    data = expert_dataset(seed, sac_steps)
    with tempfile.TemporaryDirectory() as tmp:
        real = _iql(data, iql_steps, seed, tmp, "iql")
        model, codec = train_world_model(data, cfg, quiet=quiet)
        synth = synthesize(model, codec, real, cfg)
        mixed = _iql(TransitionDataset(data.episodes + synth, ENV_ID), iql_steps, seed, tmp, "iql_pgd")
    eval_seed = 70_000 + seed
    with torch.no_grad():
        logp = {name: float(real.log_prob(e_obs, e_act).mean()) for name, (e_obs, e_act) in
                (("real", (data.transitions().obs, data.transitions().actions)),
                 ("synthetic", (torch.cat([e.obs[:-1] for e in synth]), torch.cat([e.actions for e in synth]))))}
    return {"iql": evaluate(real, ENV_ID, n_episodes, eval_seed),
            "iql_pgd": evaluate(mixed, ENV_ID, n_episodes, eval_seed),
            "data_return": float(np.mean([e.ret for e in data.episodes])), "target_logp": logp}


def table_run(task: str, seed: int, scale: float = 1.0, method: str = "iql_pgd") -> np.ndarray:
    """The control lab's runner on ``pendulum_medium_replay``: per-episode held-out returns."""
    if task != "pendulum_medium_replay":
        raise ValueError(f"{method}: unknown task {task!r}; expected 'pendulum_medium_replay'")
    import tempfile

    sac_steps, iql_steps = max(200, int(5000 * scale)), max(20, int(3000 * scale))
    n_episodes = max(3, int(30 * min(scale, 1.0)))
    data = expert_dataset(seed, sac_steps, n_episodes=max(4, int(20 * min(scale, 1.0))))
    with tempfile.TemporaryDirectory() as tmp:
        pol = _iql(data, iql_steps, seed, tmp, "iql")
        if method == "iql_pgd":
            cfg = PGDConfig(seed=seed, n_synthetic=max(8, int(500 * scale)))
            cfg.diffusion = replace(cfg.diffusion, optim=replace(cfg.diffusion.optim, steps=max(20, int(3000 * scale))))
            model, codec = train_world_model(data, cfg)
            pol = _iql(TransitionDataset(data.episodes + synthesize(model, codec, pol, cfg), ENV_ID), iql_steps, seed,
                       tmp, "iql_pgd")
    return evaluate(pol, ENV_ID, n_episodes, 70_000 + seed)


def table_run_iql(task: str, seed: int, scale: float = 1.0) -> np.ndarray:
    return table_run(task, seed, scale, method="iql")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Policy-guided diffusion + IQL vs IQL on a medium-replay-style "
                                             "Pendulum-v1 dataset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=30, help="held-out episodes per seed")
    ap.add_argument("--guidance", type=float, default=1.0, help="guidance coefficient c (0: unguided samples)")
    ap.add_argument("--plot", default=None, help="save the per-seed returns of both agents (PNG; Pendulum-v1 does "
                                                 "not render here: it needs pygame)")
    args = ap.parse_args(argv)
    results = [study(s, n_episodes=args.episodes, cfg=PGDConfig(guidance=args.guidance), quiet=False)
               for s in args.seeds]
    for s, r in zip(args.seeds, results):
        logp = r["target_logp"]
        print(f"seed {s}: data return {r['data_return']:.1f}  IQL {r['iql'].mean():.1f}  "
              f"IQL+PGD {r['iql_pgd'].mean():.1f}  mean log pi_target(a|s): real {logp['real']:.2f}, "
              f"synthetic {logp['synthetic']:.2f}")
    real = np.concatenate([r["iql"] for r in results])
    pgd = np.concatenate([r["iql_pgd"] for r in results])
    (mr, sr), (mp, sp) = mean_se(real), mean_se(pgd)
    gain, se = paired_gain(pgd, real)
    print(f"IQL {mr:.1f} +- {sr:.1f}, IQL+PGD {mp:.1f} +- {sp:.1f}, paired gain {gain:.1f} +- {se:.1f} "
          f"({len(real)} paired episodes, guidance {args.guidance})")
    if args.plot:
        from rlxf.lab.report import plt, save_figure  # plotting only for the command-line report

        fig, ax = plt.subplots(figsize=(5, 3))
        for k, (name, label) in enumerate((("iql", "IQL (real)"), ("iql_pgd", "IQL (real + PGD)"))):
            stats = [mean_se(r[name]) for r in results]
            ax.errorbar(np.arange(len(results)) + 0.1 * k, [m for m, _ in stats], [2 * e for _, e in stats],
                        fmt="o", capsize=3, label=label)
        ax.set_xticks(range(len(results)), [f"seed {s}" for s in args.seeds])
        ax.set_ylabel("held-out return (+- 2 SE)")
        ax.legend()
        save_figure(fig, Path(args.plot))
        print(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
