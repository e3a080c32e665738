"""Eliciting compatible demonstrations (Gandhi, Karamcheti, Liao, Sadigh, CoRL 2022), for control.

A base policy, an ensemble of behaviour-cloning policies (``train_bc``, one seed per member) trained on
demonstrations of one style, scores each state ``(s_t, a_t)`` of a new demonstration:
- likelihood-error ``l_t``: the mean over members of ``||clip(mu_k(s_t)) - clip(a_t)||^2`` (``state_scores``);
- novelty ``v_t``: the std across members' predicted actions, averaged over action dimensions.
A state is incompatible when the ensemble is sure (``v_t < tau_nov``) and disagrees (``l_t > tau_lik``);
novel states count as compatible, since they add coverage rather than conflict (``incompatible_states``).
A demonstration is accepted by the "sample" rule when it has at most ``sample_threshold`` incompatible
states (``accept``); the code this follows also has an "aggregate" rule that, as written, accepts a
demonstration when its mean error is high and its novelty low, the reverse of the per-state rule, so it is
not built. The scalar shown to a demonstrator is ``compatibility = mean_t max(0, 1 - l_t / tau_lik)``.

``calibrate`` sets the thresholds from held-out demonstrations of the base style (quantiles of their own
scores); ``filter_demonstrations`` keeps the accepted ones; ``elicit`` asks simulated demonstrators for
demonstrations, answering a rejected one with its worst windows (``worst_windows``) and asking again.
``python -m rlxf.algorithms.control.compatible`` runs the toy study on ``rlxf/Reach2D-v0``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlxf.algorithms.control.offline import OfflineConfig, train_bc
from rlxf.algorithms.control.rollout import evaluate
from rlxf.algorithms.evaluate import auroc, mean_se, paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.data.transitions import Episode, TransitionDataset
from rlxf.tasks.gym_envs import make_env
from rlxf.tasks.reach2d import scripted_action

ENV_ID = "rlxf/Reach2D-v0"


def demonstrate(style: str, n: int, seed: int = 0, noise: float = 0.1, max_tries: int = 1000,
                env_id: str = ENV_ID) -> list[Episode]:
    """``n`` successful demonstrations of a scripted demonstrator of ``style`` (failed tries are dropped);
    on the goal-conditioned ``rlxf/GoalReach2D-v0`` the demonstrator heads for the goal in the observation."""
    env = make_env(env_id, n_envs=1, seed=seed)
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    obs = env.reset()
    for _ in range(max_tries):
        states, actions, rewards, done = [obs[0]], [], [], False
        while not done:
            s = states[-1]
            a = scripted_action(s[:2], style, noise, rng, **({"goal": s[2:4]} if len(s) == 4 else {}))
            res = env.step(a[None])
            actions.append(np.clip(a, -1, 1))
            rewards.append(float(res.raw_rewards[0]))
            done = bool(res.done[0])
            states.append(res.final_obs[0] if done else res.obs[0])
            obs = res.obs
        if rewards[-1] > 0:
            episodes.append(Episode(torch.as_tensor(np.stack(states)), torch.as_tensor(np.stack(actions)),
                                    torch.tensor(rewards), True, False))
            if len(episodes) == n:
                break
    env.close()
    if len(episodes) < n:
        raise RuntimeError(f"demonstrator {style!r} succeeded {len(episodes)} times in {max_tries} tries, not {n}")
    return episodes


def train_policy(episodes: list[Episode], seed: int = 0, steps: int = 400, run_dir: str | Path | None = None):
    """Behaviour cloning (a Gaussian MLP policy, ``train_bc``) on ``episodes``; its mean is the action."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(run_dir or tmp) / f"bc-{seed}", f"seed = {seed}\nsteps = {steps}\n", fresh=True)
        cfg = OfflineConfig(OptimConfig(steps=steps, batch_size=128, lr=3e-3, checkpoint_every=0), seed=seed)
        return train_bc(TransitionDataset(episodes, ENV_ID), run, cfg)


def train_ensemble(episodes: list[Episode], n_members: int = 5, steps: int = 400, seed: int = 0) -> list:
    """The base policy: ``n_members`` BC policies on the same demonstrations, differing in seed."""
    return [train_policy(episodes, seed * 100 + k, steps) for k in range(n_members)]


@torch.no_grad()
def state_scores(ensemble: list, episode: Episode) -> tuple[np.ndarray, np.ndarray]:
    """``(likelihood-error [L], novelty [L])`` of every state of ``episode`` under the ensemble."""
    obs = episode.obs[: len(episode)]
    preds = torch.stack([m.greedy(obs) for m in ensemble]).clamp(-1, 1)  # [K, L, a]
    lik = ((preds - episode.actions.clamp(-1, 1)) ** 2).sum(-1).mean(0)
    nov = preds.std(0).mean(-1)
    return lik.numpy(), nov.numpy()


@dataclass(frozen=True)
class Thresholds:
    tau_lik: float
    tau_nov: float
    sample_threshold: int = 2  # "sample" rule: most incompatible states a kept demonstration may have


def incompatible_states(lik: np.ndarray, nov: np.ndarray, th: Thresholds) -> np.ndarray:
    """Confident (``nov < tau_nov``) and wrong (``lik > tau_lik``): ``bool [L]``."""
    return (nov < th.tau_nov) & (lik > th.tau_lik)


def compatibility(lik: np.ndarray, th: Thresholds) -> float:
    """The scalar shown to a demonstrator: ``mean_t max(0, 1 - l_t / tau_lik)``, 1 for a perfect match."""
    return float(np.maximum(0.0, 1.0 - np.asarray(lik) / th.tau_lik).mean())


def accept(lik: np.ndarray, nov: np.ndarray, th: Thresholds) -> bool:
    """The "sample" rule: keep a demonstration with at most ``sample_threshold`` incompatible states."""
    return int(incompatible_states(lik, nov, th).sum()) <= th.sample_threshold


def calibrate(ensemble: list, held_out: list[Episode], quantile: float = 0.95, sample_threshold: int = 2) -> Thresholds:
    """Thresholds from held-out base-style demonstrations: ``tau_lik`` and ``tau_nov`` at ``quantile`` of their
    states' likelihood-errors and novelties (so about 5% of a compatible demonstration's states are flagged
    wrong, and states more novel than 95% of familiar ones count as new coverage)."""
    scores = [state_scores(ensemble, e) for e in held_out]
    lik = np.concatenate([s[0] for s in scores])
    nov = np.concatenate([s[1] for s in scores])
    return Thresholds(float(np.quantile(lik, quantile)), float(np.quantile(nov, quantile)), sample_threshold)


def filter_demonstrations(ensemble: list, episodes: list[Episode], th: Thresholds) -> tuple[list[Episode], np.ndarray]:
    """``(kept episodes, compatibility of every episode)`` under the "sample" rule."""
    kept, compat = [], []
    for e in episodes:
        lik, nov = state_scores(ensemble, e)
        compat.append(compatibility(lik, th))
        if accept(lik, nov, th):
            kept.append(e)
    return kept, np.asarray(compat)


def worst_windows(lik: np.ndarray, window: int = 5, k: int = 3) -> list[tuple[int, int]]:
    """Corrective feedback: the ``k`` non-overlapping ``window``-step spans with the highest summed
    likelihood-error, as ``(start, end)`` step ranges, worst first."""
    lik = np.asarray(lik, dtype=float)
    window = min(window, len(lik))
    sums = np.convolve(lik, np.ones(window), mode="valid")
    spans: list[tuple[int, int]] = []
    for start in np.argsort(-sums, kind="stable"):
        if len(spans) == k:
            break
        if all(start + window <= s or start >= e for s, e in spans):
            spans.append((int(start), int(start + window)))
    return spans


def elicit(ensemble: list, th: Thresholds, styles: list[str], adapt: float = 0.5, max_asks: int = 3,
           seed: int = 0) -> tuple[list[Episode], int]:
    """Ask each simulated demonstrator (one per entry of ``styles``) for a demonstration until one is accepted
    or ``max_asks`` were asked. After a rejection the demonstrator is shown its worst windows and, with
    probability ``adapt``, switches to the base style's habit ("up"). Returns ``(accepted, asks)``."""
    rng = np.random.default_rng(seed)
    accepted, asks = [], 0
    for i, style in enumerate(styles):
        for attempt in range(max_asks):
            asks += 1
            demo = demonstrate(style, 1, seed=seed * 10_007 + i * 101 + attempt)[0]
            lik, nov = state_scores(ensemble, demo)
            if accept(lik, nov, th):
                accepted.append(demo)
                break
            worst_windows(lik)  # what the demonstrator would be shown
            if rng.random() < adapt:
                style = "up"
    return accepted, asks


def success_rate(policy, n_episodes: int = 200, seed: int = 50_000) -> np.ndarray:
    """Per-episode success (0/1) of the greedy policy on ``rlxf/Reach2D-v0``, start states from ``seed``."""
    return (evaluate(policy, ENV_ID, n_episodes=n_episodes, seed=seed) > 0).astype(float)


def study(seed: int, n_base: int = 10, n_new: int = 30, bc_steps: int = 400, n_episodes: int = 200) -> dict:
    """One run of the toy study: base ensemble on style "up", ``n_new`` new demonstrations half of each
    style, compatibility AUROC (style "up" positive), and BC on kept vs all demonstrations."""
    base = demonstrate("up", n_base, seed=seed)
    ensemble = train_ensemble(base, seed=seed, steps=bc_steps)
    th = calibrate(ensemble, demonstrate("up", 10, seed=seed + 1_000))
    styles = ["up", "right"] * (n_new // 2)
    new = [demonstrate(s, 1, seed=seed * 10_007 + 2_000 + i)[0] for i, s in enumerate(styles)]
    kept, compat = filter_demonstrations(ensemble, new, th)
    is_up = np.array([s == "up" for s in styles])
    kept_ids = {id(e) for e in kept}
    bc_kept = train_policy(base + kept, seed=seed + 7, steps=bc_steps)
    bc_all = train_policy(base + new, seed=seed + 7, steps=bc_steps)
    eval_seed = 50_000 + seed
    return {"auroc": auroc(compat[is_up], compat[~is_up]), "thresholds": th,
            "kept_up": int(sum(id(e) in kept_ids for e, u in zip(new, is_up) if u)),
            "kept_right": int(sum(id(e) in kept_ids for e, u in zip(new, is_up) if not u)),
            "success_kept": success_rate(bc_kept, n_episodes, eval_seed),
            "success_all": success_rate(bc_all, n_episodes, eval_seed),
            "compat_up": compat[is_up], "compat_right": compat[~is_up]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compatible demonstrations on rlxf/Reach2D-v0")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=200, help="evaluation episodes per seed")
    ap.add_argument("--plot", default=None, help="save the compatibility scores of both styles (PNG)")
    args = ap.parse_args(argv)
    results = [study(s, n_episodes=args.episodes) for s in args.seeds]
    for s, r in zip(args.seeds, results):
        print(f"seed {s}: AUROC {r['auroc']:.3f}  kept {r['kept_up']} up / {r['kept_right']} right  "
              f"success kept {r['success_kept'].mean():.3f}  all {r['success_all'].mean():.3f}")
    kept = np.concatenate([r["success_kept"] for r in results])
    every = np.concatenate([r["success_all"] for r in results])
    (mk, sk), (ma, sa) = mean_se(kept), mean_se(every)
    gain, se = paired_gain(kept, every)
    print(f"BC on kept {mk:.3f} +- {sk:.3f}, on all {ma:.3f} +- {sa:.3f}, paired gain {gain:.3f} +- {se:.3f} "
          f"({len(kept)} paired episodes)")
    if args.plot:
        from rlxf.lab.report import plt, save_figure  # plotting only for the command-line report

        fig, ax = plt.subplots(figsize=(5, 3))
        bins = np.linspace(0, 1, 21)
        ax.hist(np.concatenate([r["compat_up"] for r in results]), bins, alpha=0.6, label="style up (base)")
        ax.hist(np.concatenate([r["compat_right"] for r in results]), bins, alpha=0.6, label="style right")
        ax.set_xlabel("compatibility")
        ax.set_ylabel("demonstrations")
        ax.legend()
        save_figure(fig, Path(args.plot))
        print(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
